"""A residual policy over a frozen level (relay_agents.gcbc.residual), finetuned for real: the tiny
relay-IL model, the MuJoCo kitchen, a Reverb server on localhost, an actor process, `relay eval`."""
import json
import os
import pickle

import jax
import numpy as np
import pytest

from relay_agents import models
from relay_agents.finetune import policy_io
from relay_agents.finetune import run as run_lib
from relay_agents.finetune.config import FinetuneConfig
from relay_agents.gcbc import residual
from relay_data import relabeled

GOAL = ["microwave", "kettle", "light switch", "slide cabinet"]


@pytest.fixture(scope="module")
def ril_model(tiny_ril_model):
  return tiny_ril_model


def _inputs(level, count=64):
  examples = next(relabeled.load(level.source).batch(count).as_numpy_iterator())
  return examples["observation"], examples["goal"]


def test_a_new_residual_acts_as_its_base_mode_and_explores_with_its_own_std(ril_model):
  base = policy_io.load_model(ril_model).levels["low"]
  low = policy_io.load_model(ril_model, residual=residual.ResidualConfig((16,), std=0.5)).levels["low"]
  assert isinstance(low.fn, residual.ResidualPolicyFn) and set(low.params) == {"base", "residual"}
  assert policy_io.load_model(ril_model).levels["high"].residual is None
  observations, goals = _inputs(low)
  key = np.array([0, 1], np.uint32)
  modes = np.stack([base.fn(base.params, o, g, key, True) for o, g in zip(observations[:8], goals[:8])])
  acted = np.stack([low.fn(low.params, o, g, key, True) for o, g in zip(observations[:8], goals[:8])])
  np.testing.assert_allclose(acted, modes, atol=1e-6)  # the residual starts at zero
  # The learner's batched base actions are the ones the policy acts with, row by row.
  a_dim = low.residual_networks.action_dim
  batched = residual.make_base_actions(low.fn.base, a_dim)(low.params["base"],
                                                            np.concatenate([observations, goals], -1)[:8])
  np.testing.assert_allclose(np.asarray(batched), modes[:, :a_dim], atol=1e-5)
  # Sampling: the base's mode plus the residual's Gaussian, std = 0.5 x the demos' action spread.
  draws = np.stack([low.fn(low.params, observations[0], goals[0], np.array([7, i], np.uint32), False)
                    for i in range(400)])
  spread = 0.5 * np.asarray(low.saved["normalization"].output_std)[:a_dim]
  np.testing.assert_allclose(draws.std(0), spread, rtol=0.2)
  np.testing.assert_allclose(draws.mean(0), modes[0], atol=4 * spread.max() / np.sqrt(400))


