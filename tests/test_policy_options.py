"""Policy options beyond the paper's plain MLP: end-effector input features and action chunking.

Real components throughout: MuJoCo's own kinematics as the reference, the Beam relabel pipeline,
training through a local Reverb server, rollouts in the kitchen.
"""
import dataclasses
import json
import os
import pickle

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
import reverb
import tensorflow as tf

from pipelines import relabel as relabel_pipeline
from relay_agents import evaluation, models, replay, train
from relay_agents.finetune import acting as ft_acting, builder as ft_builder, env as ft_env, learning, policy_io
from relay_agents.finetune import semi_mdp
from relay_agents.finetune.config import FinetuneConfig
from relay_agents.gcbc import acting, data as gcbc_data
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import goal_space, kinematics, kitchen, relabel, relabeled, rlds_io
from relay_data.errors import DataError
from tests.helpers import learnable_kitchen_episodes


def test_forward_kinematics_matches_mujoco():
  env = kitchen.make_env()
  model = env.unwrapped.model
  data = mujoco.MjData(model)
  site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, kinematics.END_EFFECTOR_SITE)
  rng = np.random.default_rng(0)
  q = rng.uniform(model.jnt_range[:9, 0], model.jnt_range[:9, 1], size=(32, 9)).astype(np.float32)
  expected = []
  for row in q:
    data.qpos[:9] = row
    mujoco.mj_kinematics(model, data)
    expected.append(data.site_xpos[site].copy())
  env.close()
  np.testing.assert_allclose(kinematics.kitchen_end_effector(q), expected, atol=1e-5)
  jitted = jax.jit(lambda x: kinematics.kitchen_end_effector(x, jnp))
  np.testing.assert_allclose(np.asarray(jitted(q)), expected, atol=1e-5)
  # Any leading shape; extra columns after the 9 joints are ignored (an observation row works).
  obs = np.concatenate([q, rng.normal(size=(32, 50)).astype(np.float32)], -1).reshape(4, 8, 59)
  np.testing.assert_allclose(kinematics.kitchen_end_effector(obs).reshape(32, 3), expected, atol=1e-5)
  with pytest.raises(ValueError, match="no site 'nope'"):
    kinematics.chain_of_site(model, "nope")


def test_action_chunks_are_the_next_k_actions_clamped_at_the_last():
  rng = np.random.default_rng(1)
  length, k = 12, 4
  states, goals = rng.normal(size=(length, 5)), rng.normal(size=(length, 3))
  actions = rng.normal(size=(length, 2)).astype(np.float32)
  ex = relabel.low_level_examples(states, goals, actions, window=3, goals_per_step=2, seed=0, action_chunk=k)
  t = relabeled.step_index(relabeled.RelabelConfig("low", window=3, goals_per_step=2), length)
  assert ex["action_chunk"].shape == (len(t), k * 2)
  for row, step in zip(ex["action_chunk"], t):
    literal = [actions[min(step + i, length - 2)] for i in range(k)]  # a_T (row L-1) is never a target
    np.testing.assert_array_equal(row, np.concatenate(literal))
  np.testing.assert_array_equal(ex["action_chunk"][:, :2], ex["action"])
  for fn in (lambda c: relabel.bc_examples(states, actions, action_chunk=c),
             lambda c: relabel.final_goal_examples(states, goals, actions, action_chunk=c)):
    assert "action_chunk" not in fn(1) and fn(3)["action_chunk"].shape == (length - 1, 6)
  with pytest.raises(ValueError, match="action_chunk"):
    relabeled.RelabelConfig("high", window=3, window_high=9, action_chunk=2)
  with pytest.raises(ValueError, match="action_chunk must be a positive integer"):
    relabeled.RelabelConfig("low", action_chunk=0)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  root = tmp_path_factory.mktemp("options")
  src = rlds_io.write_episodes(learnable_kitchen_episodes(scale=0.3), "options", str(root), progress=False,
                               metadata={"env_settings": kitchen.DEFAULT_SETTINGS.to_dict()})
  out = {"source": src}
  for name, cfg in (("low", relabeled.RelabelConfig("low", window=5, goals_per_step=3, action_chunk=1)),
                    ("low_c3", relabeled.RelabelConfig("low", window=5, goals_per_step=3, action_chunk=3)),
                    ("high", relabeled.RelabelConfig("high", window=5, window_high=20, goals_per_step=3)),
                    ("flat_c3", relabeled.RelabelConfig("flat", window=20, goals_per_step=3, action_chunk=3))):
    out[name] = str(root / name)
    relabel_pipeline.run_relabel(src, out[name], cfg)
  return out


def test_relabel_pipeline_writes_action_chunks(datasets):
  assert relabeled.dims_of(datasets["low_c3"]) == {"observation": 59, "action": 9, "goal": 30, "action_chunk": 27}
  assert relabeled.read_lineage(datasets["low_c3"])["config"]["action_chunk"] == 3
  assert "action_chunk" not in relabeled.read_lineage(datasets["low"])["config"]  # old lineages unchanged
  arrays = relabeled.read_arrays(datasets["low_c3"])
  episodes = list(rlds_io.iter_episodes(datasets["source"]))
  for i in (0, 5, len(arrays["step"]) - 1):  # each chunk is its source episode's next 3 actions
    actions = episodes[arrays["episode_index"][i]]["action"]
    t = arrays["step"][i]
    expected = np.concatenate([actions[min(t + j, len(actions) - 2)] for j in range(3)])
    np.testing.assert_array_equal(arrays["action_chunk"][i], expected)


