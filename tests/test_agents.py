"""Relay IL agents on real components: Reverb server, Acme BC learner, kitchen rollouts."""
import json
import os

import jax
import numpy as np
import pytest
import reverb

from pipelines import relabel as relabel_pipeline
from relay_agents import evaluation, models, replay, train
from relay_agents.gcbc import acting, data as gcbc_data
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import kitchen, relabeled, rlds_io
from tests.helpers import learnable_kitchen_episodes


@pytest.fixture(scope="module")
def relabeled_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("agents")
  # Kitchen-shaped episodes recorded (like generated play) under the default kitchen settings, so
  # models trained on them are evaluated against kitchen play in the same environment.
  src = rlds_io.write_episodes(learnable_kitchen_episodes(gain=0.5), "structured", str(root), progress=False,
                               metadata={"env_settings": kitchen.DEFAULT_SETTINGS.to_dict()})
  out = {}
  for level, cfg in (("low", relabeled.RelabelConfig("low", window=5, goals_per_step=3)),
                     ("high", relabeled.RelabelConfig("high", window=5, window_high=20, goals_per_step=3))):
    out[level] = str(root / level)
    relabel_pipeline.run_relabel(src, out[level], cfg)
  return out


def test_reverb_round_trip_into_learner_batches(relabeled_dirs):
  config = GoalBCConfig(batch_size=16, examples_per_item=8, action_chunk=1)
  dims = replay.ExampleDims.of(relabeled_dirs["low"])
  assert dims.dims == {"observation": 59, "action": 9, "goal": 30, "action_chunk": 90}  # default chunks of 10
  server = reverb.Server([replay.make_table(config.table_name, dims.dims, 10_000, config.examples_per_item)])
  try:
    address = f"localhost:{server.port}"
    written = replay.feed(address, config.table_name, relabeled.load(relabeled_dirs["low"]), dims.keys,
                          config.examples_per_item, progress=False)
    info = reverb.Client(address).server_info()[config.table_name]
    total = relabeled.num_examples(relabeled_dirs["low"])
    assert written == total and info.current_size == -(-total // 8)  # ceil: the last item is completed
    batch = next(gcbc_data.reverb_iterator(address, config))
    assert batch.observation.shape == (16, 59 + 30) and batch.action.shape == (16, 9)
    # Every sampled example is one that was fed: its action is tanh(0.5 * state[:9]).
    np.testing.assert_allclose(batch.action, np.tanh(0.5 * batch.observation[:, :9]), atol=1e-5)
  finally:
    server.stop()


def test_training_through_reverb_lowers_the_loss_and_resumes(relabeled_dirs, tmp_path):
  config = GoalBCConfig(batch_size=64, hidden_sizes=(64, 64), head="mse", learning_rate=3e-3, action_chunk=1)
  out = str(tmp_path / "low")
  summary = train.train_policy(relabeled_dirs["low"], config,
                               train.TrainConfig(steps=300, progress=False, checkpoint_every=100), out)
  assert summary["last_loss"] < 0.3 * summary["first_loss"]
  assert os.path.exists(os.path.join(out, "checkpoint.pkl")) and os.path.exists(os.path.join(out, "policy.pkl"))
  assert os.listdir(str(tmp_path / "tensorboard"))
  again = train.train_policy(relabeled_dirs["low"], config,
                             train.TrainConfig(steps=350, progress=False, checkpoint_every=100), out)
  assert again["resumed_from"] == 300
  policy = models.load_goal_policy(out)
  obs = np.random.default_rng(1).normal(size=59).astype(np.float32)
  action = policy(obs, np.zeros(30, np.float32), jax.random.PRNGKey(0))
  assert action.shape == (9,)
  assert np.abs(action - np.tanh(0.5 * obs[:9])).mean() < 0.25


@pytest.fixture(scope="module")
def ril_model(relabeled_dirs, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ril"))
  train.train_agent("ril", {"low": relabeled_dirs["low"], "high": relabeled_dirs["high"]}, out,
                    train.TrainConfig(steps=50, progress=False), GoalBCConfig(batch_size=32, hidden_sizes=(32,)))
  return out


def test_train_agent_checks_dataset_levels(relabeled_dirs, tmp_path):
  with pytest.raises(ValueError, match="needs a 'high' relabeled dataset"):
    train.train_agent("ril", {"low": relabeled_dirs["low"], "high": relabeled_dirs["low"]}, str(tmp_path),
                      train.TrainConfig(steps=1, progress=False))
  with pytest.raises(ValueError, match="gcbc needs datasets for \\['policy'\\]"):
    train.train_agent("gcbc", {"low": relabeled_dirs["low"]}, str(tmp_path), train.TrainConfig(steps=1))


def test_hierarchical_actor_replans_exactly_every_window(ril_model, kitchen_play_tiny):
  actor = models.make_actor(ril_model)
  assert isinstance(actor, acting.HierarchicalActor) and actor.window == 5
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  subgoals = []
  original = actor.high

  def recording_high(observation, goal_state, key, deterministic=True):
    out = original(observation, goal_state, key, deterministic)
    subgoals.append(out)
    return out

  actor.high = recording_high
  result = evaluation.rollout(actor, goal, max_steps=23, seed=0)
  assert result.steps == 23
  assert actor.replans == [0, 5, 10, 15, 20]
  assert len(subgoals) == 5 and all(s.shape == (30,) for s in subgoals)


def test_evaluation_on_a_tiny_goal_set(ril_model, kitchen_play_tiny):
  goals = evaluation.goal_sets(kitchen_play_tiny, num_frequent=17)
  frequent = [g for g in goals if not g.heldout]
  assert 1 <= len(frequent) <= 2 and len([g for g in goals if g.heldout]) == 3
  for g in frequent:  # the goal is a demo's final state: those four elements are at their targets
    done = kitchen.completion_mask(g.goal_state)
    assert {kitchen.ELEMENTS[i] for i in np.flatnonzero(done)} >= set(g.elements)
  for g in goals:
    if g.heldout:
      assert all(kitchen.completion_mask(g.goal_state)[kitchen.ELEMENTS.index(e)] for e in g.elements)
  results = evaluation.evaluate(lambda seed: models.make_actor(ril_model, seed), goals[:1] + goals[-1:],
                                rollouts=2, max_steps=20, progress=False)
  assert [r.heldout for r in results] == [False, True]
  for r, goal in zip(results, goals[:1] + goals[-1:]):
    assert len(r.first_done) == 2 and r.max_steps == 20
    for done in r.first_done:  # only the goal's elements count, each at a step within the horizon
      assert set(done) <= set(goal.elements) and all(1 <= step <= 20 for step in done.values())
    assert r.completions == [len(done) for done in r.first_done]
  again = evaluation.evaluate(lambda seed: models.make_actor(ril_model, seed), goals[:1] + goals[-1:],
                              rollouts=2, max_steps=20, progress=False)
  assert [r.first_done for r in again] == [r.first_done for r in results]  # deterministic given the seeds
  table = evaluation.format_table(results)
  assert "mean over frequent goals" in table and "held-out" in table


def test_rollout_video_is_rendered_offscreen(ril_model, kitchen_play_tiny, tmp_path):
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  result = evaluation.rollout(models.make_actor(ril_model), goal, max_steps=3, seed=0, render=True,
                              render_size=(64, 48))
  assert len(result.frames) == 4 and result.frames[0].shape == (48, 64, 3)
  for ext in ("mp4", "gif"):
    path = evaluation.write_video(result.frames, str(tmp_path / f"r.{ext}"))
    assert os.path.getsize(path) > 100
  with pytest.raises(ValueError, match="must end in .mp4 or .gif"):
    evaluation.write_video(result.frames, str(tmp_path / "r.avi"))
  assert sorted(os.listdir(tmp_path)) == ["r.gif", "r.mp4"]


def test_near_constant_input_dims_cannot_blow_up_the_policy():
  from relay_agents.gcbc import networks as gcbc_networks
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(1000, 4)).astype(np.float32)
  inputs[:, 2] = 0.0  # e.g. an object velocity that is always at rest in the sample
  norm = gcbc_networks.Normalization.from_arrays(inputs, rng.normal(size=(1000, 2)))
  assert norm.input_std[2] == pytest.approx(1e-2)
  nets = gcbc_networks.make_networks(4, 2, GoalBCConfig(hidden_sizes=(8,), head="gaussian"), norm)
  params = nets.policy.init(jax.random.PRNGKey(0))
  calm = np.zeros((1, 4), np.float32)
  wild = calm.copy()
  wild[0, 2] = 1e6  # a rare huge value is clipped to 10 std, like any value beyond it
  beyond = calm.copy()
  beyond[0, 2] = 10 * 1e-2
  mean_wild, _ = nets.policy.apply(params, wild)
  mean_beyond, _ = nets.policy.apply(params, beyond)
  np.testing.assert_allclose(mean_wild, mean_beyond, rtol=1e-5)


def test_reused_env_takes_each_goals_tasks(ril_model, kitchen_play_tiny):
  goals = evaluation.goal_sets(kitchen_play_tiny, num_frequent=17)
  first, last = goals[0], goals[-1]
  evaluation.rollout(models.make_actor(ril_model), first, max_steps=5, seed=0)
  evaluation.rollout(models.make_actor(ril_model), last, max_steps=5, seed=0)
  env = evaluation._goal_env(last, 5, False, (160, 120))  # pylint: disable=protected-access
  assert env.unwrapped.tasks_to_complete == set(last.elements)


def test_parallel_evaluation_resumes_from_its_rollout_log(ril_model, kitchen_play_tiny, tmp_path):
  import functools
  import json
  goals = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1)[:2]
  log_path = str(tmp_path / "rollouts.jsonl")
  done4 = {e: 5 for e in goals[0].elements}  # within the 6-step horizon
  done2 = {e: 3 for e in goals[1].elements[:2]}
  logged = [{"key": "k", "goal": goals[0].name, "rollout": 0, "first_done": done4, "steps": 9},
            {"key": "k", "goal": goals[1].name, "rollout": 1, "first_done": done2, "steps": 9}]
  with open(log_path, "w") as f:  # finished rollouts of this key, one of another key, a torn line
    f.write(json.dumps(logged[0]) + "\n")
    f.write(json.dumps({"key": "other", "goal": goals[0].name, "rollout": 1, "first_done": done4, "steps": 9}) + "\n")
    f.write(json.dumps(logged[1]) + "\n")
    f.write('{"key": "k", "goal": "')
  make = functools.partial(models.make_actor, ril_model, deterministic=True)
  results = evaluation.evaluate(make, goals, rollouts=2, max_steps=6, progress=False, workers=2,
                                log=evaluation.RolloutLog(log_path, "k"))
  # The logged rollouts are reused as they are (6 steps cannot complete an element); the rest ran.
  assert results[0].completions == [4, 0] and results[1].completions == [0, 2]
  rerun = evaluation.RolloutLog(log_path, "k")
  assert sorted(rerun.done) == sorted((g.name, r) for g in goals for r in range(2))
  with open(log_path) as f:
    steps = [json.loads(line)["steps"] for line in f.read().splitlines()[4:]]
  assert steps == [6, 6]  # the two rollouts that were missing ran in the workers, once each
  # Serial evaluation with the same logged rollouts puts every result in the same place (the
  # non-zero entries would move if parallel results were misordered).
  serial_log = str(tmp_path / "serial.jsonl")
  with open(serial_log, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in logged)
  serial = evaluation.evaluate(make, goals, rollouts=2, max_steps=6, progress=False,
                               log=evaluation.RolloutLog(serial_log, "k"))
  assert [r.first_done for r in serial] == [r.first_done for r in results]
  assert [r.completions for r in serial] == [[4, 0], [0, 2]]


