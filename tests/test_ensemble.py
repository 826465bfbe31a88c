"""Policy ensembles (`relay ensemble`): real tiny RIL models, the real kitchen, the real CLI."""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from relay_agents import ensemble, evaluation, models
from relay_agents.gcbc import acting
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import kitchen
from tests.helpers import train_tiny_ril


@pytest.fixture(scope="module")
def second_ril_model(kitchen_play_tiny, tiny_ril_model, tmp_path_factory):
  """The tiny RIL model of the shared fixture trained again from another seed (same relabeled data)."""
  return train_tiny_ril(kitchen_play_tiny, tmp_path_factory.mktemp("tiny_ril_seed1"), seed=1,
                        relabeled_from=pathlib.Path(tiny_ril_model).parent)


@pytest.fixture(scope="module")
def ensemble_model(tiny_ril_model, second_ril_model, tmp_path_factory):
  return ensemble.make_ensemble([tiny_ril_model, second_ril_model], str(tmp_path_factory.mktemp("ens") / "ril_ens"))


def _kitchen_observation(seed=3):
  env = kitchen.make_env(max_episode_steps=20)
  obs, _ = env.reset(seed=seed)
  states = [obs["observation"].astype(np.float32)]
  rng = np.random.default_rng(seed)
  for _ in range(3):  # a few random steps: states off the initial one
    obs, *_ = env.step(rng.uniform(-1, 1, size=kitchen.ACTION_DIM).astype(np.float32))
    states.append(obs["observation"].astype(np.float32))
  env.close()
  return states


def test_the_ensemble_low_level_acts_with_the_mean_of_its_members(tiny_ril_model, second_ril_model, ensemble_model):
  record = models.read_record(ensemble_model)
  assert record.members == {"low": ["low", "low.1"]}
  assert [s["fingerprint"] for s in record.train_config["ensemble_of"]] == [
      models.fingerprint(tiny_ril_model), models.fingerprint(second_ril_model)]
  assert models.fingerprint(ensemble_model) not in (models.fingerprint(tiny_ril_model),
                                                    models.fingerprint(second_ril_model))
  goal = kitchen.set_goal_state(kitchen.goal_state_from_observation(_kitchen_observation()[0]), ["microwave", "kettle"])
  both = models.make_actor(ensemble_model, seed=5)
  first = models.make_actor(tiny_ril_model, seed=5)
  lows = [models.load_goal_policy(os.path.join(m, "low")) for m in (tiny_ril_model, second_ril_model)]
  for actor in (both, first):
    actor.set_goal(goal)
    actor.observe_first(None)
  key = np.zeros(2, np.uint32)
  for obs in _kitchen_observation():
    action, alone = both.select_action(obs), first.select_action(obs)
    np.testing.assert_array_equal(both.subgoal, first.subgoal)  # the high level is the first model's
    members = [low(obs, first.subgoal, key, True) for low in lows]
    np.testing.assert_allclose(alone, np.clip(members[0], -1, 1), atol=1e-6)
    np.testing.assert_allclose(action, np.clip(np.mean(members, axis=0), -1, 1), atol=1e-6)
    assert not np.allclose(members[0], members[1])  # two seeds: the mean is not either member
    for actor, a in ((both, action), (first, alone)):
      actor.observe(a, None)
  # The oracle diagnostic's loader gives the same mean.
  low = models.load_level_policy(ensemble_model, "low")
  obs = _kitchen_observation()[1]
  np.testing.assert_allclose(low(obs, goal, key, True), np.mean([m(obs, goal, key, True) for m in lows], axis=0),
                             atol=1e-6)


def test_an_ensemble_model_runs_in_the_real_kitchen(ensemble_model, kitchen_play_tiny):
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  record = models.read_record(ensemble_model)
  result = evaluation.rollout(models.make_actor(ensemble_model, seed=0), goal, max_steps=15, seed=0,
                              settings=models.env_settings(record))
  assert result.steps == 15


def test_relay_ensemble_cli_writes_a_model_eval_takes_and_finetune_refuses(
    cli, tiny_ril_model, second_ril_model, kitchen_play_tiny, tmp_path):
  out = tmp_path / "ens"
  made = cli("ensemble", "--model", tiny_ril_model, "--model", second_ril_model, "--out", str(out))
  assert made.returncode == 0, made.stderr
  assert "low: the mean of 2 members" in made.stdout
  assert sorted(os.listdir(out)) == ["agent.json", "high", "low", "low.1"]
  assert not os.path.exists(out / "low" / "checkpoint.pkl")  # policies only
  again = cli("ensemble", "--model", tiny_ril_model, "--model", second_ril_model, "--out", str(out))
  assert again.returncode == 2 and "already exists" in again.stderr
  evaluated = cli("eval", "--model", str(out), "--play", kitchen_play_tiny, "--goals", "1", "--no-heldout",
                  "--rollouts", "1", "--max-steps", "10", "--json", str(tmp_path / "e.json"), "--no-progress")
  assert evaluated.returncode == 0, evaluated.stderr
  assert json.loads((tmp_path / "e.json").read_text())
  refused = cli("finetune", "--model", str(out), "--goal", "microwave", "--env-steps", "10",
                "--out", str(tmp_path / "ft"))
  assert refused.returncode == 2, refused.stderr
  assert "policy ensemble" in refused.stderr and "Traceback" not in refused.stderr
  assert not os.path.exists(tmp_path / "ft" / "model")


def test_models_that_cannot_act_as_one_are_refused_and_nothing_is_written(
    cli, tiny_ril_model, second_ril_model, tmp_path):
  other = tmp_path / "other_window"
  shutil.copytree(second_ril_model, other)
  record = json.loads((other / "agent.json").read_text())
  record["window"] += 1
  (other / "agent.json").write_text(json.dumps(record))
  out = tmp_path / "ens"
  bad = cli("ensemble", "--model", tiny_ril_model, "--model", str(other), "--out", str(out))
  assert bad.returncode == 2 and "window (W_l)" in bad.stderr and str(other) in bad.stderr
  one = cli("ensemble", "--model", tiny_ril_model, "--out", str(out))
  assert one.returncode == 2 and "at least 2" in one.stderr
  twice = cli("ensemble", "--model", tiny_ril_model, "--model", tiny_ril_model, "--out", str(out))
  assert twice.returncode == 2 and "twice" in twice.stderr
  missing = cli("ensemble", "--model", tiny_ril_model, "--model", str(tmp_path / "nope"), "--out", str(out))
  assert missing.returncode == 1 and "agent.json" in missing.stderr
  no_level = cli("ensemble", "--model", tiny_ril_model, "--model", second_ril_model, "--levels", "middle",
                 "--out", str(out))
  assert no_level.returncode == 2 and "no level 'middle'" in no_level.stderr
  assert sorted(os.listdir(tmp_path)) == ["other_window"]  # no output, no temp dir left behind


def test_members_must_predict_the_same_chunk_the_same_way():
  acting.check_members([GoalBCConfig(), GoalBCConfig(hidden_sizes=(64,), head="gaussian")])  # widths, heads differ
  with pytest.raises(ValueError, match="action_chunk 10 vs 5"):
    acting.check_members([GoalBCConfig(), GoalBCConfig(action_chunk=5)])
  with pytest.raises(ValueError, match="target_field"):
    acting.check_members([GoalBCConfig(), GoalBCConfig(target="subgoal")])