@pytest.fixture(scope="module")
def chunked_ee_model(datasets, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ril_options"))
  config = GoalBCConfig(batch_size=32, hidden_sizes=(32,), action_chunk=3, execute_steps=2, end_effector=True)
  train.train_agent("ril", {"low": datasets["low_c3"], "high": datasets["high"]}, out,
                    train.TrainConfig(steps=40, progress=False), config)
  return out


def test_chunked_end_effector_ril_trains_and_acts_in_the_kitchen(chunked_ee_model, kitchen_play_tiny):
  record = models.read_record(chunked_ee_model)
  low, high = record.policy_configs["low"], record.policy_configs["high"]
  assert (low["action_chunk"], low["execute_steps"], low["end_effector"]) == (3, 2, True)
  assert (high["action_chunk"], high["target"], high["end_effector"]) == (1, "subgoal", True)
  saved = models.load_policy(os.path.join(chunked_ee_model, "low"))
  assert saved["normalization"].input_mean.shape == (59 + 30 + 3 + 3,)  # [s, g] + both hands' positions
  assert saved["normalization"].output_mean.shape == (27,)

  actor = models.make_actor(chunked_ee_model)
  predictions = []

  class Counting:
    """The low level's jitted policy, recording the shape of each prediction."""
    def __init__(self, fn):
      self.fn, self.config = fn, fn.config

    def __call__(self, *args):
      out = self.fn(*args)
      predictions.append(out.shape)
      return out

  actor.low_policy.fn = Counting(actor.low_policy.fn)
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  result = evaluation.rollout(actor, goal, max_steps=7, seed=0)
  assert result.steps == 7 and actor.replans == [0, 5]
  # Predicts at steps 0, 2, 4 (2 of each 3-action chunk executed) and at 5 (new subgoal).
  assert predictions == [(27,)] * 4


def test_a_chunked_model_is_finetuned_by_its_decisions(chunked_ee_model):
  """Semi-MDP finetuning through Reverb in the kitchen: the sampling actor predicts on the
  `semi_mdp.decision_starts` schedule (chunks of 3, executing 2, re-plan every W_l = 5); the
  learner's decisions carry exactly the executed slices of those sampled chunks; one IRIL step
  keeps the KL at its bound and inserts relabeled on-policy chunks into the demo table."""
  model = policy_io.load_model(chunked_ee_model)
  low = model.levels["low"]
  assert (low.config.action_chunk, low.config.execute_steps, model.window) == (3, 2, 5)
  horizon = 12
  config = FinetuneConfig(variant="iril", episodes_per_iteration=2, max_episode_steps=horizon, demo_batch_size=32,
                          demo_max_examples=64, iril_goals_per_step=2)
  builder = ft_builder.FinetuneBuilder(config, model)
  server = reverb.Server(builder.make_replay_tables())
  address = f"localhost:{server.port}"
  try:
    builder.feed_demos(address, low.source, progress=False)
    client = reverb.Client(address)
    learner = builder.make_learner(jax.random.PRNGKey(0), client, 0.5, ["microwave"],
                                   demo_iterator=builder.make_demo_iterator(address),
                                   demo_inserter=builder.make_demo_inserter(address))
    actor = builder.make_actor(0, learner, builder.make_adder(client))
    predicted = []  # (step, sampled chunk) per low-level prediction

    class Recording:
      def __init__(self, fn):
        self.fn, self.config = fn, fn.config

      def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        predicted.append((actor._steps, out.reshape(3, 9)))  # pylint: disable=protected-access
        return out

    actor._policies["low"].fn = Recording(actor._policies["low"].fn)  # pylint: disable=protected-access
    env = ft_env.GoalKitchenEnv(["microwave"], max_episode_steps=horizon)
    starts = semi_mdp.decision_starts(horizon, 5, 2)
    np.testing.assert_array_equal(starts, [0, 2, 4, 5, 7, 9, 10])
    runs = []
    for i in range(2):
      predicted.clear()
      runs.append((ft_acting.run_episode(env, actor, i, seed=0, record=True), list(predicted)))
      assert [step for step, _ in runs[-1][1]] == list(starts)
    samples = list(client.sample(config.trajectory_table, 2, emit_timesteps=False, unpack_as_table_signature=True))
    decisions = learning.level_transitions(learning.episodes_from_samples(samples), "low", model, config, 0.5)
    assert decisions["actions"].shape == (2, len(starts), 27)
    by_first_action = {run["actions"][0].tobytes(): chunks for run, chunks in runs}
    for b in range(2):  # the queue's order is Reverb's; match each sampled episode to its run
      chunks = by_first_action[decisions["actions"][b, 0, :9].tobytes()]
      for j, (start, chunk) in enumerate(chunks):
        executed = min(2, 5 - start % 5, horizon - start)
        np.testing.assert_array_equal(decisions["actions"][b, j, :9 * executed], chunk[:executed].reshape(-1))
        assert np.isnan(decisions["actions"][b, j, 9 * executed:]).all()
    for i in range(2, 4):
      ft_acting.run_episode(env, actor, i, seed=0)
    before = jax.tree_util.tree_leaves(learner.get_variables(["low"])[0])
    learner.step()
    stats = learner.last
    assert stats["low/quadratic_kl"] == pytest.approx(config.kl_delta, rel=1e-3)
    assert stats["low/kl_bound"] == pytest.approx(config.kl_delta, rel=0.3)
    assert np.isfinite(stats["low/surrogate_after"]) and stats["iril_inserted"] > 0
    after = jax.tree_util.tree_leaves(learner.get_variables(["low"])[0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert client.server_info()[config.demo_table].current_size > 0
  finally:
    server.stop()


def test_finetune_executes_the_chosen_actions_per_chunk_and_its_model_keeps_them(chunked_ee_model, tmp_path, cli):
  """`relay finetune --execute-steps 1`: the actors' low level predicts at every step, the learner
  scores one decision per step (`semi_mdp`), the finetuned model acts so by default, and a resume
  with another count or a count beyond the chunk is refused."""
  model = policy_io.load_model(chunked_ee_model, execute_steps=1)
  assert model.levels["low"].config.execute_steps == 1 and model.levels["high"].config.action_chunk == 1
  assert policy_io.load_model(chunked_ee_model).levels["low"].config.execute_steps == 2  # as trained
  with pytest.raises(DataError, match=r"low/policy.pkl: cannot execute 4 actions per chunk.*1\.\.3"):
    policy_io.load_model(chunked_ee_model, execute_steps=4)
  horizon = 8
  config = FinetuneConfig(variant="npg", episodes_per_iteration=2, max_episode_steps=horizon, execute_steps=1)
  builder = ft_builder.FinetuneBuilder(config, model)
  server = reverb.Server(builder.make_replay_tables())
  try:
    client = reverb.Client(f"localhost:{server.port}")
    learner = builder.make_learner(jax.random.PRNGKey(0), client, 0.5, ["microwave"])
    actor = builder.make_actor(0, learner, builder.make_adder(client))
    steps = []
    inner = actor._policies["low"].fn  # pylint: disable=protected-access

    class Recording:
      config = inner.config

      def __call__(self, *args, **kwargs):
        steps.append(actor._steps)  # pylint: disable=protected-access
        return inner(*args, **kwargs)

    actor._policies["low"].fn = Recording()  # pylint: disable=protected-access
    env = ft_env.GoalKitchenEnv(["microwave"], max_episode_steps=horizon)
    ft_acting.run_episode(env, actor, 0, seed=0)
    assert steps == list(range(horizon))
    ft_acting.run_episode(env, actor, 1, seed=0)
    samples = list(client.sample(config.trajectory_table, 2, emit_timesteps=False, unpack_as_table_signature=True))
    decisions = learning.level_transitions(learning.episodes_from_samples(samples), "low", model, config, 0.5)
    assert decisions["actions"].shape == (2, horizon, 27)  # one decision per step: the first 9 dims executed
    assert not np.isnan(decisions["actions"][..., :9]).any() and np.isnan(decisions["actions"][..., 9:]).all()
  finally:
    server.stop()
  run = str(tmp_path / "run")
  flags = ["finetune", "--model", chunked_ee_model, "--goal", "microwave", "--variant", "npg", "--env-steps", "16",
           "--episodes-per-iteration", "2", "--max-episode-steps", "8", "--out", run, "--no-progress"]
  cli(*flags, "--execute-steps", "1", check=True)
  with open(os.path.join(run, "run.json")) as f:
    assert json.load(f)["config"]["execute_steps"] == 1
  finetuned = os.path.join(run, "model")
  assert models.read_record(finetuned).finetuned["execute_steps"] == 1
  assert models.load_policy(os.path.join(finetuned, "low"))["config"].execute_steps == 1
  assert models.make_actor(finetuned).low_policy.config.execute_steps == 1  # acts as finetuned by default
  again = cli(*flags, "--execute-steps", "2")  # resuming that run with another count
  assert again.returncode != 0 and "execute_steps=1" in again.stderr, again.stderr
  for bad, code, message in (("0", 2, "--execute-steps must be positive"), ("4", 1, "low/policy.pkl")):
    r = cli(*flags[:-3], "--out", str(tmp_path / f"bad{bad}"), "--no-progress", "--execute-steps", bad)
    assert r.returncode == code and message in r.stderr, r.stderr
  assert not os.path.exists(tmp_path / "bad4" / "model")


def _one_rollout_eval(cli, model, play, out, *flags):
  """`relay eval` with `flags` on one goal, one 4-step rollout: it runs and writes that rollout."""
  cli("eval", "--model", model, "--play", play, "--goals", "1", "--no-heldout", "--rollouts", "1", "--max-steps",
      "4", "--json", out, "--no-progress", *flags, check=True)
  with open(out) as f:
    [result] = json.load(f).values()
  assert [len(g["completions"]) for g in result["per_goal"]] == [1]


def test_execute_steps_chosen_at_deployment_changes_how_often_the_low_level_predicts(
    chunked_ee_model, kitchen_play_tiny, cli, tmp_path):
  """`relay eval --execute-steps N` (and `make_actor(execute_steps=N)`): the trained low level runs
  N actions of each chunk; the high level's cadence stays W_l; the rollout log keys it apart."""
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  counts = {}
  for execute in (None, 1, 3):
    actor = models.make_actor(chunked_ee_model, execute_steps=execute)
    calls = []
    inner = actor.low_policy.fn

    class Counting:  # the low level's compiled policy, counting its predictions
      config = inner.config

      def __call__(self, *args):
        calls.append(1)
        return inner(*args)

    actor.low_policy.fn = Counting()
    result = evaluation.rollout(actor, goal, max_steps=9, seed=0)
    assert result.steps == 9 and actor.replans == [0, 5]
    counts[execute] = (len(calls), inner.config.execute_steps)
  # As trained (2 of 3): steps 0, 2, 4 | 5, 7. One per step: 9. All three: 0, 3 | 5, 8.
  assert counts == {None: (5, 2), 1: (9, 1), 3: (4, 3)}
  # The compiled policy is shared, not rebuilt: only the config it serves chunks by differs.
  fn, _ = models.policy_fn(os.path.join(chunked_ee_model, "low"))
  assert fn.with_execute_steps(None) is fn and fn.with_execute_steps(1)._act is fn._act
  assert models.load_goal_policy(os.path.join(chunked_ee_model, "low"), execute_steps=1).config.execute_steps == 1
  with pytest.raises(DataError, match=r"low/policy.pkl: cannot execute 4 actions per chunk.*in 1\.\.3"):
    models.make_actor(chunked_ee_model, execute_steps=4)
  base = evaluation.log_key("m", [goal], "p", 9, 0, False)
  assert evaluation.log_key("m", [goal], "p", 9, 0, False, execute_steps=None) == base
  assert evaluation.log_key("m", [goal], "p", 9, 0, False, execute_steps=1) != base
  for bad in ("0", "4"):
    r = cli("eval", "--model", chunked_ee_model, "--play", kitchen_play_tiny, "--execute-steps", bad)
    assert r.returncode == 2 and "--execute-steps" in r.stderr, r.stderr
  _one_rollout_eval(cli, chunked_ee_model, kitchen_play_tiny, str(tmp_path / "x1.json"), "--execute-steps", "1")
  r = cli("diagnose", "oracle", "--model", chunked_ee_model, "--play", kitchen_play_tiny, "--episodes", "1",
          "--extra-steps", "0", "--execute-steps", "4", "--no-progress")
  assert r.returncode != 0 and "execute" in r.stderr and "policy.pkl" in r.stderr, r.stderr


def _head_flops(apply, params, inputs) -> float:
  cost = jax.jit(apply).lower(params, inputs).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.parametrize("head,gripper", [("mixture", False), ("gaussian", False), ("mixture", True)])
def test_first_actions_compute_the_chunks_first_actions_alone(head, gripper):
  """`GoalBCNetworks.first_actions(m)`: the network's output for the first m actions of each chunk
  only, from the full parameters; its mode and its samples (same key) are the full chunk's first
  m actions, also when narrowed for exploration; it costs fewer operations; 1-action policies
  have none, and m outside 1..k is refused."""
  from relay_agents.gcbc import networks as gcbc_networks
  chunk, dim, act = 4, kitchen.OBS_DIM + kitchen.GOAL_DIM, kitchen.ACTION_DIM
  config = GoalBCConfig(hidden_sizes=(64,), head=head, action_chunk=chunk, execute_steps=1, end_effector=False,
                        gripper_head=gripper)
  rng = np.random.default_rng(0)
  norm = gcbc_networks.Normalization(np.zeros(dim, np.float32), np.ones(dim, np.float32),
                                     rng.normal(size=chunk * act).astype(np.float32),
                                     rng.uniform(0.5, 2, size=chunk * act).astype(np.float32))
  nets = gcbc_networks.make_networks(dim, chunk * act, config, norm, observation_dim=kitchen.OBS_DIM)
  params = nets.policy.init(jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
  inputs = rng.normal(size=(8, dim)).astype(np.float32)
  inputs[:, kitchen.FINGERS] = 0.02
  key = jax.random.PRNGKey(3)
  for narrowed in (nets, gcbc_networks.with_exploration(nets, 0.25, 0.1)):
    full = narrowed.policy.apply(params, inputs)
    for m in (1, 2):
      cut = narrowed.first_actions(m)
      out = cut.policy.apply(params, inputs)
      assert cut.output_dim == m * act
      np.testing.assert_allclose(cut.mean(out), np.asarray(narrowed.mean(full))[:, :m * act], atol=1e-5)
      np.testing.assert_allclose(cut.sample(out, key), np.asarray(narrowed.sample(full, key))[:, :m * act],
                                 atol=1e-5)
  assert _head_flops(nets.first_actions(1).policy.apply, params, inputs) < \
      0.8 * _head_flops(nets.policy.apply, params, inputs)
  with pytest.raises(ValueError, match="m must be in 1..4"):
    nets.first_actions(5)
  single = gcbc_networks.make_networks(dim, act, dataclasses.replace(config, action_chunk=1, gripper_head=False),
                                       gcbc_networks.Normalization(norm.input_mean, norm.input_std, norm.output_mean[:act],
                                                                   norm.output_std[:act]),
                                       observation_dim=kitchen.OBS_DIM)
  assert single.first_actions is None


def test_lanes_compute_only_the_executed_actions_and_act_a_lone_actors_episodes(chunked_ee_model):
  """A chunked low level (chunks of 3, executing 2) acting in 8 lockstep lanes: its batched calls
  give the 2 executed actions per chunk alone (`executed_only`, 18 columns, not 27), the same as the
  whole chunk's first two, and each lane's episode is the one a lone actor acts with whole chunks.
  While temporal ensembling (which needs whole chunks) it gives whole chunks."""
  model = policy_io.load_model(chunked_ee_model)
  fn = model.levels["low"].fn
  assert fn.executed_rows() == 2 and fn.with_execute_steps(3).executed_rows() == 3
  assert fn.with_execute_steps(1, ensemble=0.5).executed_rows() == 3
  rng = np.random.default_rng(0)
  obs, goals = rng.normal(size=(8, 59)).astype(np.float32), rng.normal(size=(8, 30)).astype(np.float32)
  keys = rng.integers(0, 2 ** 32, size=(8, 2), dtype=np.uint32)
  params = model.levels["low"].params
  whole = fn.batch(params, obs, goals, keys, deterministic=False)
  executed = fn.batch(params, obs, goals, keys, deterministic=False, executed_only=True)
  assert whole.shape == (8, 27) and executed.shape == (8, 18)
  np.testing.assert_allclose(executed, whole[:, :18], atol=1e-5)
  assert fn.with_execute_steps(1, ensemble=0.5).batch(params, obs, goals, keys, executed_only=True).shape == (8, 27)

  goal = ["microwave", "kettle"]
  goal_state = ft_env.default_goal_state(goal)
  lanes = 8
  environments = ft_env.lanes(lanes, goal, goal_state, 9, seed=0, settings=model.env_settings)
  done = dict(ft_acting.run_episodes(environments, ft_acting.fixed_actors(model, lanes, seed=4), range(lanes), 0,
                                     record=True))
  for index in (0, 5):
    lone = ft_acting.run_episode(ft_env.GoalKitchenEnv(goal, goal_state, 9, seed=0, settings=model.env_settings),
                                 ft_acting.fixed_actor(model, seed=4), index, 0, record=True)
    np.testing.assert_allclose(done[index]["actions"], lone["actions"], atol=1e-4)
    np.testing.assert_allclose(done[index]["observations"], lone["observations"], atol=1e-4)


def test_chunked_policy_serves_its_queue_and_repredicts_on_a_new_goal():
  calls = []

  class Fn:
    config = GoalBCConfig(action_chunk=4, execute_steps=3)

    def __call__(self, params, observation, goal, key, deterministic=None):
      calls.append(np.array(goal))
      return np.arange(8, dtype=np.float32) + 100 * len(calls)  # 4 actions of 2 dims

  policy = acting.GoalPolicy(Fn(), params=None)
  g1, g2 = np.zeros(2, np.float32), np.ones(2, np.float32)
  got = [policy(None, g1, None) for _ in range(4)]
  np.testing.assert_array_equal(np.stack(got), [[100, 101], [102, 103], [104, 105], [200, 201]])
  np.testing.assert_array_equal(policy(None, g2, None), [300, 301])  # goal changed: predicts at once
  policy.reset()
  np.testing.assert_array_equal(policy(None, g2, None), [400, 401])  # new episode: predicts at once
  assert len(calls) == 4


def test_temporal_ensemble_averages_what_the_last_k_chunks_say_about_this_step():
  """ACT's temporal ensembling: a prediction every step; the action is the exp(-m * age)-weighted
  mean over the chunks still covering this step; a new goal or episode forgets them."""
  calls = []

  class Fn:
    config = GoalBCConfig(action_chunk=3, execute_steps=1)
    ensemble = 0.5

    def __call__(self, params, observation, goal, key, deterministic=None):
      calls.append(1)
      n = len(calls)  # chunk n says 10n + i about the i-th step after it (1-d actions)
      return np.array([10 * n, 10 * n + 1, 10 * n + 2], np.float32)

  policy = acting.GoalPolicy(Fn(), params=None)
  g1, g2 = np.zeros(2, np.float32), np.ones(2, np.float32)
  w = lambda *ages: np.exp(-0.5 * np.array(ages)) / np.exp(-0.5 * np.array(ages)).sum()
  np.testing.assert_allclose(policy(None, g1, None), [10])
  np.testing.assert_allclose(policy(None, g1, None), [w(1, 0) @ [11, 20]], rtol=1e-6)
  np.testing.assert_allclose(policy(None, g1, None), [w(2, 1, 0) @ [12, 21, 30]], rtol=1e-6)
  # Chunk 1 covers 3 steps only: from the fourth step on, the last 3 chunks vote.
  np.testing.assert_allclose(policy(None, g1, None), [w(2, 1, 0) @ [22, 31, 40]], rtol=1e-6)
  np.testing.assert_allclose(policy(None, g2, None), [50])  # a new subgoal starts afresh
  policy.reset()
  np.testing.assert_allclose(policy(None, g2, None), [60])  # so does a new episode
  assert len(calls) == 6
  # The weights: normalized, uniform at m = 0, and finite for any decay (no underflow to 0/0).
  np.testing.assert_allclose(acting.ensemble_weights([2, 1, 0], 0.0), [1 / 3] * 3)
  for decay in (-1e4, 0.01, 1e4):
    weights = acting.ensemble_weights([9, 3, 0], decay)
    assert np.isfinite(weights).all() and np.isclose(weights.sum(), 1)
  assert acting.ensemble_weights([9, 3, 0], 1e4)[-1] == 1  # a large decay keeps the newest only


def test_temporal_ensemble_chosen_at_deployment_acts_checks_and_keys_its_rollouts(
    chunked_ee_model, tiny_ril_model, kitchen_play_tiny, cli, tmp_path):
  """`relay eval --temporal-ensemble M` / `make_actor(ensemble=M)`: the trained low level predicts
  at every step and acts with the ensemble, on the same compiled policy; bad values, a clash
  with --execute-steps and a model without chunks are refused before any rollout."""
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  for ensemble in (None, 0.0):
    actor = models.make_actor(chunked_ee_model, execute_steps=1 if ensemble is None else None, ensemble=ensemble)
    calls, inner = [], actor.low_policy.fn
    assert inner.config.execute_steps == 1 and inner.ensemble == ensemble

    class Counting:  # the low level's compiled policy, counting its predictions
      config, ensemble = inner.config, inner.ensemble  # pylint: disable=cell-var-from-loop

      def __call__(self, *args):
        calls.append(1)
        return inner(*args)  # pylint: disable=cell-var-from-loop

    actor.low_policy.fn = Counting()
    result = evaluation.rollout(actor, goal, max_steps=9, seed=0)
    assert result.steps == 9 and actor.replans == [0, 5] and len(calls) == 9
  fn, params = models.policy_fn(os.path.join(chunked_ee_model, "low"))
  ensembled = fn.with_execute_steps(None, ensemble=0.0)
  assert ensembled._act is fn._act and ensembled.ensemble == 0.0 and fn.ensemble is None
  assert ensembled.config.execute_steps == 1
  # One observation, goal and key: the first step acts the fresh chunk's first action; the second
  # averages the old chunk's second action with the new chunk's first (m = 0: a plain mean).
  obs = next(rlds_io.iter_episodes(kitchen_play_tiny, 0, 1))["observation"][0].astype(np.float32)
  sub, key = np.asarray(goal.goal_state, np.float32), np.zeros(2, np.uint32)
  first = fn(params, obs, sub, key).reshape(fn.config.action_chunk, -1)
  mean = acting.GoalPolicy(ensembled, params)
  np.testing.assert_allclose(mean(obs, sub, key), first[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mean(obs, sub, key), (first[1] + first[0]) / 2, rtol=1e-5, atol=1e-6)
  assert not np.allclose(first[1], first[0])  # so the mean is not the plain closed-loop action
  with pytest.raises(DataError, match=r"low/policy.pkl: cannot execute a temporal ensemble.*must be 1"):
    models.make_actor(chunked_ee_model, execute_steps=2, ensemble=0.0)
  base = evaluation.log_key("m", [goal], "p", 9, 0, False, execute_steps=1)
  assert evaluation.log_key("m", [goal], "p", 9, 0, False, execute_steps=1, ensemble=None) == base
  assert evaluation.log_key("m", [goal], "p", 9, 0, False, execute_steps=1, ensemble=0.0) != base
  for flags, what in ((["--temporal-ensemble", "nan"], "finite"),
                      (["--temporal-ensemble", "0", "--execute-steps", "2"], "--execute-steps 2"),
                      (["--temporal-ensemble", "x"], "invalid float")):
    r = cli("eval", "--model", chunked_ee_model, "--play", kitchen_play_tiny, *flags)
    assert r.returncode == 2 and what in r.stderr, r.stderr
  r = cli("eval", "--model", tiny_ril_model, "--play", kitchen_play_tiny, "--temporal-ensemble", "0")
  assert r.returncode == 2 and "one action at a time" in r.stderr and tiny_ril_model in r.stderr, r.stderr
  _one_rollout_eval(cli, chunked_ee_model, kitchen_play_tiny, str(tmp_path / "te.json"), "--temporal-ensemble", "0.1")
  r = cli("diagnose", "oracle", "--model", chunked_ee_model, "--play", kitchen_play_tiny, "--episodes", "1",
          "--extra-steps", "0", "--temporal-ensemble", "0", "--execute-steps", "3", "--no-progress")
  assert r.returncode == 2 and "--temporal-ensemble" in r.stderr, r.stderr


def test_options_are_checked_against_the_data(datasets, chunked_ee_model, tmp_path, cli):
  with pytest.raises(DataError, match="relabel it with --action-chunk 3"):
    train.train_agent("ril", {"low": datasets["low"], "high": datasets["high"]}, str(tmp_path / "m"),
                      train.TrainConfig(steps=5, progress=False), GoalBCConfig(action_chunk=3))
  custom = {"low": {"spec": goal_space.custom_spec(4, 2).to_dict(), "path": "x"}}
  with pytest.raises(DataError, match="--end-effector needs kitchen data"):
    train.resolve_end_effector(custom, GoalBCConfig(end_effector=True))
  assert train.resolve_end_effector(custom, GoalBCConfig()).end_effector is False  # auto: off off the kitchen
  bad = cli("train-il", "--agent", "ril", "--low", datasets["low"], "--high", datasets["high"],
            "--out", str(tmp_path / "m2"), "--action-chunk", "3", "--execute-steps", "4")
  assert bad.returncode == 2 and "execute_steps" in bad.stderr
  bad = cli("relabel", "--source", datasets["source"], "--level", "high", "--action-chunk", "2",
            "--output", str(tmp_path / "r"))
  assert bad.returncode == 2 and "not high" in bad.stderr and not os.path.exists(tmp_path / "r")


def test_defaults_are_the_measured_options_and_old_policies_keep_theirs():
  config = GoalBCConfig()
  assert (config.hidden_sizes, config.action_chunk, config.execute_steps) == ((1024, 1024, 1024), 10, 1)
  assert GoalBCConfig(action_chunk=4).execute_steps == 1  # closed loop whatever the chunk
  assert config.end_effector is None  # auto: resolved from the data by relay_agents.train
  assert GoalBCConfig(target="subgoal").action_chunk == 1
  assert relabeled.RelabelConfig("low").action_chunk == relabel.DEFAULT_ACTION_CHUNK == config.action_chunk
  assert relabeled.RelabelConfig("high", window_high=60).action_chunk == 1
  # A policy pickled before the options existed (its state lacks them) acts as it was trained.
  state = {k: v for k, v in GoalBCConfig(action_chunk=1).__dict__.items()
           if k not in ("end_effector", "action_chunk", "execute_steps")}
  old = pickle.loads(pickle.dumps(GoalBCConfig(action_chunk=1)))
  old.__dict__.clear()
  old.__setstate__(state)
  assert (old.end_effector, old.action_chunk, old.execute_steps, old.target_field) == (False, 1, 1, "action")


def test_cli_paper_preset_and_explicit_flags(datasets, tmp_path, cli):
  out = str(tmp_path / "paper")
  cli("train-il", "--agent", "ril", "--low", datasets["low"], "--high", datasets["high"], "--out", out, "--paper",
      "--hidden", "8", "--steps", "3", "--batch-size", "8", check=True)
  config = models.read_record(out).policy_configs["low"]
  # --paper sets one action per step and no end-effector input; an explicit --hidden wins.
  assert (config["action_chunk"], config["end_effector"], list(config["hidden_sizes"])) == (1, False, [8])


def _gripper_networks(chunk=2, observation_dim=kitchen.OBS_DIM):
  from relay_agents.gcbc import networks as gcbc_networks
  config = GoalBCConfig(hidden_sizes=(16,), action_chunk=chunk, execute_steps=1, end_effector=False,
                        gripper_head=True)
  dim = observation_dim + kitchen.GOAL_DIM
  out = chunk * kitchen.ACTION_DIM
  norm = gcbc_networks.Normalization(np.zeros(dim, np.float32), np.ones(dim, np.float32),
                                     np.zeros(out, np.float32), np.ones(out, np.float32))
  return gcbc_networks, gcbc_networks.make_networks(dim, out, config, norm, observation_dim=observation_dim), config


def test_gripper_head_acts_the_class_it_predicts_from_the_observed_fingers():
  """The fingers of every chunk step get the action that commands the predicted class (0 or
  GRIPPER_OPEN) from the observed fingers; the continuous head keeps the arm dims; the
  likelihood is the arm's marginal density + the log-probability of the class the label commands."""
  lib, nets, _ = _gripper_networks(chunk=2)
  params = nets.policy.init(jax.random.PRNGKey(0))
  inputs = np.random.default_rng(0).normal(size=(6, nets.input_dim)).astype(np.float32)
  inputs[:, kitchen.FINGERS] = np.array([0.04, 0.03, 0.01, 0.0, 0.02, 0.035])[:, None]
  output = nets.policy.apply(params, inputs)
  rest, logit, fingers = output[:-2], output[-2], output[-1]
  np.testing.assert_array_equal(fingers, inputs[:, kitchen.FINGERS])
  action = np.asarray(nets.mean(output))
  target = np.where(np.asarray(logit) > 0, 0.0, kitchen.GRIPPER_OPEN)[:, None]
  expected = np.clip((target - inputs[:, kitchen.FINGERS]) / kitchen.ACTION_SCALE_DT, -1, 1)
  for j in range(2):
    np.testing.assert_allclose(action[:, j * 9 + 7: j * 9 + 9], expected, atol=1e-6)
  arm = [c for c in range(18) if c % 9 < 7]
  rest_mode = np.asarray(jax.jit(lambda o: nets.mean(o))(output))
  np.testing.assert_allclose(rest_mode[:, arm], action[:, arm])
  # Labels: the first step commands the closed hand exactly when fingers + 0.16 * a < 0.02.
  label = np.asarray(action).copy()
  label[:, 7:9] = (np.array([0, 0.04, 0, 0.04, 0, 0.04])[:, None] - inputs[:, kitchen.FINGERS]) / 0.16
  closes = np.array([True, False, True, False, True, False])
  np.testing.assert_array_equal(lib.gripper_closes(label[:, 7], inputs[:, 7]), closes)
  lp = np.asarray(nets.log_prob(output, jnp.asarray(label)))
  grip = np.where(closes, jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit))
  label_arm_only = label.copy()
  label_arm_only[:, [7, 8, 16, 17]] = np.nan
  from relay_agents.gcbc import networks as gcbc_networks
  plain = gcbc_networks.make_networks(nets.input_dim, 18, GoalBCConfig(hidden_sizes=(16,), action_chunk=2,
                                      execute_steps=1, end_effector=False), nets.normalization)
  arm_lp = np.asarray(plain.marginal_log_prob(rest, jnp.asarray(label_arm_only)))
  np.testing.assert_allclose(lp, arm_lp + grip, rtol=1e-5)
  # Behaviour cloning weighs the two classes equally: here 3 closes and 3 opens, weight 1 each.
  np.testing.assert_allclose(nets.bc_log_prob(output, jnp.asarray(label)), lp, rtol=1e-5)
  assert nets.marginal_log_prob is None


def test_gripper_head_learns_rare_closings_with_the_bc_learner():
  """Through Acme's BC learner, the balanced head learns a close that is 5 % of the examples (a
  threshold on one input), on both classes."""
  from acme import types
  from relay_agents.gcbc import learning as gcbc_learning
  _, nets, config = _gripper_networks(chunk=1)
  rng = np.random.default_rng(0)

  def batches():
    while True:
      x = rng.normal(size=(64, nets.input_dim)).astype(np.float32)
      x[:, kitchen.FINGERS] = kitchen.GRIPPER_OPEN
      closes = x[:, 20] > 1.645  # ~5 %
      a = rng.normal(size=(64, 9)).astype(np.float32) * 0.1
      a[:, 7:9] = np.where(closes, -kitchen.GRIPPER_OPEN, 0.0)[:, None] / kitchen.ACTION_SCALE_DT
      yield types.Transition(x, a, np.zeros(64, np.float32), np.zeros(64, np.float32), x)

  learner = gcbc_learning.make_learner(nets, batches(), dataclasses.replace(config, learning_rate=3e-3),
                                       jax.random.PRNGKey(0))
  for _ in range(400):
    learner.step()
  params = gcbc_learning.params_of(learner)
  x = rng.normal(size=(2000, nets.input_dim)).astype(np.float32)
  x[:, kitchen.FINGERS] = kitchen.GRIPPER_OPEN
  truth = x[:, 20] > 1.645
  closed = np.asarray(nets.mean(nets.policy.apply(params, x)))[:, 7] < -0.1
  assert truth.sum() >= 20 and closed[truth].mean() > 0.85 and (~closed[~truth]).mean() > 0.85


def test_gripper_head_ril_trains_acts_and_is_checked(datasets, kitchen_play_tiny, tmp_path, cli):
  """`--gripper-head` through the real pipeline: the RIL low level gets it (the high level, which
  predicts subgoals, does not), the actor acts in the kitchen with finger actions that command
  open or closed; non-kitchen data and finetuning refuse it with one line."""
  out = str(tmp_path / "grip")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", out,
      "--action-chunk", "3", "--hidden", "16", "--steps", "20", "--batch-size", "16", "--gripper-head", check=True)
  configs = models.read_record(out).policy_configs
  assert configs["low"]["gripper_head"] is True and configs["high"]["gripper_head"] is False
  actor = models.make_actor(out)
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  result = evaluation.rollout(actor, goal, max_steps=6, seed=0)
  assert result.steps == 6
  obs, _ = kitchen.make_env(max_episode_steps=10).reset(seed=0)
  fingers = np.float32(obs["observation"][kitchen.FINGERS])
  action = actor.low_policy(obs["observation"].astype(np.float32), goal.goal_state, jax.random.PRNGKey(0))
  commanded = fingers + action[kitchen.FINGERS] * kitchen.ACTION_SCALE_DT
  assert np.allclose(commanded, 0.0, atol=1e-5) or np.allclose(commanded, kitchen.GRIPPER_OPEN, atol=1e-5)
  custom = {"low": {"spec": goal_space.custom_spec(4, 2).to_dict(), "path": "x"}}
  with pytest.raises(DataError, match="--gripper-head needs kitchen data"):
    train.check_kitchen_options(custom, GoalBCConfig(gripper_head=True))
  with pytest.raises(ValueError, match="gripper head is not supported"):
    policy_io.load_model(out)
  with pytest.raises(ValueError, match="gripper_head needs an action policy"):
    GoalBCConfig(target="subgoal", gripper_head=True)


def test_goal_delta_features_are_the_displacement_to_the_goal():
  """`goal_delta` appends g - s (the observation's goal-space dims) and ee(g) - ee(s), for both
  kitchen layouts; other widths and goal-free policies refuse it."""
  rng = np.random.default_rng(0)
  obs, goal = rng.normal(size=(4, kitchen.OBS_DIM)).astype(np.float32), rng.normal(size=(4, 30)).astype(np.float32)
  config = GoalBCConfig(end_effector=True, goal_delta=True)
  from relay_agents.gcbc import networks as gcbc_networks  # pylint: disable=import-outside-toplevel
  features = gcbc_networks.input_features(config, kitchen.OBS_DIM)(np.concatenate([obs, goal], -1))
  ee_s, ee_g = kinematics.kitchen_end_effector(obs[:, :9]), kinematics.kitchen_end_effector(goal[:, :9])
  base = kitchen.OBS_DIM + 30 + 6
  assert features.shape == (4, base + 30 + 3)
  np.testing.assert_allclose(features[:, base:base + 30], goal - kitchen.goal_state_from_observation(obs), atol=1e-6)
  np.testing.assert_allclose(features[:, base + 30:], ee_g - ee_s, atol=1e-5)
  jitted = jax.jit(gcbc_networks.input_features(config, kitchen.OBS_DIM))(jnp.concatenate([obs, goal], -1))
  np.testing.assert_allclose(np.asarray(jitted), features, atol=1e-5)
  d4rl = gcbc_networks.input_features(GoalBCConfig(end_effector=False, goal_delta=True), 30)(
      np.concatenate([goal[::-1], goal], -1))
  np.testing.assert_allclose(d4rl[:, 60:], goal - goal[::-1])
  with pytest.raises(ValueError, match="no kitchen layout"):
    gcbc_networks.input_features(config, 12)
  with pytest.raises(ValueError, match="goal_delta needs a goal-conditioned policy"):
    GoalBCConfig(use_goal=False, goal_delta=True)


def test_velocities_off_leaves_the_observed_velocities_out():
  """`velocities=False`: the features keep the observation's positions (its goal-space dims) and
  the goal, so a policy's output does not move when only the velocities do, numpy and jitted
  alike; the 30-d layout (no velocities) is unchanged; other widths refuse it."""
  rng = np.random.default_rng(3)
  obs, goal = rng.normal(size=(5, kitchen.OBS_DIM)).astype(np.float32), rng.normal(size=(5, 30)).astype(np.float32)
  from relay_agents.gcbc import networks as gcbc_networks  # pylint: disable=import-outside-toplevel
  config = GoalBCConfig(hidden_sizes=(8,), end_effector=True, velocities=False)
  features = gcbc_networks.input_features(config, kitchen.OBS_DIM)
  x = features(np.concatenate([obs, goal], -1))
  assert x.shape == (5, 30 + 30 + 6)
  np.testing.assert_array_equal(x[:, :30], kitchen.goal_state_from_observation(obs))
  np.testing.assert_array_equal(x[:, 30:60], goal)
  np.testing.assert_allclose(x[:, 60:63], kinematics.kitchen_end_effector(obs[:, :9]), atol=1e-6)
  moving = obs.copy()
  moving[:, 9:18] += 1.0    # robot joint velocities
  moving[:, 39:59] -= 2.0   # object velocities
  np.testing.assert_array_equal(features(np.concatenate([moving, goal], -1)), x)
  jitted = jax.jit(features)(jnp.concatenate([obs, goal], -1))
  np.testing.assert_allclose(np.asarray(jitted), x, atol=1e-5)
  norm = gcbc_networks.stats_from_examples(
      [{"observation": obs, "goal": goal, "action_chunk": rng.normal(size=(5, 90)).astype(np.float32)}], config)
  nets = gcbc_networks.make_networks(kitchen.OBS_DIM + 30, 90, config, norm, observation_dim=kitchen.OBS_DIM)
  params = nets.policy.init(jax.random.PRNGKey(0))
  act = lambda o: np.asarray(nets.mean(nets.policy.apply(params, jnp.asarray(np.concatenate([o, goal], -1)))))
  np.testing.assert_array_equal(act(moving), act(obs))
  assert not np.allclose(act(obs[::-1]), act(obs))  # the positions still matter
  d4rl = gcbc_networks.input_features(GoalBCConfig(end_effector=False, velocities=False), 30)
  np.testing.assert_array_equal(d4rl(np.concatenate([goal[::-1], goal], -1)), np.concatenate([goal[::-1], goal], -1))
  with pytest.raises(ValueError, match="no kitchen layout"):
    gcbc_networks.input_features(config, 12)
  assert "velocities" not in train._config_identity(GoalBCConfig())  # older models keep their train keys
  assert train._config_identity(config)["velocities"] is False


def test_velocities_off_trains_acts_and_is_checked(datasets, kitchen_play_tiny, tmp_path, cli):
  """`--velocities off` through the real pipeline: both RIL levels record it, their networks see
  30 positions instead of the 59-d observation, the actor acts in the kitchen; non-kitchen data
  refuses it with one line."""
  out = str(tmp_path / "novel")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", out,
      "--action-chunk", "3", "--hidden", "16", "--steps", "4", "--batch-size", "16", "--velocities", "off", check=True)
  configs = models.read_record(out).policy_configs
  assert configs["low"]["velocities"] is False and configs["high"]["velocities"] is False
  networks, _, _, _ = models.load_networks(os.path.join(out, "low"))
  assert networks.normalization.input_mean.shape == (30 + 30 + 6,)
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  assert evaluation.rollout(models.make_actor(out), goal, max_steps=6, seed=0).steps == 6
  bad = cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out",
            str(tmp_path / "b"), "--velocities", "sometimes")
  assert bad.returncode == 2 and "--velocities" in bad.stderr
  custom = {"low": {"spec": goal_space.custom_spec(4, 2).to_dict(), "path": "x"}}
  with pytest.raises(DataError, match="--velocities off needs kitchen data"):
    train.check_kitchen_options(custom, GoalBCConfig(velocities=False))


def test_goal_delta_trains_acts_and_is_checked(datasets, kitchen_play_tiny, tmp_path, cli):
  """`--goal-delta` through the real pipeline: both RIL levels get it and the actor acts in the
  kitchen; non-kitchen data refuses it with one line."""
  out = str(tmp_path / "delta")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", out,
      "--action-chunk", "3", "--hidden", "16", "--steps", "20", "--batch-size", "16", "--goal-delta", check=True)
  configs = models.read_record(out).policy_configs
  assert configs["low"]["goal_delta"] is True and configs["high"]["goal_delta"] is True
  assert configs["high"]["goal_elements"] is False  # auto stays off: the delta needs the raw goal
  networks, _, _, _ = models.load_networks(os.path.join(out, "low"))
  assert networks.normalization.input_mean.shape == (59 + 30 + 6 + 30 + 3,)  # the features are normalized too
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  result = evaluation.rollout(models.make_actor(out), goal, max_steps=6, seed=0)
  assert result.steps == 6
  custom = {"low": {"spec": goal_space.custom_spec(4, 2).to_dict(), "path": "x"}}
  with pytest.raises(DataError, match="--goal-delta needs kitchen data"):
    train.check_kitchen_options(custom, GoalBCConfig(goal_delta=True))