def test_mixture_head_acts_on_a_mode_where_the_gaussian_averages():
  """Play is multimodal: half the demos go left (+0.8), half right (-0.8) from the same state."""
  from relay_agents.gcbc import learning, networks as gcbc_networks
  rng = np.random.default_rng(0)
  obs = rng.normal(size=(2048, 3)).astype(np.float32)
  action = np.where(rng.random((2048, 1)) < 0.5, 0.8, -0.8).astype(np.float32)
  arrays = {"observation": obs, "action": action}
  modes = {}
  for head in ("gaussian", "mixture"):
    config = GoalBCConfig(use_goal=False, hidden_sizes=(32, 32), head=head, num_components=3, action_chunk=1,
                          batch_size=128, learning_rate=3e-3)
    nets = gcbc_networks.make_networks(3, 1, config, gcbc_networks.Normalization.from_arrays(obs, action))
    learner = learning.make_learner(nets, gcbc_data.array_iterator(arrays, config), config, jax.random.PRNGKey(0))
    for _ in range(400):
      learner.step()
    params = learning.params_of(learner)
    modes[head] = np.asarray(nets.mean(nets.policy.apply(params, obs[:256])))[:, 0]
    samples = np.asarray(nets.sample(nets.policy.apply(params, obs[:256]), jax.random.PRNGKey(1)))[:, 0]
    assert np.isfinite(samples).all()
  assert np.abs(modes["gaussian"]).mean() < 0.3                # the mean of the two modes: ~0
  assert np.abs(np.abs(modes["mixture"]) - 0.8).max() < 0.15   # always one of the two modes
  with pytest.raises(ValueError, match="head must be one of"):
    GoalBCConfig(head="flow")


