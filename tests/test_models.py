"""Model artifacts and their checks: records, refusals, stale state, damaged checkpoints, flags."""
import json
import os

import numpy as np
import pytest

from pipelines import relabel as relabel_pipeline
from relay import cli as relay_cli
from relay_agents import models, train
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import converters, goal_space, kitchen, relabeled, rlds_io
from relay_data.errors import DataError


def _episodes(n=4, length=30, seed=0):
  rng = np.random.default_rng(seed)
  return [{"observation": rng.normal(size=(length, kitchen.OBS_DIM)).astype(np.float32),
           "action": rng.uniform(-1, 1, size=(length, kitchen.ACTION_DIM)).astype(np.float32),
           "episode_id": f"e{i}"} for i in range(n)]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """A 59-d kitchen-layout source; low-level data under two seeds (two fingerprints), and
  high-level data relabeled with another W_l."""
  root = tmp_path_factory.mktemp("models")
  src = rlds_io.write_episodes(_episodes(), "src", str(root), progress=False)
  out = {"source": src}
  for name, cfg in (("low_a", relabeled.RelabelConfig("low", window=5, goals_per_step=2, seed=0)),
                    ("low_b", relabeled.RelabelConfig("low", window=5, goals_per_step=2, seed=1)),
                    ("high_w6", relabeled.RelabelConfig("high", window=6, window_high=20, goals_per_step=2))):
    out[name] = str(root / name)
    relabel_pipeline.run_relabel(src, out[name], cfg, show_progress=False)
  return out


def _record(spec, env_settings, agent="gcbc", levels=("policy",)):
  return models.ModelRecord(agent=agent, levels={lv: {} for lv in levels}, window=5, window_high=None,
                            spec=spec.to_dict(), env_settings=env_settings, sources={}, policy_configs={},
                            train_config={}, code_version="test")


def test_low_and_high_relabeled_with_different_windows_are_refused(datasets, tmp_path):
  with pytest.raises(ValueError, match=r"relabeled with W_l = 5 .* with W_l = 6; relabel both with the same --window"):
    train.train_agent("ril", {"low": datasets["low_a"], "high": datasets["high_w6"]}, str(tmp_path / "m"),
                      train.TrainConfig(steps=5, progress=False))
  assert not os.path.exists(tmp_path / "m")  # refused before anything was written


def test_relabeled_lineage_carries_the_spec_and_settings(datasets):
  lineage = relabeled.read_lineage(datasets["low_a"])
  assert goal_space.DataSpec.from_dict(lineage["spec"]) == goal_space.kitchen_spec(59)
  assert lineage["env_settings"] == kitchen.GYMNASIUM_DEFAULTS.to_dict()


def test_evaluation_refuses_a_model_that_does_not_fit_the_goals(tmp_path, kitchen_play_tiny):
  kitchen59 = goal_space.kitchen_spec(59)
  defaults = kitchen.DEFAULT_SETTINGS.to_dict()  # what kitchen play (2.0.0) records
  models.check_goal_source(_record(kitchen59, defaults), "m", kitchen_play_tiny)  # fits: no error
  models.check_goal_source(_record(goal_space.kitchen_spec(30), defaults), "m", kitchen_play_tiny)  # 30-d D4RL too
  with pytest.raises(DataError, match="trained on env 'none' data .*only kitchen models can act in FrankaKitchen-v1"):
    models.check_goal_source(_record(goal_space.custom_spec(59, 59), None), "m", kitchen_play_tiny)
  other_noise = kitchen.GYMNASIUM_DEFAULTS.to_dict()
  with pytest.raises(DataError, match="trained under environment settings .*robot_noise_ratio': 0.01"):
    models.check_goal_source(_record(kitchen59, other_noise), "m", kitchen_play_tiny)
  np.savez(tmp_path / "o.npz", observations=np.random.default_rng(0).normal(size=(5, 59)), actions=np.zeros((5, 9)))
  other = converters.ingest("npz", str(tmp_path / "o.npz"), "other", str(tmp_path / "d"), progress=False, env="none")
  with pytest.raises(DataError, match="30-d kitchen-qpos goal space .* has env none, 59-d custom observation, 59-d custom goal"):
    models.check_goal_source(_record(kitchen59, defaults), "m", other)