def test_goal_elements_features_are_the_completion_masks():
  """`goal_elements` replaces the goal's raw dims by its element completion mask and the state's
  (the env's own test), numpy and jitted alike: two goals that do the same elements give the same
  features, whatever their arm pose or other objects."""
  rng = np.random.default_rng(2)
  obs = rng.normal(size=(4, kitchen.OBS_DIM)).astype(np.float32)
  done_now = ["kettle"]
  obs_goal_space = kitchen.set_goal_state(kitchen.goal_state_from_observation(obs), done_now)
  obs[:, 0:9], obs[:, 18:39] = obs_goal_space[:, :9], obs_goal_space[:, 9:]
  wanted = ["microwave", "kettle", "light switch", "slide cabinet"]
  goal = kitchen.set_goal_state(rng.normal(size=(4, 30)).astype(np.float32), wanted)
  other = kitchen.set_goal_state(rng.normal(size=(4, 30)).astype(np.float32), wanted)
  other[:, kitchen.ELEMENT_QPOS["kettle"]] += 0.05  # still within the completion threshold
  from relay_agents.gcbc import networks as gcbc_networks  # pylint: disable=import-outside-toplevel
  config = GoalBCConfig(end_effector=True, goal_elements=True)
  features = gcbc_networks.input_features(config, kitchen.OBS_DIM)
  x = features(np.concatenate([obs, goal], -1))
  n = len(kitchen.ELEMENTS)
  assert x.shape == (4, kitchen.OBS_DIM + 2 * n + 3)
  np.testing.assert_array_equal(x[:, :kitchen.OBS_DIM], obs)
  expected_goal = np.array([e in wanted for e in kitchen.ELEMENTS], np.float32)
  goal_mask = x[:, kitchen.OBS_DIM:kitchen.OBS_DIM + n]
  state_mask = x[:, kitchen.OBS_DIM + n:kitchen.OBS_DIM + 2 * n]
  # Random dims may also land within an element's threshold; the set ones must be there.
  assert np.all(goal_mask[:, expected_goal == 1] == 1)
  np.testing.assert_array_equal(goal_mask, kitchen.completion_mask(goal).astype(np.float32))
  np.testing.assert_array_equal(state_mask, kitchen.completion_mask(obs_goal_space).astype(np.float32))
  assert np.all(state_mask[:, kitchen.ELEMENTS.index("kettle")] == 1)
  np.testing.assert_allclose(x[:, -3:], kinematics.kitchen_end_effector(obs[:, :9]), atol=1e-6)
  same = features(np.concatenate([obs, other], -1))
  np.testing.assert_array_equal(same[:, kitchen.OBS_DIM:kitchen.OBS_DIM + n] == goal_mask,
                                kitchen.completion_mask(other) == kitchen.completion_mask(goal))
  jitted = jax.jit(features)(jnp.concatenate([obs, goal], -1))
  np.testing.assert_allclose(np.asarray(jitted), x, atol=1e-5)
  with pytest.raises(ValueError, match="goal_elements needs a goal-conditioned policy"):
    GoalBCConfig(use_goal=False, goal_elements=True)
  with pytest.raises(ValueError, match="goal_delta"):
    GoalBCConfig(goal_elements=True, goal_delta=True)