def test_cli_train_il_and_eval(cli, relabeled_dirs, kitchen_play_tiny, tmp_path):
  import json
  model = str(tmp_path / "ril")
  bad = cli("train-il", "--agent", "ril", "--data", relabeled_dirs["low"], "--out", model)
  assert bad.returncode == 2 and "needs --low and --high" in bad.stderr
  wrong_level = cli("train-il", "--agent", "ril", "--low", relabeled_dirs["high"], "--high", relabeled_dirs["high"],
                    "--out", model, "--steps", "5")
  assert wrong_level.returncode == 2 and "needs a 'low' relabeled dataset" in wrong_level.stderr
  args = ("train-il", "--agent", "ril", "--low", relabeled_dirs["low"], "--high", relabeled_dirs["high"],
          "--out", model, "--steps", "30", "--hidden", "16", "--batch-size", "16")
  first = cli(*args, check=True)
  assert "ril/low:" in first.stdout and "ril/high:" in first.stdout and "loss" in first.stdout
  assert "already trained" in cli(*args, check=True).stdout  # checkpoints at --steps: nothing to redo
  log, out = str(tmp_path / "rollouts.jsonl"), str(tmp_path / "eval.json")
  eval_args = ("eval", "--model", model, "--play", kitchen_play_tiny, "--goals", "1", "--no-heldout",
               "--rollouts", "2", "--max-steps", "4", "--workers", "2", "--resume-log", log, "--json", out)
  cli(*eval_args, check=True)
  with open(out) as f:
    result = json.load(f)["ril"]
  assert len(result["per_goal"]) == 1 and len(result["per_goal"][0]["completions"]) == 2
  with open(log) as f:
    assert [json.loads(line)["steps"] for line in f] == [4, 4]
  cli(*eval_args, check=True)  # a rerun takes every rollout from the log
  with open(log) as f:
    assert len(f.readlines()) == 2
  bad_eval = cli("eval", "--model", model, "--play", kitchen_play_tiny, "--workers", "0")
  assert bad_eval.returncode == 2 and "--workers" in bad_eval.stderr
  # A goal named by its elements (as `relay finetune --goal` takes it) instead of the goal sets; the
  # CLI run is in test_replan_interval_overrides_the_window_for_ril_only.
  from relay_agents.finetune import env as env_lib  # pylint: disable=import-outside-toplevel
  [named_goal] = evaluation.named_goals(kitchen_play_tiny, ["microwave,kettle,light switch,slide cabinet"])
  built = env_lib.GoalKitchenEnv(named_goal.elements, max_episode_steps=3).goal_state
  element_dims = ~np.isclose(named_goal.goal_state, next(rlds_io.iter_episodes(kitchen_play_tiny))["goal_state"][0])
  assert element_dims.any()
  np.testing.assert_allclose(named_goal.goal_state[element_dims], built[element_dims], atol=1e-6)
  bad_goal = cli("eval", "--model", model, "--play", kitchen_play_tiny, "--goal", "microwave,oven")
  assert bad_goal.returncode == 2 and "unknown: oven" in bad_goal.stderr