def test_broken_model_dirs_are_one_line_errors_naming_the_file(tmp_path, kitchen_play_tiny, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "agent.json").write_text("{}")
  no_policy = tmp_path / "no_policy"
  (no_policy / "policy").mkdir(parents=True)
  models.write_record(str(no_policy), _record(goal_space.kitchen_spec(59), kitchen.GYMNASIUM_DEFAULTS.to_dict()))
  for model, names in ((empty, "agent.json: has no 'agent' and 'levels'"),
                       (no_policy, "policy.pkl: missing (trained policy)"),
                       (tmp_path / "nothing", "agent.json: missing")):
    code = relay_cli.main(["eval", "--model", str(model), "--play", kitchen_play_tiny])
    err = capsys.readouterr().err.strip()
    assert code == 1 and names in err and len(err.splitlines()) == 1, err


def test_hidden_flag_error_names_the_flag(capsys):
  assert relay_cli.main(["train-il", "--agent", "gcbc", "--data", "x", "--out", "y", "--hidden", "a,b"]) == 2
  assert "--hidden must be comma-separated positive integers (e.g. 256,256), got 'a,b'" in capsys.readouterr().err


def _files(directory):
  out = {}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[name] = f.read()
  return out


def test_stale_model_dir_is_refused_or_retrained_never_reused(datasets, tmp_path, capsys):
  config = GoalBCConfig(action_chunk=1, hidden_sizes=(16,), batch_size=16, head="mse")
  out = str(tmp_path / "low")
  run = lambda data, steps, overwrite=False: train.train_policy(
      datasets[data], config, train.TrainConfig(steps=steps, checkpoint_every=10, progress=False), out,
      overwrite=overwrite)
  first = run("low_a", 30)
  assert first["first_loss"] is not None and sorted(os.listdir(out)) == ["checkpoint.pkl", "checkpoint.prev.pkl",
                                                                          "policy.pkl"]
  assert run("low_a", 30)["first_loss"] is None  # same data, config and steps: already trained
  before = _files(out)
  with pytest.raises(DataError, match="holds weights trained from other data or another config .*--overwrite"):
    run("low_b", 30)  # other data: refused, nothing touched
  assert _files(out) == before
  with pytest.raises(DataError, match="another config"):
    train.train_policy(datasets["low_a"], GoalBCConfig(action_chunk=1, hidden_sizes=(8,), batch_size=16, head="mse"),
                       train.TrainConfig(steps=30, progress=False), out)
  retrained = run("low_b", 30, overwrite=True)
  assert retrained["resumed_from"] == 0 and retrained["first_loss"] is not None
  assert models.load_policy(out)["train_key"] == retrained["train_key"] != first["train_key"]

  # A damaged latest checkpoint falls back to the previous one (said on stderr) ...
  capsys.readouterr()
  with open(os.path.join(out, "checkpoint.pkl"), "r+b") as f:
    f.truncate(100)
  resumed = run("low_b", 40)
  assert resumed["resumed_from"] == 20 and "resuming from" in capsys.readouterr().err
  # ... and with no readable checkpoint left it is a one-line error naming the file.
  for name in ("checkpoint.pkl", "checkpoint.prev.pkl"):
    with open(os.path.join(out, name), "r+b") as f:
      f.truncate(50)
  with pytest.raises(DataError, match=r"checkpoint.pkl: cannot be read \(training checkpoint; truncated"):
    run("low_b", 50)


def test_model_record_and_actor(datasets, tmp_path, kitchen_play_tiny, cli):
  from relay_agents.gcbc import acting
  model = str(tmp_path / "gcbc")
  # The low-level data is a valid 'flat' example set too, but the level check wants its lineage.
  with pytest.raises(ValueError, match="needs a 'flat' relabeled dataset"):
    train.train_agent("gcbc", {"policy": datasets["low_a"]}, model, train.TrainConfig(steps=5, progress=False))
  flat = str(tmp_path / "flat")
  relabel_pipeline.run_relabel(datasets["source"], flat, relabeled.RelabelConfig("flat", window=7, goals_per_step=1),
                               show_progress=False)
  train.train_agent("gcbc", {"policy": flat}, model, train.TrainConfig(steps=20, progress=False),
                    GoalBCConfig(action_chunk=1, hidden_sizes=(8,), batch_size=16))
  with open(os.path.join(model, "agent.json")) as f:
    raw = json.load(f)
  assert raw["format"] == models.FORMAT and raw["window"] == 7 and raw["env_settings"] == kitchen.GYMNASIUM_DEFAULTS.to_dict()
  assert raw["sources"]["policy"]["fingerprint"] == relabeled.fingerprint(flat)
  assert raw["sources"]["policy"]["source"]["fingerprint"] == relabeled.fingerprint(datasets["source"])
  assert raw["code_version"].startswith("relay ")
  actor = models.make_actor(model, seed=3)
  assert isinstance(actor, acting.FlatActor) and actor.observation_fn is None  # trained on the env's own 59-d
  actor.set_goal(np.zeros(30, np.float32))
  action = actor.select_action(np.zeros(59, np.float32))
  assert action.shape == (9,) and np.all(np.abs(action) <= 1)
  # One level of a flat model cannot be sampled apart: it has one level, not a high and a low.
  with pytest.raises(ValueError, match="no level high to sample"):
    models.make_actor(model, deterministic=False, sampled_levels=("high",))
  proc = cli("eval", "--model", model, "--play", kitchen_play_tiny, "--sample", "--sample-level", "high")
  assert proc.returncode == 2 and "is a flat gcbc model" in proc.stderr
  fp = models.fingerprint(model)
  os.remove(os.path.join(model, "policy", "policy.pkl"))
  with pytest.raises(DataError, match="policy.pkl: missing"):
    models.make_actor(model)
  assert len(fp) == 16