def test_goal_elements_goes_to_the_ril_high_level_and_gcbc(datasets, kitchen_play_tiny, tmp_path, cli):
  """`--goal-elements` through the real pipeline: by default (auto) RIL's high level gets it and
  its low level keeps the full subgoal; `off` gives the paper's state goal; a GCBC policy gets it
  with `on` only and acts in the kitchen; BC and non-kitchen data refuse it."""
  out = str(tmp_path / "elements")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", out,
      "--action-chunk", "3", "--hidden", "16", "--steps", "20", "--batch-size", "16", check=True)
  configs = models.read_record(out).policy_configs
  assert configs["high"]["goal_elements"] is True and configs["low"]["goal_elements"] is False
  paper = str(tmp_path / "paper_goal")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", paper,
      "--action-chunk", "3", "--hidden", "16", "--steps", "2", "--batch-size", "16", "--goal-elements", "off",
      check=True)
  assert models.read_record(paper).policy_configs["high"]["goal_elements"] is False
  networks, _, _, _ = models.load_networks(os.path.join(out, "high"))
  assert networks.normalization.input_mean.shape == (59 + 2 * len(kitchen.ELEMENTS) + 3,)
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  actor = models.make_actor(out)
  assert evaluation.rollout(actor, goal, max_steps=6, seed=0).steps == 6
  assert actor.subgoal.shape == (30,) and np.all(np.isfinite(actor.subgoal))
  flat = str(tmp_path / "gcbc")
  cli("train-il", "--agent", "gcbc", "--data", datasets["flat_c3"], "--out", flat, "--action-chunk", "3",
      "--hidden", "16", "--steps", "20", "--batch-size", "16", "--goal-elements", "on", check=True)
  assert models.read_record(flat).policy_configs["policy"]["goal_elements"] is True
  assert evaluation.rollout(models.make_actor(flat), goal, max_steps=6, seed=0).steps == 6
  bad = cli("train-il", "--agent", "bc", "--data", datasets["low"], "--out", str(tmp_path / "b"), "--goal-elements", "on")
  assert bad.returncode == 2 and "bc has no goal" in bad.stderr
  assert not os.path.exists(tmp_path / "b" / "agent.json")
  custom = {"high": {"spec": goal_space.custom_spec(4, 2).to_dict(), "path": "x"}}
  with pytest.raises(DataError, match="--goal-elements needs kitchen data"):
    train.check_kitchen_options(custom, GoalBCConfig(goal_elements=True))