def test_oracle_subgoal_rollout_starts_in_the_demos_state(ril_model, kitchen_play_tiny):
  from relay_agents import diagnostics
  episode = next(rlds_io.iter_episodes(kitchen_play_tiny, 0, 1))
  low = models.load_goal_policy(os.path.join(ril_model, "low"))
  result = diagnostics.oracle_subgoal_rollout(low, episode, window=5, max_steps=11)
  assert result.demo_subtasks == episode["subtask_order"].split(",") and len(result.demo_subtasks) == 4
  assert result.steps == 11 and len(result.arm_error) == 3  # re-plans at steps 0, 5, 10
  assert result.arm_error[0] < 0.02  # reset with the recorded seed: the demo's own initial state
  # 11 steps complete nothing; whatever is reported comes from the env's own test of the demo's tasks.
  assert result.completed == []
  # ingested data has no subtask_order: the demo's elements come from its completion mask (it used
  # to report 0 of 0 subtasks for every ingested demo)
  ingested = dict(episode, subtask_order="", seed=-1)
  again = diagnostics.oracle_subgoal_rollout(low, ingested, window=5, max_steps=1)
  assert sorted(again.demo_subtasks) == sorted(result.demo_subtasks)


def test_progress_indexed_oracle_follows_the_rollouts_own_progress(ril_model, kitchen_play_tiny):
  from relay_agents import diagnostics
  episode = next(rlds_io.iter_episodes(kitchen_play_tiny, 0, 1))
  low = models.load_goal_policy(os.path.join(ril_model, "low"))
  result = diagnostics.oracle_subgoal_rollout(low, episode, window=5, max_steps=21, indexing="progress")
  assert result.steps == 21 and len(result.progress) == 5  # re-plans at 0, 5, 10, 15, 20
  assert result.progress[0] == 0  # the demo's own initial state matches itself
  assert result.progress == sorted(result.progress)  # progress never goes back
  assert all(b - a < 15 for a, b in zip(result.progress, result.progress[1:]))  # searched <= 3 W_l ahead
  # matching is by nearest goal-space state: a rollout parked at demo step 40 is matched there
  states = episode["goal_state"]
  assert diagnostics.nearest_progress(states, states[40], 30, 15) == 40
  assert diagnostics.nearest_progress(states, states[40], 41, 15) >= 41  # never before the last match
  with pytest.raises(ValueError, match="indexing"):
    diagnostics.oracle_subgoal_rollout(low, episode, window=5, max_steps=1, indexing="space")