def test_rollout_log_key_names_model_goals_and_play_data(kitchen_play_tiny):
  from relay_agents import evaluation
  goals = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1)
  key = evaluation.log_key("model", goals, "play", 400, 0, False)
  moved = [evaluation.EvalGoal(g.elements, g.goal_state + 0.01, g.heldout) for g in goals]  # same names
  others = [evaluation.log_key("model2", goals, "play", 400, 0, False),
            evaluation.log_key("model", moved, "play", 400, 0, False),
            evaluation.log_key("model", goals, "play2", 400, 0, False),
            evaluation.log_key("model", goals, "play", 280, 0, False),
            evaluation.log_key("model", goals, "play", 400, 1, False),
            evaluation.log_key("model", goals, "play", 400, 0, True)]
  assert key == evaluation.log_key("model", goals, "play", 400, 0, False) and key not in others
  assert len(set(others)) == len(others)


def test_legacy_model_record_is_read_with_an_inferred_spec(tmp_path):
  """Models trained before records (agent.json = {agent, replan_every, levels}) still evaluate."""
  import pickle
  from relay_agents.gcbc import networks as gcbc_networks
  import jax
  for level, cfg, out_dim in (("high", GoalBCConfig(action_chunk=1, hidden_sizes=(4,), target="subgoal"), 30),
                              ("low", GoalBCConfig(action_chunk=1, hidden_sizes=(4,)), 9)):
    nets = gcbc_networks.make_networks(89, out_dim, cfg, gcbc_networks.Normalization.from_arrays(
        np.zeros((2, 89)), np.zeros((2, out_dim))))
    (tmp_path / level).mkdir()
    with open(tmp_path / level / "policy.pkl", "wb") as f:
      pickle.dump({"params": nets.policy.init(jax.random.PRNGKey(0)), "normalization": nets.normalization,
                   "config": cfg, "dims": {"observation": 59, "goal": 30, "action": 9, "subgoal": 30},
                   "input_dim": 89, "source": "x"}, f)
  (tmp_path / "agent.json").write_text(json.dumps({"agent": "ril", "replan_every": 30, "levels": {"low": {}, "high": {}}}))
  record = models.read_record(str(tmp_path))
  assert record.format == 1 and record.window == 30 and record.data_spec == goal_space.kitchen_spec(59)
  actor = models.make_actor(str(tmp_path))
  actor.set_goal(np.zeros(30, np.float32))
  assert actor.window == 30 and actor.select_action(np.zeros(59, np.float32)).shape == (9,)


def test_evaluation_builds_the_kitchen_with_the_models_settings(tmp_path, kitchen_play_tiny):
  from relay_agents import evaluation
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  quiet = kitchen.EnvSettings(robot_noise_ratio=0.0, object_noise_ratio=0.0)
  record = _record(goal_space.kitchen_spec(59), quiet.to_dict())
  env = evaluation._goal_env(goal, 5, False, (160, 120), models.env_settings(record)).unwrapped  # pylint: disable=protected-access
  assert env.robot_env.robot_noise_ratio == 0.0 and env.object_noise_ratio == 0.0
  default = evaluation._goal_env(goal, 5, False, (160, 120), None).unwrapped  # pylint: disable=protected-access
  assert default.robot_env.robot_noise_ratio == kitchen.DEFAULT_SETTINGS.robot_noise_ratio == 0.1
  assert default.object_noise_ratio == 0.0005