def test_residual_finetuning_moves_only_the_residual_and_evaluates_with_it(ril_model, kitchen_play_tiny, tmp_path,
                                                                           cli):
  out = str(tmp_path / "run")
  config = FinetuneConfig(variant="dapg", reward="euclidean", episodes_per_iteration=2, max_episode_steps=10,
                          residual=(16,), residual_std=0.3)
  # Actors in a separate process: the spec tells it to build the same residual the learner trains.
  run_lib.finetune(run_lib.RunConfig(ril_model, GOAL, out, env_steps=40, actor_processes=True, seed=0,
                                     progress=False), config)
  with open(os.path.join(out, "log.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 2
  for r in records:  # NPG on the residual: its Gaussian KL lands on the bound
    assert r["low/kl"] == pytest.approx(config.kl_delta, rel=0.05)
    assert r["low/surrogate_after"] > r["low/surrogate_before"]
    assert np.isfinite(r["low/demo_log_prob_after"])
  source, tuned = os.path.join(ril_model, "low"), os.path.join(out, "model", "low")
  for level in ("low", "high"):  # the base (and the high level) are frozen: saved as they were
    a = models.load_policy(os.path.join(ril_model, level))["params"]
    b = models.load_policy(os.path.join(out, "model", level))["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert not os.path.exists(os.path.join(source, residual.FILE))
  params, saved_config = residual.load(tuned)
  assert saved_config == residual.ResidualConfig((16,), 0.3)
  last = sorted(k for k in params if k.startswith("residual/"))[-1]
  assert np.abs(params[last]["w"]).max() > 0  # it learned something
  assert models.fingerprint(os.path.join(out, "model")) != models.fingerprint(ril_model)
  # Every loader composes the two: the finetuned model acts with base mode + residual.
  model = policy_io.load_model(os.path.join(out, "model"))
  low = model.levels["low"]
  assert low.residual == saved_config
  observations, goals = _inputs(low, 8)
  base = policy_io.load_model(ril_model).levels["low"]
  key = np.array([0, 1], np.uint32)
  acted = np.stack([low.fn(low.params, o, g, key, True) for o, g in zip(observations, goals)])
  modes = np.stack([base.fn(base.params, o, g, key, True) for o, g in zip(observations, goals)])
  assert np.abs(acted - modes).max() > 1e-4
  fn, composed = models.policy_fn(tuned)
  assert isinstance(fn, residual.ResidualPolicyFn)
  np.testing.assert_allclose(fn(composed, observations[0], goals[0], key, True), acted[0], atol=1e-5)
  evaluated = cli("eval", "--model", os.path.join(out, "model"), "--play", kitchen_play_tiny, "--goals", "1",
                  "--no-heldout", "--rollouts", "1", "--max-steps", "5")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  # A residual acts on every step's own prediction: no other chunk schedule, no ensembling.
  with pytest.raises(ValueError, match="executes 1 action per chunk"):
    low.fn.with_execute_steps(3)
  with pytest.raises(ValueError, match="cannot ensemble"):
    low.fn.with_execute_steps(1, ensemble=0.1)
  for flags in (["--execute-steps", "3"], ["--temporal-ensemble", "0.1"]):  # bad flags for a residual: exit 2
    refused = cli("eval", "--model", os.path.join(out, "model"), "--play", kitchen_play_tiny, "--goals", "1",
                  "--no-heldout", "--rollouts", "1", "--max-steps", "5", *flags)
    assert refused.returncode == 2 and "has a residual" in refused.stderr and flags[0] in refused.stderr, flags
  # A torn residual file is one line naming it.
  with open(os.path.join(tuned, residual.FILE), "r+b") as f:
    f.truncate(20)
  broken = cli("eval", "--model", os.path.join(out, "model"), "--play", kitchen_play_tiny, "--goals", "1",
               "--no-heldout", "--rollouts", "1", "--max-steps", "5", "--no-progress")
  assert broken.returncode == 1 and "residual.pkl" in broken.stderr and "residual policy" in broken.stderr
  assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr


def test_cli_finetune_refuses_bad_residual_flags(ril_model, tmp_path, cli):
  for flags, message in ((["--residual", "0"], "--residual: residual hidden sizes must be comma-separated positive"),
                         (["--residual", "16,x"], "--residual: residual hidden sizes must be comma-separated positive"),
                         (["--residual", "16", "--residual-std", "0"], "residual_std must be positive"),
                         (["--residual", "16", "--variant", "filtered"], "a residual is trained by the policy-gradient"),
                         (["--residual", "16", "--execute-steps", "2"], "execute_steps must be 1, got 2")):
    bad = cli("finetune", "--model", ril_model, "--goal", "microwave", "--env-steps", "10", *flags,
              "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and message in bad.stderr, (flags, bad.stderr[-500:])
    assert not os.path.exists(tmp_path / "x")
  help_text = cli("finetune", "--help").stdout
  assert "--residual HIDDEN" in help_text and "--residual-std" in help_text


def test_residual_save_and_load_round_trip(tmp_path):
  config = residual.ResidualConfig((8, 4), std=0.2)
  params = {"residual/~/linear_0": {"w": np.ones((3, 8), np.float32), "b": np.zeros(8, np.float32)}}
  residual.save(str(tmp_path), params, config)
  loaded, loaded_config = residual.load(str(tmp_path))
  assert loaded_config == config
  np.testing.assert_array_equal(loaded["residual/~/linear_0"]["w"], params["residual/~/linear_0"]["w"])
  assert residual.load(str(tmp_path / "none")) is None
  with open(tmp_path / residual.FILE, "wb") as f:
    pickle.dump({"format": 1}, f)  # not a residual
  from relay_data.errors import DataError  # pylint: disable=import-outside-toplevel
  with pytest.raises(DataError, match="residual policy"):
    residual.load(str(tmp_path))
  for bad in ((), (0,), (4, -1)):
    with pytest.raises(ValueError, match="hidden sizes must be positive"):
      residual.ResidualConfig(bad)
  with pytest.raises(ValueError, match="std must be a positive number"):
    residual.ResidualConfig((4,), std=float("nan"))


def test_cli_diagnose_gradient_measures_a_step_on_a_residual(ril_model, tmp_path, cli):
  out = tmp_path / "gradient.json"
  proc = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave,kettle", "--episodes", "4",
             "--fit", "1,2", "--splits", "1", "--max-episode-steps", "15", "--reward", "euclidean",
             "--residual", "16", "--residual-std", "0.3", "--json", str(out))
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["config"]["residual"] == [16] and result["config"]["residual_std"] == 0.3
  assert all(g["in_sample"] > 0 and np.isfinite(g["held_out"]) for g in result["gains"])
  bad = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave", "--residual", "x")
  assert bad.returncode == 2 and "residual hidden sizes must be comma-separated positive integers" in bad.stderr