def test_diagnose_oracle_cli(ril_model, kitchen_play_tiny, tmp_path, cli):
  out = str(tmp_path / "oracle.json")
  result = cli("diagnose", "oracle", "--model", ril_model, "--play", kitchen_play_tiny, "--episodes", "1",
               "--extra-steps", "0", "--indexing", "progress", "--json", out, check=True)
  assert "oracle ceiling (progress-indexed subgoals, W_l=5, 1 demos)" in result.stdout
  assert "oracle rollouts" in result.stderr  # the bar, on by default (`--no-progress`: see the failures test)
  with open(out) as f:
    report = json.load(f)
  (row,) = report["episodes"]
  episode = next(rlds_io.iter_episodes(kitchen_play_tiny, 0, 1))
  assert row["demo_subtasks"] == episode["subtask_order"].split(",")
  assert row["steps"] <= len(episode["goal_state"]) and row["done"] == len(set(row["completed"]) & set(row["demo_subtasks"]))
  assert report["summary"]["counts"][row["done"]] == 1
  bad = cli("diagnose", "oracle", "--model", ril_model, "--play", kitchen_play_tiny, "--episodes", "0")
  assert bad.returncode == 2 and "--episodes" in bad.stderr


def test_diagnose_failures_cli(ril_model, kitchen_play_tiny, tmp_path, cli):
  out = str(tmp_path / "failures.json")
  result = cli("diagnose", "failures", "--model", ril_model, "--play", kitchen_play_tiny, "--goals", "1",
               "--no-heldout", "--rollouts", "1", "--max-steps", "10", "--demos", "2", "--json", out, "--no-progress",
               check=True)
  assert "goal elements by outcome" in result.stdout and "rollouts:" not in result.stderr
  with open(out) as f:
    report = json.load(f)
  (row,) = report["rollouts"]
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  assert set(row["outcomes"]) == set(goal.elements)  # a fresh kitchen has none of them done
  assert all(o in ("done", "engaged, not done", "reached, not engaged", "not reached") for o in row["outcomes"].values())
  assert sum(report["summary"]["outcomes"].values()) == 4 and set(goal.elements) <= set(report["radii"])
  bad = cli("diagnose", "failures", "--model", ril_model, "--play", kitchen_play_tiny, "--rollouts", "0")
  assert bad.returncode == 2 and "--rollouts" in bad.stderr