def test_subgoal_residual_predicts_a_displacement_from_the_state():
  """With `subgoal_residual` the high level's subgoal is s + a residual: with the mean layer
  zeroed, every component's mean is the observation's goal-space state + the residuals' mean, and
  the likelihood is scored on the absolute subgoal. Action policies refuse it."""
  rng = np.random.default_rng(1)
  obs = rng.normal(size=(64, kitchen.OBS_DIM)).astype(np.float32)
  goal = rng.normal(size=(64, 30)).astype(np.float32)
  subgoal = kitchen.goal_state_from_observation(obs) + 0.1 * rng.normal(size=(64, 30)).astype(np.float32)
  from relay_agents.gcbc import networks as gcbc_networks  # pylint: disable=import-outside-toplevel
  config = GoalBCConfig(target="subgoal", hidden_sizes=(8,), end_effector=False, subgoal_residual=True)
  norm = gcbc_networks.stats_from_examples([{"observation": obs, "goal": goal, "subgoal": subgoal}], config)
  residual = subgoal - kitchen.goal_state_from_observation(obs)
  np.testing.assert_allclose(norm.output_mean, residual.mean(0), atol=1e-5)
  nets = gcbc_networks.make_networks(kitchen.OBS_DIM + 30, 30, config, norm, observation_dim=kitchen.OBS_DIM)
  params = nets.policy.init(jax.random.PRNGKey(0))
  params = {k: ({n: jnp.zeros_like(v) for n, v in p.items()} if k.endswith("mean") else p) for k, p in params.items()}
  inputs = jnp.asarray(np.concatenate([obs, goal], -1))
  output = nets.policy.apply(params, inputs)
  expected = kitchen.goal_state_from_observation(obs) + norm.output_mean
  np.testing.assert_allclose(np.asarray(nets.mean(output)), expected, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(nets.log_prob(output, jnp.asarray(subgoal)))))
  with pytest.raises(ValueError, match="needs a subgoal-predicting policy"):
    gcbc_networks.make_networks(kitchen.OBS_DIM + 30, 9, GoalBCConfig(subgoal_residual=True, end_effector=False),
                                norm, observation_dim=kitchen.OBS_DIM)