def test_subgoal_trace_records_every_replan(ril_model, kitchen_play_tiny):
  from relay_agents import diagnostics
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  actor = models.make_actor(ril_model)
  result, trace = diagnostics.subgoal_trace(actor, goal, max_steps=12, seed=0)
  assert result.steps == 12
  assert [r.step for r in trace] == actor.replans == [0, 5, 10]  # W_l = 5 in this model
  assert all(set(r.done) <= set(goal.elements) and set(r.subgoal_done) <= set(goal.elements) for r in trace)
  assert all(r.subgoal_arm_distance > 0 for r in trace)
  assert all(r.arm_moved >= 0 for r in trace[:-1]) and np.isnan(trace[-1].arm_moved)
  assert trace[0].done == []  # a fresh kitchen has nothing done


def test_eval_names_models_that_share_a_directory_name_by_their_parent():
  from relay.cmd_eval import method_names  # pylint: disable=import-outside-toplevel
  assert method_names(["runs/a/model", "runs/b/model/", "models/ril"]) == ["a/model", "b/model", "ril"]


def test_replan_interval_overrides_the_window_for_ril_only(ril_model, kitchen_play_tiny, cli, tmp_path):
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  window = models.read_record(ril_model).window
  default = models.make_actor(ril_model)
  evaluation.rollout(default, goal, max_steps=7, seed=0)
  assert default.replans == list(range(0, 7, window))
  often = models.make_actor(ril_model, replan=2)
  evaluation.rollout(often, goal, max_steps=7, seed=0)
  assert often.replans == [0, 2, 4, 6]
  with pytest.raises(ValueError, match="replan must be positive"):
    models.make_actor(ril_model, replan=0)
  # The key of logged rollouts changes with --replan (a log never mixes intervals), not without it.
  base = evaluation.log_key("m", [goal], "p", 7, 0, False)
  assert evaluation.log_key("m", [goal], "p", 7, 0, False, None) == base != evaluation.log_key("m", [goal], "p", 7, 0,
                                                                                                False, 2)
  bad = cli("eval", "--model", ril_model, "--play", kitchen_play_tiny, "--replan", "0")
  assert bad.returncode == 2 and "--replan" in bad.stderr
  out = str(tmp_path / "replan.json")
  cli("eval", "--model", ril_model, "--play", kitchen_play_tiny, "--goal", "kettle, microwave,slide cabinet,light switch",
      "--rollouts", "1", "--max-steps", "3", "--replan", "2", "--json", out, check=True)
  with open(out) as f:
    [result] = json.load(f).values()
  [named] = result["per_goal"]  # the named goal instead of the goal sets
  assert named["goal"] == "microwave+kettle+light switch+slide cabinet" and len(named["completions"]) == 1


def test_element_order_takes_the_demos_order_then_precedence(kitchen_play_tiny):
  from relay_agents import sequencing
  order = sequencing.ElementOrder.from_orders([
      ["kettle", "microwave", "light switch"], ["kettle", "microwave", "light switch"],
      ["microwave", "kettle", "light switch"], ["light switch", "top burner"], []])
  # A set some demos did: their most frequent order, whatever order the goal lists it in.
  assert order(["light switch", "microwave", "kettle"]) == ["kettle", "microwave", "light switch"]
  # An unseen set: ranked by how often each element came before each other one (kettle before
  # microwave 2:1, both before the switch, the switch before the burner); ties in kitchen order.
  assert order(["top burner", "microwave", "kettle", "light switch"]) == ["kettle", "microwave", "light switch",
                                                                         "top burner"]
  assert order(["hinge cabinet", "slide cabinet"]) == ["slide cabinet", "hinge cabinet"]
  # From a real play dataset: each demo's own set comes back in that demo's order.
  learned = sequencing.element_order(kitchen_play_tiny)
  for ep in rlds_io.iter_episodes(kitchen_play_tiny):
    done = kitchen.episode_elements(ep)
    assert learned(sorted(done)) == done


def test_sequential_actor_asks_for_one_element_at_a_time_in_the_kitchen(ril_model, kitchen_play_tiny):
  import dm_env
  import mujoco
  from relay_agents import sequencing
  plan = ["microwave", "kettle", "light switch", "slide cabinet"]
  actor = models.make_actor(ril_model, sequential=sequencing.ElementOrder.from_orders([plan]))
  assert isinstance(actor, sequencing.SequentialGoalActor) and isinstance(actor.actor, acting.HierarchicalActor)
  start = evaluation.named_goals(kitchen_play_tiny, ["kettle"])[0].goal_state
  goal = evaluation.EvalGoal(sorted(plan, key=kitchen.ELEMENTS.index), kitchen.set_goal_state(start, plan))
  assert sequencing.goal_elements(goal.goal_state) == goal.elements
  env = evaluation._goal_env(goal, 50, False, None, kitchen.DEFAULT_SETTINGS)  # pylint: disable=protected-access
  obs, _ = env.reset(seed=0)
  actor.set_goal(goal.goal_state)
  actor.observe_first(dm_env.restart(obs["observation"]))
  # The first goal is the current state with only the microwave done: the arm is asked to stay.
  first = actor.actor.goal
  state = kitchen.goal_state_from_observation(obs["observation"])
  assert kitchen.completion_mask(first).tolist() == [e == "microwave" for e in kitchen.ELEMENTS]
  np.testing.assert_allclose(first[:9], state[:9])
  u = env.unwrapped
  for step in range(12):
    if step == 7:  # the microwave is opened (by hand, in the simulation): the next observation shows it
      u.data.qpos[kitchen.ELEMENT_QPOS["microwave"]] = kitchen.ELEMENT_GOALS["microwave"]
      mujoco.mj_forward(u.model, u.data)
    obs, *_ = env.step(actor.select_action(obs["observation"].astype(np.float32)))
    actor.observe(None, dm_env.transition(0.0, obs["observation"]))
  assert actor.subgoals == [("microwave",), ("microwave", "kettle")] and actor.done == ["microwave"]
  second = actor.actor.goal
  assert kitchen.completion_mask(second).tolist() == [e in ("microwave", "kettle") for e in kitchen.ELEMENTS]
  # The hierarchical policy was restarted at the switch (step 8) and re-planned at once: without
  # the restart it would have re-planned at steps 0, 5 and 10.
  assert actor.actor.replans == [0] and actor.actor.steps == 4


def test_eval_sequential_flag_runs_and_keeps_its_own_rollout_log(ril_model, kitchen_play_tiny, cli, tmp_path):
  log, out = str(tmp_path / "seq.jsonl"), str(tmp_path / "seq.json")
  args = ("eval", "--model", ril_model, "--play", kitchen_play_tiny, "--goals", "1", "--no-heldout", "--rollouts", "2",
          "--max-steps", "4", "--sequential", "--resume-log", log, "--json", out)
  cli(*args, check=True)
  with open(log) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 2 and all(json.loads(r["key"])["sequential"] is True for r in records)
  with open(out) as f:
    [result] = json.load(f).values()
  assert len(result["per_goal"]) == 1 and len(result["per_goal"][0]["completions"]) == 2
  cli(*args, check=True)  # a rerun reuses the log: nothing appended
  with open(log) as f:
    assert len(f.readlines()) == 2
  # Without the flag the same evaluation is a different key: it does not reuse these rollouts.
  cli(*args[:-5], "--resume-log", log, check=True)
  with open(log) as f:
    assert len(f.readlines()) == 4