def test_subgoal_residual_goes_to_the_ril_high_level_only(datasets, kitchen_play_tiny, tmp_path, cli):
  out = str(tmp_path / "res")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", out,
      "--action-chunk", "3", "--hidden", "16", "--steps", "20", "--batch-size", "16", "--subgoal-residual", check=True)
  configs = models.read_record(out).policy_configs
  assert configs["high"]["subgoal_residual"] is True and configs["low"]["subgoal_residual"] is False
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  actor = models.make_actor(out)
  assert evaluation.rollout(actor, goal, max_steps=6, seed=0).steps == 6
  assert actor.subgoal.shape == (30,) and np.all(np.isfinite(actor.subgoal))
  bad = cli("train-il", "--agent", "gcbc", "--data", datasets["low"], "--out", str(tmp_path / "g"),
            "--subgoal-residual")
  assert bad.returncode == 2 and "applies to the ril high level" in bad.stderr
  assert not os.path.exists(tmp_path / "g" / "agent.json")


def test_goal_delta_and_subgoal_residual_models_are_finetuned_on_both_levels(datasets, tmp_path, cli):
  """`relay finetune --finetune both` on a RIL model trained with both options: each level takes a
  KL-bounded NPG step (its analytic KL bound at the target, as for the plain networks), both
  levels change, and the finetuned model keeps its options and acts in the kitchen."""
  src = str(tmp_path / "opts")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", src,
      "--action-chunk", "3", "--hidden", "16", "--steps", "20", "--batch-size", "16", "--goal-delta",
      "--subgoal-residual", check=True)
  run = str(tmp_path / "run")
  cli("finetune", "--model", src, "--goal", "microwave,kettle", "--variant", "dapg", "--finetune", "both",
      "--env-steps", "24", "--episodes-per-iteration", "2", "--max-episode-steps", "6", "--out", run,
      "--no-progress", check=True)
  with open(os.path.join(run, "log.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 2
  for record in records:
    for level in ("low", "high"):
      assert record[f"{level}/quadratic_kl"] == pytest.approx(0.01, rel=1e-3)
      assert record[f"{level}/kl_bound"] == pytest.approx(0.01, rel=0.3)
      assert np.isfinite(record[f"{level}/surrogate_after"])
  original, finetuned = policy_io.load_model(src), policy_io.load_model(os.path.join(run, "model"))
  for level in ("low", "high"):
    before = jax.tree_util.tree_leaves(original.levels[level].params)
    after = jax.tree_util.tree_leaves(finetuned.levels[level].params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), level
  configs = models.read_record(os.path.join(run, "model")).policy_configs
  assert configs["high"]["subgoal_residual"] and configs["high"]["goal_delta"] and configs["low"]["goal_delta"]
  environment = ft_env.GoalKitchenEnv(["microwave", "kettle"], max_episode_steps=6)
  assert ft_acting.run_episode(environment, ft_acting.fixed_actor(finetuned), 0, seed=0)["steps"] == 6


def test_goal_noise_perturbs_the_arm_joints_of_goals_only():
  """`with_goal_noise` adds N(0, std^2) to the goal's 7 arm joints and nothing else, in the graph
  (tf.random.normal, as the Reverb feed applies it) and in numpy; std 0 is the identity."""
  goal = np.random.default_rng(0).normal(size=(4000, 30)).astype(np.float32)
  batch = {"goal": goal, "observation": np.zeros((4000, 59), np.float32)}
  rng = np.random.default_rng(1)
  for noisy in (gcbc_data.with_goal_noise({**batch, "goal": tf.constant(goal)}, 0.1, tf.random.normal),
                gcbc_data.with_goal_noise(batch, 0.1, lambda shape: rng.standard_normal(shape, np.float32))):
    delta = np.asarray(noisy["goal"]) - goal
    np.testing.assert_array_equal(delta[:, 7:], 0.0)
    np.testing.assert_allclose(delta[:, :7].std(0), 0.1, rtol=0.1)
    assert abs(delta[:, :7].mean()) < 0.01 and noisy["observation"] is batch["observation"]
  assert gcbc_data.with_goal_noise(batch, 0.0, None) is batch
  with pytest.raises(ValueError, match="goal_noise applies to goal-conditioned action policies"):
    GoalBCConfig(use_goal=False, goal_noise=0.1)
  with pytest.raises(ValueError, match="goal_noise must be >= 0"):
    GoalBCConfig(goal_noise=-1.0)


def test_goal_noise_reaches_the_ril_low_level_through_reverb(datasets, kitchen_play_tiny, tmp_path, cli):
  """Batches a learner draws from a real Reverb table carry the noise on the goal's arm joints
  only; `relay train-il --goal-noise` gives it to the RIL low level (its high level's goal is the
  task's), the model acts in the kitchen, and a goal-less BC refuses the flag."""
  config = GoalBCConfig(batch_size=256, action_chunk=1, goal_noise=100.0)
  dims = replay.ExampleDims.of(datasets["low"])
  server = reverb.Server([replay.make_table(config.table_name, dims.dims, 100_000, config.examples_per_item)])
  try:
    address = f"localhost:{server.port}"
    replay.feed(address, config.table_name, relabeled.load(datasets["low"]), dims.keys, config.examples_per_item,
                progress=False)
    goals = next(gcbc_data.reverb_iterator(address, config)).observation[:, kitchen.OBS_DIM:]
  finally:
    server.stop()
  fed = relabeled.read_arrays(datasets["low"])["goal"]
  assert goals.shape == (256, 30) and np.all(goals[:, :7].std(0) > 50)  # the arm: noise of std 100
  assert np.all(goals[:, 7:].std(0) <= fed[:, 7:].std(0) * 1.5 + 1e-6)  # the rest: as fed

  out = str(tmp_path / "noisy")
  cli("train-il", "--agent", "ril", "--low", datasets["low_c3"], "--high", datasets["high"], "--out", out,
      "--action-chunk", "3", "--hidden", "16", "--steps", "20", "--batch-size", "16", "--goal-noise", "0.1",
      check=True)
  configs = models.read_record(out).policy_configs
  assert configs["low"]["goal_noise"] == 0.1 and configs["high"]["goal_noise"] == 0.0
  goal = evaluation.goal_sets(kitchen_play_tiny, num_frequent=1, include_heldout=False)[0]
  assert evaluation.rollout(models.make_actor(out), goal, max_steps=6, seed=0).steps == 6
  bad = cli("train-il", "--agent", "bc", "--data", datasets["low"], "--out", str(tmp_path / "b"), "--goal-noise", "0.1")
  assert bad.returncode == 2 and "bc has no goal" in bad.stderr
  assert not os.path.exists(tmp_path / "b" / "agent.json")


def test_cosine_learning_rate_decays_to_zero_and_is_part_of_the_weights_identity(datasets, tmp_path, cli):
  """`--lr-decay cosine` (the default): Adam's step shrinks along a cosine to nothing at --steps; the schedule
  (its length included) is part of the training's identity, so other --steps do not resume it."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  optimizer = GoalBCConfig(learning_rate=0.1, lr_decay_steps=10).optimizer()
  params = {"w": jnp.zeros(3)}
  state = optimizer.init(params)
  sizes = []
  for _ in range(12):
    updates, state = optimizer.update({"w": jnp.ones(3)}, state, params)
    sizes.append(float(jnp.abs(updates["w"][0])))
  assert sizes[0] == pytest.approx(0.1, rel=1e-3)  # Adam's first step is the learning rate
  assert sizes[5] == pytest.approx(0.05, rel=1e-2)  # halfway: half the rate
  assert all(a > b for a, b in zip(sizes[:10], sizes[1:10])) and sizes[10] == sizes[11] == 0.0
  out = str(tmp_path / "cos")
  common = ("train-il", "--agent", "ril", "--low", datasets["low"], "--high", datasets["high"], "--hidden", "8",
            "--batch-size", "8", "--action-chunk", "1")
  args = common + ("--out", out, "--lr-decay", "cosine")
  cli(*args, "--steps", "4", check=True)
  configs = models.read_record(out).policy_configs
  assert configs["low"]["lr_decay_steps"] == configs["high"]["lr_decay_steps"] == 4
  longer = cli(*args, "--steps", "6")
  assert longer.returncode != 0 and "--overwrite" in longer.stderr, longer.stderr[-1000:]
  constant = str(tmp_path / "constant")  # the rate of models trained before the schedule existed
  cli(*common, "--out", constant, "--steps", "4", "--lr-decay", "none", check=True)
  assert models.read_record(constant).policy_configs["low"]["lr_decay_steps"] is None
  bad = cli(*args, "--steps", "4", "--lr-decay", "linear")
  assert bad.returncode == 2 and "invalid choice: 'linear'" in bad.stderr


def test_weight_decay_shrinks_weights_alongside_the_schedule_and_is_recorded(datasets, tmp_path, cli):
  """`--weight-decay W`: AdamW, each step shrinks every weight by the (scheduled) rate x W even where
  the gradient is zero; 0 is Adam as before. Recorded in the model, part of the weights' identity,
  refused when negative or not a number."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  for steps in (None, 10):
    optimizer = GoalBCConfig(learning_rate=0.1, weight_decay=0.5, lr_decay_steps=steps).optimizer()
    params = {"w": jnp.full(3, 2.0)}
    state = optimizer.init(params)
    updates, state = optimizer.update({"w": jnp.zeros(3)}, state, params)
    assert float(updates["w"][0]) == pytest.approx(-0.1 * 0.5 * 2.0, rel=1e-5)  # rate x W x weight
  plain = GoalBCConfig(learning_rate=0.1).optimizer()
  updates, _ = plain.update({"w": jnp.zeros(3)}, plain.init({"w": jnp.full(3, 2.0)}), {"w": jnp.full(3, 2.0)})
  assert float(jnp.abs(updates["w"]).max()) == 0.0  # no decay by default
  for bad in (-0.1, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="weight_decay"):
      GoalBCConfig(weight_decay=bad)

  common = ("train-il", "--agent", "ril", "--low", datasets["low"], "--high", datasets["high"], "--hidden", "8",
            "--batch-size", "8", "--action-chunk", "1", "--steps", "4")
  out = str(tmp_path / "wd")
  cli(*common, "--out", out, "--weight-decay", "0.05", check=True)
  configs = models.read_record(out).policy_configs
  assert configs["low"]["weight_decay"] == configs["high"]["weight_decay"] == 0.05
  other = cli(*common, "--out", out, "--weight-decay", "0.1")
  assert other.returncode != 0 and "--overwrite" in other.stderr, other.stderr[-1000:]
  refused = cli(*common, "--out", str(tmp_path / "neg"), "--weight-decay", "-1")
  assert refused.returncode == 2 and "weight_decay must be" in refused.stderr
  assert not os.path.exists(tmp_path / "neg" / "agent.json")