def test_eval_samples_the_narrowed_policy_finetuning_explores_with(ril_model, kitchen_play_tiny, cli, tmp_path):
  """`--sample-std/--sample-temperature` sample the policy as `relay finetune --explore-*` does:
  narrowed toward nothing, the sampling actor acts as the deterministic one; the rollouts of a
  narrowed policy get their own log key."""
  import dm_env
  goal = evaluation.named_goals(kitchen_play_tiny, ["kettle"])[0]
  env = evaluation._goal_env(goal, 20, False, None, kitchen.DEFAULT_SETTINGS)  # pylint: disable=protected-access

  def actions(**kwargs):
    actor = models.make_actor(ril_model, seed=3, **kwargs)
    obs, _ = env.reset(seed=0)
    actor.set_goal(goal.goal_state)
    actor.observe_first(dm_env.restart(obs["observation"]))
    out = []
    for _ in range(8):
      out.append(actor.select_action(obs["observation"].astype(np.float32)))
      obs, *_ = env.step(out[-1])
      actor.observe(None, dm_env.transition(0.0, obs["observation"]))
    return np.stack(out)

  mode = actions()
  np.testing.assert_allclose(actions(deterministic=False, exploration=(1e-6, 1e-6)), mode, atol=1e-4)
  assert np.abs(actions(deterministic=False) - mode).max() > 1e-2  # the trained spread: visibly off the mode
  log = str(tmp_path / "sampled.jsonl")
  args = ("eval", "--model", ril_model, "--play", kitchen_play_tiny, "--goals", "1", "--no-heldout", "--rollouts", "1",
          "--max-steps", "4", "--sample", "--resume-log", log)
  cli(*args, "--sample-std", "0.2", "--sample-temperature", "0.1", check=True)
  cli(*args, check=True)
  with open(log) as f:
    keys = [json.loads(json.loads(line)["key"]) for line in f]
  assert [k.get("exploration") for k in keys] == [[0.2, 0.1], None]
  for bad in (("--sample-std", "0"), ("--sample-temperature", "nan")):
    proc = cli(*args, *bad)
    assert proc.returncode == 2 and "must be positive" in proc.stderr
  proc = cli(*args[:-3], "--sample-std", "0.5")  # without --sample
  assert proc.returncode == 2 and "add --sample" in proc.stderr


def test_sampling_one_level_keeps_the_other_on_its_likeliest_mode(ril_model, kitchen_play_tiny, cli, tmp_path):
  """`sampled_levels` / `relay eval --sample-level`: sampling only the high level draws subgoals off
  the deterministic one while the low level acts exactly as the deterministic low level does
  toward that subgoal; sampling only the low level keeps the deterministic subgoals. The rollouts
  get their own log key; the flag without --sample, or a level the model lacks, is refused."""
  import dm_env
  goal = evaluation.named_goals(kitchen_play_tiny, ["kettle"])[0]
  env = evaluation._goal_env(goal, 20, False, None, kitchen.DEFAULT_SETTINGS)  # pylint: disable=protected-access
  obs, _ = env.reset(seed=0)
  observation = obs["observation"].astype(np.float32)

  def first_step(**kwargs):
    actor = models.make_actor(ril_model, seed=3, **kwargs)
    actor.set_goal(goal.goal_state)
    actor.observe_first(dm_env.restart(observation))
    return actor.select_action(observation), actor.subgoal.copy()

  action, subgoal = first_step()
  high_action, high_subgoal = first_step(deterministic=False, sampled_levels=("high",))
  low_action, low_subgoal = first_step(deterministic=False, sampled_levels=("low",))
  assert np.abs(high_subgoal - subgoal).max() > 1e-3  # a drawn subgoal, not the mode
  low = models.load_goal_policy(os.path.join(ril_model, "low"), deterministic=True)
  as_trained = models.observation_fn(models.read_record(ril_model)) or (lambda o: o)  # env -> the model's layout
  toward_drawn = np.clip(low(as_trained(observation), high_subgoal, np.zeros(2, np.uint32)), -1, 1)
  np.testing.assert_allclose(high_action, toward_drawn, atol=1e-5)  # the low level on its mode
  np.testing.assert_allclose(low_subgoal, subgoal, atol=1e-6)  # the high level on its mode
  assert np.abs(low_action - action).max() > 1e-3  # while the low level samples
  with pytest.raises(ValueError, match="no level middle"):
    models.make_actor(ril_model, deterministic=False, sampled_levels=("middle",))

  log = str(tmp_path / "sampled.jsonl")
  args = ("eval", "--model", ril_model, "--play", kitchen_play_tiny, "--goals", "1", "--no-heldout", "--rollouts", "1",
          "--max-steps", "4", "--resume-log", log)
  cli(*args, "--sample", "--sample-level", "high", check=True)
  cli(*args, "--sample", check=True)
  with open(log) as f:
    keys = [json.loads(json.loads(line)["key"]) for line in f]
  assert [k.get("sample_level") for k in keys] == ["high", None]
  proc = cli(*args, "--sample-level", "high")  # without --sample
  assert proc.returncode == 2 and "add --sample" in proc.stderr
  proc = cli(*args, "--sample", "--sample-level", "middle")
  assert proc.returncode == 2 and "invalid choice" in proc.stderr
