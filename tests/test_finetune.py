"""RL finetuning on real components: MuJoCo kitchen, a Reverb server on localhost, actor processes.

The model finetuned is a tiny relay-IL agent trained in seconds on the 2-episode kitchen play
dataset (as tests/test_agents.py trains its own); a second one is trained on the same play data in
the 30-d D4RL layout, so finetuning must map the environment's 59-d observation to it.
"""
import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import reverb

from relay_agents import models
from relay_agents.finetune import acting, builder as builder_lib, env as env_lib, learning, npg
from relay_agents.finetune import policy_io, rewards, run as run_lib
from relay_agents.finetune.config import FinetuneConfig
from relay_agents.gcbc import networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import goal_space, kitchen, relabeled, rlds_io
from relay_data.errors import DataError
from tests.helpers import WINDOW, train_tiny_ril

GOAL = ["microwave", "kettle", "light switch", "slide cabinet"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ril_model(tiny_ril_model):
  return tiny_ril_model


@pytest.fixture(scope="module")
def d4rl_model(kitchen_play_tiny, tmp_path_factory):
  """A ril model trained on the play data in the 30-d D4RL layout (robot + object positions)."""
  root = tmp_path_factory.mktemp("finetune_d4rl")
  layout = goal_space.kitchen_spec(30).observation
  play = goal_space.provenance_of_episode_dataset(kitchen_play_tiny)
  episodes = [{"observation": layout.from_env(ep["observation"]), "goal_state": ep["goal_state"],
               "action": ep["action"], "episode_id": f"e{i}"}
              for i, ep in enumerate(rlds_io.iter_episodes(kitchen_play_tiny))]
  data = rlds_io.write_episodes(episodes, "play30", str(root), progress=False,
                                metadata={"spec": goal_space.kitchen_spec(30).to_dict(),
                                          "env_settings": play["env_settings"]})
  return train_tiny_ril(data, root)


def _demo_goal_states(play_dir):
  return [ep["goal_state"] for ep in rlds_io.iter_episodes(play_dir)]


# --- rewards --------------------------------------------------------------------------------------

def test_sparse_reward_fires_on_demo_windows_and_not_on_random_states(kitchen_play_tiny):
  g = np.concatenate([s for s in _demo_goal_states(kitchen_play_tiny)])
  w = 10
  eps = rewards.calibrate_eps(g[:-w], g[w:], quantile=0.25)
  assert eps > 0
  starts = np.arange(0, len(g) - w, 7)
  fired_in_window, fired_at_start = [], []
  for t in starts:
    subgoal = g[t + w]
    trace = rewards.sparse(g[t + 1:t + w + 1], np.broadcast_to(subgoal, (w, 30)), eps)
    fired_in_window.append(trace.max())
    fired_at_start.append(rewards.sparse(g[t], subgoal, eps))
  assert np.all(np.array(fired_in_window) == 1.0)   # every demo window reaches its subgoal
  assert np.mean(fired_at_start) < 0.5               # ... and standing still mostly does not
  rng = np.random.default_rng(0)
  lo, hi = g.min(0), g.max(0)
  random_states = rng.uniform(lo, hi, size=(500, 30)).astype(np.float32)
  subgoals = g[rng.integers(0, len(g), 500)]
  assert rewards.sparse(random_states, subgoals, eps).sum() == 0
  # The other two rewards rank the reached subgoal best.
  assert rewards.euclidean(subgoals, subgoals).max() == 0 > rewards.euclidean(random_states, subgoals).max()
  assert np.all(rewards.element_wise(subgoals, subgoals, eps) == 1.0)
  assert rewards.element_wise(random_states, subgoals, eps).mean() < 1.0


def test_eps_calibration_rejects_bad_input():
  with pytest.raises(ValueError, match="non-empty"):
    rewards.calibrate_eps(np.zeros((0, 30)), np.zeros((0, 30)))
  bad = np.zeros((4, 30), np.float32)
  bad[1, 3] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    rewards.calibrate_eps(bad, np.ones((4, 30)))
  with pytest.raises(ValueError, match="30 dims"):
    rewards.calibrate_eps(np.zeros((4, 29)), np.zeros((4, 29)))
  with pytest.raises(ValueError, match="at all"):
    rewards.calibrate_eps(np.zeros((4, 30)), np.zeros((4, 30)))


def test_goal_env_is_a_dm_env_with_task_progress_reward():
  env = env_lib.GoalKitchenEnv(GOAL, max_episode_steps=6, seed=3)
  assert np.all(kitchen.completion_mask(env.goal_state, GOAL))
  ts = env.reset()
  assert ts.first() and ts.observation["observation"].shape == (59,)
  first_obs = ts.observation["observation"].copy()
  steps = 0
  while not ts.last():
    ts = env.step(np.zeros(9))
    steps += 1
    assert ts.reward == 0.0 and ts.discount.dtype == np.float32
  assert steps == 6 and ts.discount == 1.0  # truncated at the horizon: not a termination
  env.episode_index = 0
  np.testing.assert_array_equal(env.reset().observation["observation"], first_obs)  # episode 0 again
  with pytest.raises(ValueError, match="unknown: oven"):
    env_lib.parse_goal("microwave,oven")


# --- the NPG step -----------------------------------------------------------------------------------

def _on_policy_batch(networks, params, inputs, seed=0):
  rng = np.random.default_rng(seed)
  actions = np.asarray(networks.sample(networks.policy.apply(params, inputs), jax.random.PRNGKey(seed)))
  return {"inputs": inputs, "actions": actions, "advantages": rng.normal(size=len(inputs)).astype(np.float32),
          "mask": np.ones(len(inputs), np.float32)}


def test_npg_step_keeps_the_kl_at_its_bound(ril_model):
  model = policy_io.load_model(ril_model)
  low = model.levels["low"]
  examples = next(relabeled.load(low.source).batch(512).as_numpy_iterator())
  inputs = np.concatenate([examples["observation"], examples["goal"]], -1)
  no_demo = {"inputs": inputs[:1], "actions": examples["action"][:1]}
  # The trained mixture head: the step's quadratic estimate of the KL bound equals delta, the bound
  # itself lands on it, and the true KL (Monte Carlo, many samples) is within it.
  for delta in (0.01, 0.003):
    update = npg.make_npg_update(low.networks, "mixture", delta, fisher_samples=64)
    new, stats = update(low.params, _on_policy_batch(low.networks, low.params, inputs), no_demo, 0.0,
                        jax.random.PRNGKey(1))
    assert float(stats.quadratic_kl) == pytest.approx(delta, rel=1e-3)
    assert float(stats.kl_bound) == pytest.approx(delta, rel=0.2)
    assert float(stats.kl) < 1.3 * delta
    assert float(stats.surrogate_after) > float(stats.surrogate_before)
    assert float(stats.cg_solved) == pytest.approx(1.0, abs=0.1)  # x = F^-1 g, not a stray direction
  # A Gaussian head: the KL is analytic and lands on the bound.
  config = GoalBCConfig(action_chunk=1, hidden_sizes=(32, 32), head="gaussian")
  nets = gcbc_networks.make_networks(inputs.shape[1], 9, config,
                                     gcbc_networks.Normalization.from_arrays(inputs, examples["action"]))
  params = nets.policy.init(jax.random.PRNGKey(0))
  update = npg.make_npg_update(nets, "gaussian", 0.01)
  _, stats = update(params, _on_policy_batch(nets, params, inputs), no_demo, 0.0, jax.random.PRNGKey(1))
  assert float(stats.kl) == pytest.approx(0.01, rel=0.1)


def test_dapg_term_pulls_the_policy_toward_demo_actions():
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(256, 6)).astype(np.float32)
  demo_actions = np.tanh(inputs[:, :2]).astype(np.float32)
  config = GoalBCConfig(action_chunk=1, hidden_sizes=(32, 32), head="gaussian")
  nets = gcbc_networks.make_networks(6, 2, config, gcbc_networks.Normalization.from_arrays(inputs, demo_actions))
  params = nets.policy.init(jax.random.PRNGKey(0))
  on = _on_policy_batch(nets, params, inputs)
  on["advantages"] = np.zeros_like(on["advantages"])  # no task signal: only the demo term acts
  demo = {"inputs": inputs, "actions": demo_actions}
  update = npg.make_npg_update(nets, "gaussian", 0.05)
  error = lambda p: float(np.abs(np.asarray(nets.mean(nets.policy.apply(p, inputs))) - demo_actions).mean())
  unchanged, _ = update(params, on, demo, 0.0, jax.random.PRNGKey(1))   # lambda = 0: nothing moves
  assert error(unchanged) == pytest.approx(error(params))
  p, errors, log_probs = params, [error(params)], []
  for i in range(6):
    p, stats = update(p, on, demo, 1.0, jax.random.PRNGKey(i))
    errors.append(error(p))
    log_probs.append((float(stats.demo_log_prob_before), float(stats.demo_log_prob_after)))
  assert all(after > before for before, after in log_probs)
  assert errors[-1] < 0.7 * errors[0]


def test_npg_steps_improve_the_return_of_a_contextual_bandit():
  """The policy-gradient sign and the natural step end to end: reward -||a - tanh(x)||^2."""
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(512, 4)).astype(np.float32)
  best = np.tanh(inputs[:, :2])
  for head in ("gaussian", "mixture"):
    config = GoalBCConfig(action_chunk=1, hidden_sizes=(32, 32), head=head, num_components=3)
    nets = gcbc_networks.make_networks(4, 2, config, gcbc_networks.Normalization.from_arrays(inputs, best))
    params = nets.policy.init(jax.random.PRNGKey(0))
    update = npg.make_npg_update(nets, head, 0.05)
    no_demo = {"inputs": inputs[:1], "actions": best[:1]}
    returns = []
    for i in range(15):
      actions = np.asarray(nets.sample(nets.policy.apply(params, inputs), jax.random.PRNGKey(100 + i)))
      reward = -np.sum((actions - best) ** 2, -1)
      returns.append(reward.mean())
      on = {"inputs": inputs, "actions": actions, "advantages": npg.normalize(reward - reward.mean(), np.ones(512)),
            "mask": np.ones(512, np.float32)}
      params, _ = update(params, on, no_demo, 0.0, jax.random.PRNGKey(i))
    assert np.mean(returns[-3:]) > 0.35 * np.mean(returns[:3]), (head, returns)  # returns are negative


def test_gae_and_segments():
  rewards_ = np.array([[0, 0, 1, 0, 0, 1]], np.float32)
  done = np.array([[0, 0, 1, 0, 0, 1]], np.float32)
  zeros = np.zeros_like(rewards_)
  adv, targets = npg.gae(rewards_, zeros, zeros, done, np.ones_like(rewards_), gamma=0.5, lam=1.0)
  # Returns do not leak across a segment end: each window discounts its own reward.
  np.testing.assert_allclose(adv[0], [0.25, 0.5, 1.0, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(targets, adv)


def test_semi_mdp_gae_discounts_each_decision_by_its_length():
  # Two decisions of 3 steps each with gamma 0.5: the second's value reaches the first at 0.5**3.
  rewards_ = np.array([[0.0, 1.0]], np.float32)
  zeros = np.zeros_like(rewards_)
  discount = np.array([[0.125, 0.125]], np.float32)
  adv, _ = npg.gae(rewards_, zeros, zeros, np.array([[0, 1]], np.float32), np.ones_like(rewards_), discount, 1.0)
  np.testing.assert_allclose(adv[0], [0.125, 1.0])


def test_marginal_log_prob_scores_only_the_executed_dims():
  """NaN dims are integrated out: equal to the log-density of a head restricted to the other dims
  (both heads are diagonal), and equal to log_prob on full rows."""
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(16, 5)).astype(np.float32)
  targets = rng.normal(size=(16, 6)).astype(np.float32)
  seen = np.zeros(6, bool)
  seen[:4] = True  # the first 2 of 3 two-dim actions executed
  partial = np.where(seen, targets, np.nan).astype(np.float32)
  for head in ("gaussian", "mixture"):
    config = GoalBCConfig(action_chunk=3, hidden_sizes=(16,), head=head, num_components=3)
    nets = gcbc_networks.make_networks(5, 6, config, gcbc_networks.Normalization.from_arrays(inputs, targets))
    out = nets.policy.apply(nets.policy.init(jax.random.PRNGKey(0)), inputs)
    np.testing.assert_allclose(nets.marginal_log_prob(out, targets), nets.log_prob(out, targets), rtol=1e-6)
    restricted = tuple(x[..., :4] if i >= len(out) - 2 else x for i, x in enumerate(out))  # means, log_stds
    np.testing.assert_allclose(nets.marginal_log_prob(out, partial), nets.log_prob(restricted, targets[:, :4]),
                               rtol=1e-5)
    grads = jax.grad(lambda o: nets.marginal_log_prob(o, partial).sum())(out)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_exploration_settings_narrow_the_sampled_policy_and_score_what_they_sample(ril_model):
  """`with_exploration` scales every std and sharpens the component weights; sample, log_prob
  and the likeliest mode all describe that one narrowed distribution, and finetuning loads it."""
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(4, 5)).astype(np.float32)
  targets = rng.normal(size=(64, 3)).astype(np.float32)
  config = GoalBCConfig(action_chunk=1, hidden_sizes=(16,), head="mixture", num_components=3)
  base = gcbc_networks.make_networks(5, 3, config, gcbc_networks.Normalization.from_arrays(
      rng.normal(size=(64, 5)).astype(np.float32), targets))
  params = base.policy.init(jax.random.PRNGKey(0))
  narrow = gcbc_networks.with_exploration(base, std_scale=0.25, temperature=0.5)
  assert gcbc_networks.with_exploration(base) is base
  out, out_n = base.policy.apply(params, inputs), narrow.policy.apply(params, inputs)
  np.testing.assert_allclose(out_n[0], out[0] / 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.exp(out_n[2]), 0.25 * np.exp(out[2]), rtol=1e-5)
  np.testing.assert_array_equal(narrow.mean(out_n), base.mean(out))  # deterministic acting unchanged
  # log_prob is the narrowed mixture's density, written out here in numpy.
  action = np.asarray(narrow.sample(out_n, jax.random.PRNGKey(3)))
  logits, means, stds = np.asarray(out[0]) / 0.5, np.asarray(out[1]), 0.25 * np.exp(np.asarray(out[2]))
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  dens = np.prod(np.exp(-0.5 * ((action[:, None] - means) / stds) ** 2) / (np.sqrt(2 * np.pi) * stds), -1)
  np.testing.assert_allclose(narrow.log_prob(out_n, action), np.log((weights * dens).sum(-1)), rtol=1e-4)
  # Samples: with the components nearly fixed (temperature -> 0), they spread a quarter as far.
  sharp = gcbc_networks.with_exploration(base, std_scale=0.25, temperature=1e-3)
  keys = jax.random.split(jax.random.PRNGKey(4), 2000)
  spread = lambda nets: float(np.std(np.stack([nets.sample(nets.policy.apply(params, inputs), k) for k in keys[:1000]])
                                     - np.asarray(nets.mean(nets.policy.apply(params, inputs)))))
  top = gcbc_networks.with_exploration(base, std_scale=1.0, temperature=1e-3)
  assert spread(sharp) == pytest.approx(0.25 * spread(top), rel=0.1)
  with pytest.raises(ValueError, match="must be positive"):
    gcbc_networks.with_exploration(base, std_scale=0.0)
  with pytest.raises(ValueError, match="explore_std must be positive"):
    FinetuneConfig(explore_std=-1.0)
  # Finetuning loads the model's levels with the settings (the actors sample from them).
  low, low_n = (policy_io.load_model(ril_model, *s).levels["low"] for s in ((1.0, 1.0), (0.5, 0.2)))
  x = np.zeros((1, low.networks.input_dim), np.float32)
  plain, narrowed = low.networks.policy.apply(low.params, x), low_n.networks.policy.apply(low.params, x)
  np.testing.assert_allclose(np.exp(narrowed[-1]), 0.5 * np.exp(plain[-1]), rtol=1e-5)


def test_chunked_transitions_are_decisions_of_the_executed_actions():
  """semi_mdp.to_decisions against a literal walk of the actor's schedule: segments of 7 steps
  (W_l), chunks of k = 4 executing m = 3, an episode that ends mid-decision."""
  from relay_agents.finetune import semi_mdp
  horizon, segment, m, k, d, gamma = 16, 7, 3, 4, 2, 0.9
  rng = np.random.default_rng(0)
  mask = np.ones((2, horizon), np.float32)
  mask[1, 11:] = 0  # the second episode lasts 11 steps
  steps = {"inputs": rng.normal(size=(2, horizon, 3)).astype(np.float32),
           "actions": rng.normal(size=(2, horizon, d)).astype(np.float32),
           "rewards": rng.normal(size=(2, horizon)).astype(np.float32), "mask": mask,
           "elapsed": np.tile((np.arange(horizon) % segment) / segment, (2, 1)).astype(np.float32)}
  t = np.arange(horizon)
  steps["done"] = np.maximum(((t + 1) % segment == 0)[None] * mask, mask * (1 - np.concatenate(
      [mask[:, 1:], np.zeros((2, 1), np.float32)], 1)))
  out = semi_mdp.to_decisions(steps, segment, m, k, gamma)
  starts = [0, 3, 6, 7, 10, 13, 14]
  np.testing.assert_array_equal(semi_mdp.decision_starts(horizon, segment, m), starts)
  for b in range(2):
    for j, start in enumerate(starts):
      end = min(start + m, (start // segment + 1) * segment, horizon)
      live = [i for i in range(start, end) if mask[b, i]]
      expected = np.full(k * d, np.nan, np.float32)
      for n, i in enumerate(live):
        expected[n * d:(n + 1) * d] = steps["actions"][b, i]
      np.testing.assert_array_equal(out["actions"][b, j], expected)
      assert out["rewards"][b, j] == pytest.approx(sum(gamma ** n * steps["rewards"][b, i] for n, i in enumerate(live)))
      assert out["done"][b, j] == max([steps["done"][b, i] for i in live], default=0.0)
      assert out["discount"][b, j] == pytest.approx(gamma ** (end - start))
      assert out["mask"][b, j] == mask[b, start] and out["steps"][b, j] == len(live)
      np.testing.assert_array_equal(out["inputs"][b, j], steps["inputs"][b, start])
  assert out["done"][1, 4] == 1  # episode 2 ends inside the decision at step 10
  with pytest.raises(ValueError, match="execute_steps"):
    semi_mdp.to_decisions(steps, segment, 5, 4, gamma)


# --- Reverb: actors, IRIL ------------------------------------------------------------------------

def _server_for(config, model):
  builder = builder_lib.FinetuneBuilder(config, model)
  server = reverb.Server(builder.make_replay_tables())
  return builder, server, f"localhost:{server.port}"


def test_iril_inserts_relabeled_on_policy_episodes_into_the_demo_table(ril_model):
  model = policy_io.load_model(ril_model)
  config = FinetuneConfig(variant="iril", episodes_per_iteration=2, max_episode_steps=12, demo_batch_size=32,
                          demo_max_examples=32, iril_goals_per_step=3)
  builder, server, address = _server_for(config, model)
  try:
    keys = builder.demo_keys
    assert builder.feed_demos(address, model.levels["low"].source, progress=False) == 32
    client = reverb.Client(address)
    learner = builder.make_learner(jax.random.PRNGKey(0), client, 0.5, GOAL,
                                   demo_iterator=builder.make_demo_iterator(address),
                                   demo_inserter=builder.make_demo_inserter(address))
    actor = builder.make_actor(0, learner, builder.make_adder(client))
    env = env_lib.GoalKitchenEnv(GOAL, max_episode_steps=12)
    episodes = [acting.run_episode(env, actor, i, seed=0, record=True) for i in range(2)]
    before = client.server_info()[config.demo_table].current_size
    learner.step()
    inserted = learner.last["iril_inserted"]
    expected = sum(len(relabeled_rows(e["observations"])) for e in episodes)
    assert inserted == expected
    assert client.server_info()[config.demo_table].current_size == before + -(-inserted // builder.examples_per_item)
    seen = set()
    for sample in client.sample(config.demo_table, 300, emit_timesteps=False):  # items of 32 examples each
      seen.update(row.tobytes() for row in np.asarray(sample.data[keys.index("observation")]))
    for e in episodes:  # every on-policy state (but the last) is now a relabeled example
      assert all(row.tobytes() in seen for row in e["observations"][:-1].astype(np.float32))
  finally:
    server.stop()


class _FirstEpisodeSucceeds:
  """The actors' real adder, with the first episode's first len(GOAL) rewards set to 1: to the
  learner it completed the goal (the tiny model completes nothing in a few steps)."""

  def __init__(self, writer):
    self._writer, self._episode, self._t = writer, -1, 0

  def add_first(self, timestep):
    self._episode, self._t = self._episode + 1, 0
    self._writer.add_first(timestep)

  def add(self, action, next_timestep, extras=()):
    reward = np.float32(1.0 if self._episode == 0 and self._t < len(GOAL) else 0.0)
    self._t += 1
    self._writer.add(action, next_timestep._replace(reward=reward), extras)

  def reset(self, timeout_ms=None):
    self._writer.reset(timeout_ms)


def _filtered_learner(model, config, address):
  builder = builder_lib.FinetuneBuilder(config, model)
  assert builder.feed_demos(address, model.levels["low"].source, progress=False) == config.demo_max_examples
  client = reverb.Client(address)
  learner = builder.make_learner(jax.random.PRNGKey(0), client, 0.5, GOAL, demo_iterator=builder.make_demo_iterator(address))
  return builder, client, learner


def test_filtered_variant_imitates_the_decisions_of_successful_episodes_only(ril_model):
  from relay_agents.finetune import filtered  # pylint: disable=import-outside-toplevel
  model = policy_io.load_model(ril_model, explore_std=0.5)
  config = FinetuneConfig(variant="filtered", episodes_per_iteration=2, max_episode_steps=12, demo_batch_size=16,
                          demo_max_examples=32, bc_steps=30, bc_learning_rate=1e-3)
  builder, server, address = _server_for(config, model)
  try:
    builder, client, learner = _filtered_learner(model, config, address)
    env = env_lib.GoalKitchenEnv(GOAL, max_episode_steps=12)
    # No success yet: nothing is kept and nothing moves.
    actor = builder.make_actor(0, learner, builder.make_adder(client))
    for i in range(2):
      acting.run_episode(env, actor, i, seed=0)
    learner.step()
    assert learner.last["kept_episodes"] == 0 and learner.last["low/own_examples"] == 0
    assert "low/own_log_prob_last" not in learner.last
    unchanged = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                      jax.tree_util.tree_leaves(b)))
    assert unchanged(learner.get_variables(["low"])[0], model.levels["low"].params)
    # One of two episodes completes the goal: its decisions, and only they, are imitated.
    actor = builder.make_actor(0, learner, _FirstEpisodeSucceeds(builder.make_adder(client)))
    episodes = [acting.run_episode(env, actor, 10 + i, seed=0, record=True) for i in range(2)]
    learner.step()
    assert learner.last["kept_episodes"] == 1 and learner.last["success_rate"] == 0.5
    kept = learner.save()["kept"]["low"]
    assert kept["inputs"].shape[0] == learner.last["low/kept_decisions"] == episodes[0]["steps"] == 12
    obs = model.observation(episodes[0]["observations"][:-1])
    np.testing.assert_allclose(kept["inputs"][:, :obs.shape[1]], obs, rtol=1e-6)  # episode 0's states, in order
    np.testing.assert_allclose(kept["actions"], episodes[0]["actions"], rtol=1e-6)  # the actions it executed
    # The plain policy (what evaluation runs) now scores the kept decisions higher; the high level is untouched.
    plain = models.load_networks(os.path.join(ril_model, "low"))[0]
    score = lambda p: float(np.mean(plain.log_prob(plain.policy.apply(p, kept["inputs"]), kept["actions"])))
    assert score(learner.get_variables(["low"])[0]) > score(model.levels["low"].params) + 1.0
    assert learner.last["low/own_log_prob_last"] > learner.last["low/own_log_prob_first"]
    assert unchanged(learner.get_variables(["high"])[0], model.levels["high"].params)
    # The whole state round-trips (the kept buffer included), so a rerun resumes from it.
    other = _filtered_learner(model, config, address)[2]
    other.restore(pickle.loads(pickle.dumps(learner.save())))
    assert other.iteration == 2 and other.env_steps == learner.env_steps == 48
    np.testing.assert_array_equal(other.save()["kept"]["low"]["inputs"], kept["inputs"])
    assert unchanged(other.get_variables(["low"])[0], learner.get_variables(["low"])[0])
  finally:
    server.stop()
  # The buffer keeps the newest decisions.
  fifo = filtered.append_fifo({"x": np.arange(3)}, {"x": np.arange(3, 7)}, 5)
  np.testing.assert_array_equal(fifo["x"], [2, 3, 4, 5, 6])


def relabeled_rows(observations):
  from relay_data import relabel
  return relabel.relabel_indices(len(observations), WINDOW, 3)[0]


def _run_server_for_actors(ril_model, episodes_per_iteration):
  """A finetune run's server as `relay actor` finds it: the run's spec and the model's variables
  published. Returns (model, config, server, address, client, goal_state)."""
  model = policy_io.load_model(ril_model)
  config = FinetuneConfig(variant="npg", episodes_per_iteration=episodes_per_iteration, max_episode_steps=12)
  _, server, address = _server_for(config, model)
  client = reverb.Client(address)
  goal_state = env_lib.default_goal_state(GOAL)
  acting.publish_spec(client, config.spec_table, {
      "model": ril_model, "elements": GOAL, "goal_state": goal_state.tolist(), "seed": 0, "max_episode_steps": 12,
      "episodes_per_iteration": episodes_per_iteration, "trajectory_table": config.trajectory_table,
      "variables_table": config.variables_table})
  names = acting.variable_names(model)
  acting.publish_variables(client, config.variables_table, 0, [model.levels[n].params for n in names])
  return model, config, server, address, client, goal_state


def test_actor_process_writes_trajectories_to_a_server_it_reaches_by_address(ril_model):
  model, config, server, address, client, goal_state = _run_server_for_actors(ril_model, 2)
  try:
    proc = subprocess.run([sys.executable, "-m", "relay", "actor", "--reverb-address", address, "--episodes", "2"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 episodes written" in proc.stdout
    assert client.server_info()[config.trajectory_table].current_size == 2
    samples = list(client.sample(config.trajectory_table, 2, emit_timesteps=False, unpack_as_table_signature=True))
    episodes = learning.episodes_from_samples(samples)
    assert episodes["observation"].shape == (2, 13, 59)
    np.testing.assert_array_equal(learning.episode_lengths(episodes), [12, 12])
    np.testing.assert_allclose(episodes["goal"][:, :12], np.broadcast_to(goal_state, (2, 12, 30)))
    subgoals = episodes["subgoal"][:, :12]
    for start in range(0, 12, WINDOW):  # the high level re-planned exactly every W_l steps
      window = subgoals[:, start:start + WINDOW]
      np.testing.assert_array_equal(window, np.broadcast_to(window[:, :1], window.shape))
    assert not np.array_equal(subgoals[:, 0], subgoals[:, WINDOW])
    assert not np.array_equal(episodes["observation"][0], episodes["observation"][1])  # distinct episodes
  finally:
    server.stop()


def _lone_episode(model, index, params=None, steps=12, record=True):
  """Episode `index` acted by one actor alone (the reference lanes must reproduce)."""
  source = acting.FixedVariableSource(model)
  if params is not None:
    source._params = params  # pylint: disable=protected-access
  from acme.jax import variable_utils  # pylint: disable=import-outside-toplevel
  actor = acting.FinetuneActor(model, variable_utils.VariableClient(source, acting.variable_names(model)), seed=9)
  environment = env_lib.GoalKitchenEnv(GOAL, env_lib.default_goal_state(GOAL), steps, seed=0,
                                       settings=model.env_settings)
  return acting.run_episode(environment, actor, index, 0, record=record)


class _TwoVersions:
  """A variable source whose parameters change after its first fetch (a learner publishing mid-run)."""

  def __init__(self, first, then):
    self.versions, self.calls = [first, then], 0

  def get_variables(self, names):
    params = self.versions[min(self.calls, 1)]
    self.calls += 1
    return [params[n] for n in names]


@pytest.mark.parametrize("groups", [1, 2])
def test_lanes_act_the_episodes_lone_actors_act_with_one_batched_call_per_level(ril_model, groups):
  """`run_episodes` steps several environments in lockstep and batches their policy calls; each
  episode must be the one a lone actor acts for that index (up to a batched product's rounding),
  every index acted once, and a lane that starts its episode after newer parameters were fetched
  acts with those while the others keep theirs. With 2 groups, one group's calls are dispatched
  while the other's environments step: the episodes must not change."""
  from acme.jax import variable_utils  # pylint: disable=import-outside-toplevel
  model = policy_io.load_model(ril_model)
  names = acting.variable_names(model)
  base = acting.FixedVariableSource(model)._params  # pylint: disable=protected-access
  newer = {n: jax.tree_util.tree_map(lambda x: x * 1.05, base[n]) for n in names}
  calls = {"batch": 0, "single": 0}
  fns = {n: model.levels[n].fn for n in names}
  for n, fn in fns.items():  # count the network calls (the real jitted functions still run)
    batch = fn.batch_async
    fn.batch_async = lambda *a, _b=batch, **k: (calls.__setitem__("batch", calls["batch"] + 1), _b(*a, **k))[1]
  try:
    client = variable_utils.VariableClient(_TwoVersions(base, newer), names)  # one client, as in `relay actor`
    lanes = 3
    actors = [acting.FinetuneActor(model, client, seed=9) for _ in range(lanes)]
    environments = [env_lib.GoalKitchenEnv(GOAL, env_lib.default_goal_state(GOAL), 12, seed=0,
                                           settings=model.env_settings) for _ in range(lanes)]
    indices = [4, 5, 6, 7]
    done = dict(acting.run_episodes(environments, actors, indices, 0, record=True, groups=groups))
  finally:
    for fn in fns.values():
      fn.__dict__.pop("batch_async", None)
  assert sorted(done) == indices  # each index once; lane 0 acts 4, then whichever lane ends first acts 7
  # Lane 0 fetched first (the original parameters); lanes 1, 2 and the fourth episode the newer ones.
  for index in indices:
    want = _lone_episode(model, index, base if index == 4 else newer)
    got = done[index]
    assert got["steps"] == want["steps"] == 12
    np.testing.assert_allclose(got["actions"], want["actions"], atol=1e-3)
    np.testing.assert_allclose(got["observations"], want["observations"], atol=1e-3)
  # 12 steps x (two parameter versions for the first episodes, one after) per group: fewer calls
  # than the 4 episodes x 12 steps x a call per level a lone actor would make.
  assert 0 < calls["batch"] <= groups * (2 * 12 * 2 + 12 * 2) < 4 * 12 * 2 * groups
  assert not np.allclose(done[4]["actions"], _lone_episode(model, 4, newer)["actions"], atol=1e-3)
  with pytest.raises(ValueError, match="one environment per actor"):
    next(acting.run_episodes(environments[:1], actors, indices, 0))


def test_lanes_share_one_kitchen_model_and_act_the_episodes_of_kitchens_of_their_own(ril_model):
  """`env_lib.lanes` makes every lane step the first lane's MuJoCo model (~57 MB) with a state of
  its own: the episodes (env seeds, policy samples, physics) must be those of separate kitchens,
  bit for bit, and no lane's steps may leak into another's state."""
  model = policy_io.load_model(ril_model)
  goal_state = env_lib.default_goal_state(GOAL)
  shared = env_lib.lanes(3, GOAL, goal_state, 12, seed=0, settings=model.env_settings)
  separate = [env_lib.GoalKitchenEnv(GOAL, goal_state, 12, seed=0, settings=model.env_settings) for _ in range(3)]
  physics = lambda e: e._env.unwrapped.robot_env  # pylint: disable=protected-access
  assert physics(shared[1]).model is physics(shared[0]).model is physics(shared[2]).model
  assert physics(shared[1]).data is not physics(shared[0]).data
  assert physics(separate[1]).model is not physics(separate[0]).model
  indices = [3, 4, 5, 6, 7]
  episodes = lambda environments: dict(acting.run_episodes(environments, acting.fixed_actors(model, 3, seed=9),
                                                           indices, 0, record=True, groups=1))
  got, want = episodes(shared), episodes(separate)
  for index in indices:
    np.testing.assert_array_equal(got[index]["observations"], want[index]["observations"])
    np.testing.assert_array_equal(got[index]["actions"], want[index]["actions"])
  assert not np.array_equal(got[3]["observations"], got[4]["observations"])
  with pytest.raises(ValueError, match="at least one lane"):
    env_lib.lanes(0, GOAL)


def test_actor_process_with_several_environments_writes_the_episodes_of_a_lone_actor(ril_model):
  """`relay actor --envs 2`: three episodes from two lockstep environments, the indices and
  contents a one-environment actor process writes."""
  model, config, server, address, client, _ = _run_server_for_actors(ril_model, 3)
  try:
    proc = subprocess.run([sys.executable, "-m", "relay", "actor", "--reverb-address", address, "--episodes", "3",
                           "--envs", "2", "--actor-id", "1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 episodes written" in proc.stdout
    samples = list(client.sample(config.trajectory_table, 3, emit_timesteps=False, unpack_as_table_signature=True))
    episodes = learning.episodes_from_samples(samples)
    np.testing.assert_array_equal(learning.episode_lengths(episodes), [12, 12, 12])
    lone = [_lone_episode(model, run_lib.actor_episode_index(1, d)) for d in range(3)]
    for got in episodes["observation"]:  # arrival order is completion order: match by content
      dist = [np.abs(got - want["observations"]).max() for want in lone]
      assert min(dist) < 1e-3, dist
    assert len({int(np.argmin([np.abs(g - w["observations"]).max() for w in lone]))
                for g in episodes["observation"]}) == 3
  finally:
    server.stop()


@pytest.mark.parametrize("residual", [None, (16,)])
def test_finetune_in_process_lanes_act_the_episodes_of_one_lane(ril_model, tmp_path, residual):
  """`relay finetune --envs-per-actor 3` in this process: the iteration's 4 episodes go through
  3 lockstep lanes (one lane acts two), and the iteration sees what one lane sees, up to
  rounding (the episodes are the same indices; a residual level batches too)."""
  config = FinetuneConfig(variant="npg", reward="euclidean", episodes_per_iteration=4, max_episode_steps=10,
                          residual=residual)
  records = {}
  for lanes in (1, 3):
    out = str(tmp_path / f"lanes{lanes}")
    summary = run_lib.finetune(run_lib.RunConfig(ril_model, GOAL, out, env_steps=40, envs_per_actor=lanes, seed=0,
                                                 progress=False), config)
    assert summary["iterations"] == 1 and summary["env_steps"] == 40
    with open(os.path.join(out, "log.jsonl")) as f:
      records[lanes] = [json.loads(line) for line in f]
  one, three = records[1][0], records[3][0]
  assert one["elements_done"] == three["elements_done"]
  assert three["low/reward"] == pytest.approx(one["low/reward"], rel=1e-3, abs=1e-4)
  with pytest.raises(ValueError, match="envs_per_actor must be positive"):
    run_lib.RunConfig(ril_model, GOAL, str(tmp_path / "x"), env_steps=40, envs_per_actor=0)


def test_variables_through_reverb_arrive_on_the_device_and_act_as_the_model_does(ril_model):
  """What a separate actor process gets from `ReverbVariableSource` is the published parameters as
  device arrays (numpy leaves were copied into every policy call: a fleet actor ran 20 % slower
  than an in-process one), and an actor fed through it samples the same episode as one holding
  the model itself (the actor-fleet benchmark replays those actions as its baseline)."""
  from acme.jax import variable_utils  # pylint: disable=import-outside-toplevel
  model = policy_io.load_model(ril_model)
  config = FinetuneConfig(variant="npg", episodes_per_iteration=2, max_episode_steps=12)
  _, server, address = _server_for(config, model)
  try:
    names = acting.variable_names(model)
    template = [model.levels[n].params for n in names]
    acting.publish_variables(reverb.Client(address), config.variables_table, 3, template)
    source = acting.ReverbVariableSource(address, config.variables_table, template)
    source.bind_names(names)
    fetched = source.get_variables(names)
    assert source.version == 3
    for got, want in zip(jax.tree_util.tree_leaves(fetched), jax.tree_util.tree_leaves(template)):
      assert isinstance(got, jax.Array)
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    through_reverb = acting.FinetuneActor(model, variable_utils.VariableClient(source, names), seed=5)
    environment = env_lib.GoalKitchenEnv(GOAL, env_lib.default_goal_state(GOAL), 12, seed=0,
                                         settings=model.env_settings)
    a = acting.run_episode(environment, through_reverb, 7, 0, record=True)
    b = acting.run_episode(environment, acting.fixed_actor(model, seed=5), 7, 0, record=True)
    np.testing.assert_array_equal(a["actions"], b["actions"])
    np.testing.assert_array_equal(a["observations"], b["observations"])
  finally:
    server.stop()


# --- the whole run: CLI, checkpoints, resume ------------------------------------------------------

def _finetune_args(model, out, env_steps):
  return ["finetune", "--model", model, "--goal", ",".join(GOAL), "--variant", "npg", "--env-steps", str(env_steps),
          "--episodes-per-iteration", "2", "--max-episode-steps", "10", "--out", out, "--no-progress", "--seed", "1"]


def test_interrupted_finetune_resumes_and_ends_where_an_uninterrupted_one_does(ril_model, kitchen_play_tiny, tmp_path,
                                                                               cli):
  steps, iterations = 160, 8  # 8 iterations of 2 x 10 steps
  whole = str(tmp_path / "whole")
  cli(*_finetune_args(ril_model, whole, steps), check=True)
  cut = str(tmp_path / "cut")
  proc = subprocess.Popen([sys.executable, "-m", "relay", *_finetune_args(ril_model, cut, steps)], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  log = os.path.join(cut, "log.jsonl")
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(log) and len(open(log).readlines()) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(cut, "model")), "the run finished before it could be interrupted"
  with open(os.path.join(cut, "checkpoint.pkl"), "rb") as f:
    interrupted_at = pickle.load(f)["iteration"]
  assert 0 < interrupted_at < iterations
  cli(*_finetune_args(ril_model, cut, steps), check=True)

  def records(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
      return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")} for line in f]
  assert [r["iteration"] for r in records(cut)] == list(range(iterations))
  assert records(cut) == records(whole)
  for level in ("low", "high"):
    with open(os.path.join(whole, "model", level, "policy.pkl"), "rb") as f:
      a = pickle.load(f)["params"]
    with open(os.path.join(cut, "model", level, "policy.pkl"), "rb") as f:
      b = pickle.load(f)["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  # The low level was finetuned (the high level, with --finetune low, was not).
  original = policy_io.load_model(ril_model)
  finetuned = policy_io.load_model(os.path.join(whole, "model"))
  changed = lambda n: any(not np.array_equal(x, y) for x, y in zip(
      jax.tree_util.tree_leaves(original.levels[n].params), jax.tree_util.tree_leaves(finetuned.levels[n].params)))
  assert changed("low") and not changed("high")
  # The finetuned model is a format-2 model naming its source; `relay eval` reads it.
  record, source = models.read_record(os.path.join(whole, "model")), models.read_record(ril_model)
  assert record.format == models.FORMAT and record.window == source.window == WINDOW
  assert record.finetuned["from"] == {"path": os.path.abspath(ril_model), "fingerprint": models.fingerprint(ril_model)}
  assert record.finetuned["goal"] == GOAL and record.finetuned["variant"] == "npg"
  assert record.finetuned["levels"] == ["low"] and record.finetuned["env_steps"] == records(whole)[-1]["env_steps"]
  assert (record.spec, record.env_settings, record.sources) == (source.spec, source.env_settings, source.sources)
  assert models.fingerprint(os.path.join(whole, "model")) != models.fingerprint(ril_model)
  evaluated = cli("eval", "--model", os.path.join(whole, "model"), "--play", kitchen_play_tiny, "--goals", "1",
                  "--no-heldout", "--rollouts", "1", "--max-steps", "5", "--json", str(tmp_path / "eval.json"))
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert os.path.getsize(os.path.join(whole, "curve.png")) > 1000
  assert os.listdir(os.path.join(whole, "tensorboard"))
  other = cli(*[a if a != "npg" else "dapg" for a in _finetune_args(ril_model, whole, steps)])
  assert other.returncode == 2 and "the checkpointed run used variant='npg'" in other.stderr


def _copy_model(model_dir, out, **record_changes):
  shutil.copytree(model_dir, out)
  models.write_record(str(out), dataclasses.replace(models.read_record(model_dir), **record_changes))
  return str(out)


def test_d4rl_layout_model_acts_learns_and_relabels_in_its_own_layout(d4rl_model, ril_model):
  model = policy_io.load_model(d4rl_model)
  assert model.spec == goal_space.kitchen_spec(30) and model.window == WINDOW
  low = model.levels["low"]
  assert low.dims["observation"] == 30 and low.networks.input_dim == 60
  # The run's kitchen is built with the settings the model's data was recorded under (play 2.0.0: RPL's noise).
  assert model.env_settings == models.env_settings(models.read_record(d4rl_model)) == kitchen.DEFAULT_SETTINGS
  env = env_lib.GoalKitchenEnv(GOAL, max_episode_steps=12, settings=model.env_settings)
  assert env._env.unwrapped.robot_env.robot_noise_ratio == 0.1  # pylint: disable=protected-access
  config = FinetuneConfig(variant="iril", episodes_per_iteration=2, max_episode_steps=12, demo_batch_size=32,
                          demo_max_examples=32, iril_goals_per_step=3)
  builder, server, address = _server_for(config, model)
  try:
    demos = policy_io.check_demos(model, "low")
    assert demos == models.read_record(d4rl_model).sources["low"]["path"]
    assert builder.feed_demos(address, demos, progress=False) == 32
    client = reverb.Client(address)
    learner = builder.make_learner(jax.random.PRNGKey(0), client, 0.5, GOAL,
                                   demo_iterator=builder.make_demo_iterator(address),
                                   demo_inserter=builder.make_demo_inserter(address))
    actor = builder.make_actor(0, learner, builder.make_adder(client))
    episodes = [acting.run_episode(env, actor, i, seed=0, record=True) for i in range(2)]
    assert episodes[0]["observations"].shape == (13, 59)  # the trajectory keeps the env's observation
    learner.step()
    assert learner.last["iril_inserted"] == sum(len(relabeled_rows(e["observations"])) for e in episodes)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(low.params),
                                                        jax.tree_util.tree_leaves(learner.get_variables(["low"])[0]))]
    assert any(changed)
    observation = builder.demo_keys.index("observation")
    seen = set()
    for sample in client.sample(config.demo_table, 300, emit_timesteps=False):
      rows = np.asarray(sample.data[observation])
      assert rows.shape[-1] == 30
      seen.update(row.tobytes() for row in rows)
    for e in episodes:  # the on-policy states were relabeled in the model's 30-d layout
      assert all(row.tobytes() in seen for row in model.observation(e["observations"][:-1]))
  finally:
    server.stop()
  # Demos in another layout than the model's are refused, naming both.
  with pytest.raises(DataError, match=r"30-d d4rl observation.* but the demo data .* 59-d franka-kitchen-v1"):
    policy_io.check_demos(model, "low", models.read_record(ril_model).sources["low"]["path"])


def test_models_that_do_not_fit_or_lost_their_demos_are_refused(ril_model, tmp_path, cli):
  record = models.read_record(ril_model)
  elsewhere = _copy_model(ril_model, tmp_path / "none", spec=goal_space.custom_spec(59, 59).to_dict(), env_settings=None)
  with pytest.raises(DataError, match="trained on env 'none' data .*only kitchen models can act in FrankaKitchen-v1"):
    policy_io.load_model(elsewhere)
  wrong_width = _copy_model(ril_model, tmp_path / "width", spec=goal_space.kitchen_spec(30).to_dict())
  with pytest.raises(DataError, match=r"policy.pkl: policy takes 59-d observations but the model's record says .*30-d"):
    policy_io.load_model(wrong_width)
  sources = json.loads(json.dumps(record.sources))
  sources["low"]["fingerprint"] = "0" * 16
  changed = policy_io.load_model(_copy_model(ril_model, tmp_path / "changed", sources=sources))
  with pytest.raises(DataError, match="relabeled data changed since the model's low level was trained on it"):
    policy_io.check_demos(changed, "low")
  sources["low"]["path"] = str(tmp_path / "relabeled_low_deleted")
  gone = _copy_model(ril_model, tmp_path / "gone", sources=sources)
  proc = cli(*[a if a != "npg" else "dapg" for a in _finetune_args(gone, str(tmp_path / "run"), 20)])
  err = proc.stderr.strip()
  assert proc.returncode == 1 and len(err.splitlines()) == 1, err
  assert "relabeled_low_deleted: the relabeled data the model's low level was trained on is gone" in err
  assert not os.path.exists(tmp_path / "run")  # refused before anything was written


def test_replan_sets_the_actors_cadence_and_task_reward_makes_the_low_level_flat(ril_model):
  from relay_agents.finetune import gradient_signal, run as run_lib  # pylint: disable=import-outside-toplevel
  steps = 3 * WINDOW
  default, every = policy_io.load_model(ril_model), policy_io.load_model(ril_model, replan=1)
  assert (default.cadence, every.cadence, every.window) == (WINDOW, 1, WINDOW)
  with pytest.raises(ValueError, match="replan must be positive"):
    policy_io.load_model(ril_model, replan=0)
  with pytest.raises(ValueError, match="replan must be positive"):
    FinetuneConfig(replan=0)
  runs = {m.cadence: gradient_signal.collect_episodes(m, GOAL, 1, steps, seed=3, progress=False)
          for m in (default, every)}
  # The sampled subgoal is held for W_l steps by default and drawn anew at every step with replan 1.
  changes = {c: int((np.abs(np.diff(ep["subgoal"][0, :steps], axis=0)).sum(-1) > 0).sum()) for c, ep in runs.items()}
  assert changes == {WINDOW: 2, 1: steps - 1}
  # The levels' transitions follow the cadence: one high-level decision per step, the low level's
  # segments end at every step (sparse), or nowhere but the episode's end with the task reward.
  episodes = runs[1]
  config = FinetuneConfig(replan=1, finetune="both")
  high = learning.level_transitions(episodes, "high", every, config, eps=0.1)
  assert high["mask"].shape == (1, steps) and high["mask"].sum() == steps
  low = learning.level_transitions(episodes, "low", every, config, eps=0.1)
  assert low["done"][0].sum() == steps
  task = learning.level_transitions(episodes, "low", every, dataclasses.replace(config, reward="task"), eps=None)
  np.testing.assert_array_equal(task["rewards"][0], episodes["reward"][0, :steps])
  np.testing.assert_array_equal(task["done"][0], np.eye(steps)[-1])
  np.testing.assert_array_equal(task["inputs"][0, :, -kitchen.GOAL_DIM:], episodes["subgoal"][0, :steps])
  # A chunked low level (k = 3 executing m = 2) predicts anew at every re-plan (`FinetuneActor`):
  # re-planning every step, every step is a decision of one executed action, whatever the reward.
  low_level = every.levels["low"]
  chunked_level = dataclasses.replace(low_level, config=dataclasses.replace(low_level.config, action_chunk=3,
                                                                            execute_steps=2))
  chunked = dataclasses.replace(every, levels={**every.levels, "low": chunked_level})
  for reward in ("task", "sparse"):
    decisions = learning.level_transitions(episodes, "low", chunked, dataclasses.replace(config, reward=reward), 0.1)
    assert decisions["mask"].shape == (1, steps) and np.all(decisions["steps"] == 1)
    assert np.all(np.isfinite(decisions["actions"][0, :, :9])) and np.all(np.isnan(decisions["actions"][0, :, 9:]))
  np.testing.assert_array_equal(decisions["done"][0], np.ones(steps))  # sparse: every re-plan ends a segment
  task_decisions = learning.level_transitions(episodes, "low", chunked, dataclasses.replace(config, reward="task"), None)
  np.testing.assert_array_equal(task_decisions["done"][0], np.eye(steps)[-1])
  eps, demos = run_lib.resolve_eps(every, dataclasses.replace(config, reward="task", variant="npg"))
  assert eps is None and demos is None  # nothing to calibrate: the task reward has no radius


def test_cli_finetune_rejects_bad_flags(cli, ril_model, tmp_path):
  bad_goal = cli("finetune", "--model", ril_model, "--goal", "microwave,oven", "--env-steps", "10",
                 "--out", str(tmp_path / "x"))
  assert bad_goal.returncode == 2 and "unknown: oven" in bad_goal.stderr
  no_model = cli("finetune", "--model", str(tmp_path / "nope"), "--goal", "microwave", "--env-steps", "10",
                 "--out", str(tmp_path / "x"))
  # A broken model directory is bad data (exit 1), one line naming the file, as for `relay eval`.
  assert no_model.returncode == 1 and "agent.json: missing" in no_model.stderr
  assert len(no_model.stderr.strip().splitlines()) == 1, no_model.stderr
  bad_steps = cli("finetune", "--model", ril_model, "--goal", "microwave", "--env-steps", "0", "--out", str(tmp_path))
  assert bad_steps.returncode == 2 and "--env-steps" in bad_steps.stderr
  bad_replan = cli("finetune", "--model", ril_model, "--goal", "microwave", "--env-steps", "10", "--replan", "0",
                   "--out", str(tmp_path / "x"))
  assert bad_replan.returncode == 2 and "replan must be positive" in bad_replan.stderr
  for flags, message in ((["--own-fraction", "0"], "own_fraction must be in (0, 1]"),
                         (["--bc-steps", "0"], "bc_steps must be positive"),
                         (["--finetune", "both"], "variant filtered finetunes the low level alone")):
    bad = cli("finetune", "--model", ril_model, "--goal", "microwave", "--env-steps", "10", "--variant", "filtered",
              *flags, "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and message in bad.stderr, (flags, bad.stderr[-500:])
  bad_envs = cli("finetune", "--model", ril_model, "--goal", "microwave", "--env-steps", "10", "--envs-per-actor", "0",
                 "--out", str(tmp_path / "x"))
  assert bad_envs.returncode == 2 and "--envs-per-actor must be positive" in bad_envs.stderr
  assert not os.path.exists(tmp_path / "x")
  bad_lanes = cli("actor", "--reverb-address", "127.0.0.1:1", "--envs", "0")
  assert bad_lanes.returncode == 2 and "--envs must be positive" in bad_lanes.stderr
  bad_groups = cli("actor", "--reverb-address", "127.0.0.1:1", "--groups", "0")
  assert bad_groups.returncode == 2 and "--groups must be positive" in bad_groups.stderr
  # `relay finetune --actor-processes` pipelines lane groups only when a core is left for the network.
  cores = len(os.sched_getaffinity(0))
  assert run_lib.actor_command("h:1", 0, cores, 4)[-2:] == ["--groups", "1"]
  assert run_lib.actor_command("h:1", 0, cores - 1, 4)[-2:] == ["--groups", str(acting.PIPELINE_GROUPS)]
  from relay_agents.finetune.config import DEFAULT_LANES  # pylint: disable=import-outside-toplevel
  assert f"default {DEFAULT_LANES}" in " ".join(cli("actor", "--help", check=True).stdout.split())
  assert run_lib.RunConfig(ril_model, GOAL, "x", env_steps=1).envs_per_actor == DEFAULT_LANES
  bad_address = cli("actor", "--reverb-address", "nohostport")
  assert bad_address.returncode == 2 and "HOST:PORT" in bad_address.stderr
  nobody = cli("actor", "--reverb-address", "127.0.0.1:1")
  assert nobody.returncode == 1 and "no Reverb server answered at 127.0.0.1:1" in nobody.stderr


# --- distillation ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finetune_run(ril_model, tmp_path_factory):
  """A real (one-iteration) finetune run directory of the tiny model toward GOAL."""
  from relay_agents.finetune import run as run_lib  # pylint: disable=import-outside-toplevel
  out = str(tmp_path_factory.mktemp("distill") / "run")
  run_lib.finetune(run_lib.RunConfig(ril_model, GOAL, out, env_steps=20, seed=0, progress=False),
                   FinetuneConfig(variant="npg", episodes_per_iteration=2, max_episode_steps=10))
  return out


def test_distill_keeps_qualifying_rollouts_relabels_them_with_the_play_data_and_trains(
    finetune_run, ril_model, kitchen_play_tiny, tmp_path):
  from relay_agents.finetune import distill  # pylint: disable=import-outside-toplevel
  # The tiny model finishes no element in 10 steps: with the paper's rule (successes only) there
  # is nothing to distill, and nothing is written.
  nothing = str(tmp_path / "nothing")
  with pytest.raises(distill.NothingToDistill,
                     match=r"no rollout of .* succeeded in 2 rollouts each \(rollouts by goal elements done: 0: 2\)"):
    distill.distill([finetune_run], kitchen_play_tiny, nothing, distill.DistillConfig(rollouts=2, progress=False))
  assert not os.path.exists(nothing)
  with pytest.raises(ValueError, match=r"min_elements must be in 0..4"):
    distill.distill([finetune_run], kitchen_play_tiny, nothing,
                    distill.DistillConfig(rollouts=2, min_elements=5, progress=False))
  # Keeping every rollout (>= 0 elements) exercises the whole path on real components.
  out = str(tmp_path / "distilled")
  summary = distill.distill([finetune_run], kitchen_play_tiny, out,
                            distill.DistillConfig(rollouts=2, min_elements=0, goals_per_step=2, train_steps=5,
                                                  progress=False))
  assert summary["successes"] == {finetune_run: 2} and summary["episodes_added"] == 2
  play = list(rlds_io.iter_episodes(kitchen_play_tiny))
  merged = list(rlds_io.iter_episodes(summary["data"]))
  assert len(merged) == len(play) + 2
  # The rollouts act as the run's actors did: a run finetuned re-planning every step is rolled out so.
  assert distill.run_model(finetune_run).cadence == WINDOW
  every = str(tmp_path / "run_replan1")
  shutil.copytree(finetune_run, every)
  record = json.loads(open(os.path.join(every, "run.json")).read())
  record["config"]["replan"] = 1
  with open(os.path.join(every, "run.json"), "w") as f:
    json.dump(record, f)
  assert distill.run_model(every).cadence == 1
  for ep, original in zip(merged, play):  # the play episodes as they were
    np.testing.assert_array_equal(ep["observation"], original["observation"])
    np.testing.assert_array_equal(ep["action"], original["action"])
  for ep in merged[len(play):]:  # the rollouts: 10 steps, the play data's layout, goal-space states
    assert ep["observation"].shape == (11, play[0]["observation"].shape[1])
    assert np.abs(ep["action"]).max() <= 1.0 and not ep["action"][-1].any()
    state_dims = goal_space.of_episode_dataset(kitchen_play_tiny).goal_state(ep["observation"])
    np.testing.assert_allclose(ep["goal_state"], state_dims, atol=1e-6)
  source = policy_io.load_model(ril_model)
  lineage = {level: relabeled.read_lineage(os.path.join(out, f"relabeled_{level}"))["config"]
             for level in ("low", "high")}
  assert lineage["low"]["window"] == lineage["high"]["window"] == source.window
  assert lineage["high"]["window_high"] == source.record.window_high
  # The tiny model predicts single actions (chunk 1, stored without the field), not the default 10.
  assert lineage["low"].get("action_chunk", 1) == source.levels["low"].config.action_chunk == 1
  distilled = models.read_record(summary["model"])
  assert distilled.agent == "ril" and distilled.window == source.window
  levels = policy_io.load_model(summary["model"]).levels
  for level in ("low", "high"):  # each level keeps the base model's goal input
    assert levels[level].config.goal_elements == source.levels[level].config.goal_elements
  assert levels["high"].config.goal_elements  # the tiny model's high level: kitchen data, auto


def test_cli_distill_with_nothing_to_keep_is_one_line_and_writes_nothing(finetune_run, kitchen_play_tiny, tmp_path,
                                                                          cli):
  out = tmp_path / "d"
  nothing = cli("distill", "--run", finetune_run, "--play", kitchen_play_tiny, "--out", str(out), "--rollouts", "1",
                "--no-progress")
  assert nothing.returncode == 1 and "nothing to distill" in nothing.stderr, nothing.stderr
  assert len(nothing.stderr.strip().splitlines()) == 1 and not out.exists()
  too_many = cli("distill", "--run", finetune_run, "--play", kitchen_play_tiny, "--out", str(out),
                 "--min-elements", "5")
  assert too_many.returncode == 2 and "min_elements must be in 0..4" in too_many.stderr
  not_a_run = cli("distill", "--run", os.path.join(finetune_run, "model"), "--play", kitchen_play_tiny,
                  "--out", str(out))
  assert not_a_run.returncode == 2 and "not a finetune run directory (no run.json" in not_a_run.stderr
  assert not out.exists()


# --- is there a gradient to follow (relay diagnose gradient) -------------------------------------

def test_held_out_gain_separates_a_real_gradient_from_shuffled_advantages():
  """The contextual bandit above, cut into 32 "episodes" of 16 states: a step fitted on a batch
  with real advantages raises the other half's surrogate; with the advantages shuffled (no
  signal) it raises only its own batch's."""
  from relay_agents.finetune import gradient_signal  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(512, 4)).astype(np.float32)
  best = np.tanh(inputs[:, :2])
  config = GoalBCConfig(action_chunk=1, hidden_sizes=(32, 32), head="mixture", num_components=3)
  nets = gcbc_networks.make_networks(4, 2, config, gcbc_networks.Normalization.from_arrays(inputs, best))
  params = nets.policy.init(jax.random.PRNGKey(0))
  actions = np.asarray(nets.sample(nets.policy.apply(params, inputs), jax.random.PRNGKey(1)))
  reward = -np.sum((actions - best) ** 2, -1)
  shape = lambda x: x.reshape((32, 16) + x.shape[1:])
  batches = {"inputs": shape(inputs), "actions": shape(actions), "advantages": shape(reward - reward.mean()),
             "mask": np.ones((32, 16), np.float32)}
  real = gradient_signal.held_out_gains(nets, "mixture", params, batches, [4, 16], 0.05)
  shuffled_batches = dict(batches, advantages=shape(rng.permutation(reward - reward.mean())))
  shuffled = gradient_signal.held_out_gains(nets, "mixture", params, shuffled_batches, [16], 0.05)
  assert [g.fit for g in real] == [4, 16] and all(g.fits == 6 for g in real)
  assert all(g.in_sample > 0 for g in real + shuffled)
  assert real[1].held_out > 5 * real[1].held_out_se > 0, real
  assert real[1].held_out > real[0].held_out  # more episodes per step, more of the gain holds out
  assert shuffled[0].held_out < 0.25 * real[1].held_out, (shuffled, real)
  assert shuffled[0].ratio < 0.25 < real[1].ratio
  # The same steps at smaller KL bounds: the gain is a sqrt(kl) + b kl (first order: the step's
  # direction; second order: moving at all). Two bounds give a and b; a third is then predicted.
  probe, middle = (gradient_signal.held_out_gains(nets, "mixture", params, batches, [4, 16], kl) for kl in (5e-4, 5e-3))
  orders = gradient_signal.split_orders(real, probe, 0.05, 5e-4)
  for o, at_kl, mid in zip(orders, real, middle):
    assert o.held_out_first + o.held_out_second == pytest.approx(at_kl.held_out, abs=1e-6)
    assert o.held_out_first * np.sqrt(0.1) + o.held_out_second * 0.1 == pytest.approx(mid.held_out, rel=0.1)
  assert orders[1].held_out_first > 0 and orders[1].alignment > orders[0].alignment > 0  # more episodes, more shared
  shuffled_probe = gradient_signal.held_out_gains(nets, "mixture", params, shuffled_batches, [16], 5e-4)
  noise = gradient_signal.split_orders(shuffled, shuffled_probe, 0.05, 5e-4)[0]
  assert noise.in_sample_first > 0 and noise.alignment < 0.5 * orders[1].alignment, (noise, orders)
  with pytest.raises(ValueError, match="probe KL must be in"):
    gradient_signal.split_orders(real, probe, 5e-4, 0.05)
  with pytest.raises(ValueError, match="fit sizes must be in 1..16"):
    gradient_signal.held_out_gains(nets, "mixture", params, batches, [17], 0.05)
  with pytest.raises(ValueError, match="every advantage is zero"):
    gradient_signal.held_out_gains(nets, "mixture", params, dict(batches, advantages=0 * batches["advantages"]),
                                   [4], 0.05)


def test_cli_diagnose_gradient_in_the_kitchen(ril_model, cli, tmp_path):
  out = tmp_path / "gradient.json"
  # The euclidean reward: the tiny model's 15-step episodes never come within the sparse eps.
  proc = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave,kettle", "--episodes", "4",
             "--fit", "1,2", "--splits", "1", "--max-episode-steps", "15", "--reward", "euclidean", "--execute-steps", "1",
             "--json", str(out))
  assert proc.returncode == 0, proc.stderr
  assert "on the other half's" in proc.stdout
  result = json.loads(out.read_text())
  assert [g["fit"] for g in result["gains"]] == [1, 2] and all(g["fits"] == 2 for g in result["gains"])
  assert all(g["in_sample"] > 0 and np.isfinite(g["held_out"]) for g in result["gains"])
  assert result["eps"] is None and result["episodes"] == 4 and result["config"]["reward"] == "euclidean"
  assert result["config"]["execute_steps"] == 1  # acted and scored as `relay finetune --execute-steps 1` would
  assert "first order (the step's direction)" in proc.stdout and result["probe_kl"] == pytest.approx(1e-4)
  for o, g in zip(result["orders"], result["gains"]):
    assert o["fit"] == g["fit"] and o["held_out_first"] + o["held_out_second"] == pytest.approx(g["held_out"], abs=1e-6)
  bad_probe = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave", "--probe-kl", "0.05")
  assert bad_probe.returncode == 2 and "--probe-kl must be positive and below --kl 0.01" in bad_probe.stderr
  bad_kl = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave", "--kl", "-1")
  assert bad_kl.returncode == 2 and "kl_delta must be positive" in bad_kl.stderr and "probe" not in bad_kl.stderr
  too_many = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave", "--episodes", "4", "--fit", "3")
  assert too_many.returncode == 2 and "--fit sizes must be in 1..2" in too_many.stderr
  not_numbers = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave", "--fit", "8,x")
  assert not_numbers.returncode == 2 and "--fit must be comma-separated" in not_numbers.stderr
  no_reward = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave,kettle", "--episodes", "2",
                  "--fit", "1", "--splits", "1", "--max-episode-steps", "5")
  assert no_reward.returncode == 2 and "every advantage is zero" in no_reward.stderr
  errors = [line for line in no_reward.stderr.splitlines() if "error" in line]
  assert len(errors) == 1 and errors[0].startswith("relay diagnose: error: 2 episodes of 5 steps"), no_reward.stderr
  bad_execute = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave", "--execute-steps", "0")
  assert bad_execute.returncode == 2 and "execute_steps must be positive, got 0" in bad_execute.stderr
  bad_goal = cli("diagnose", "gradient", "--model", ril_model, "--goal", "microwave,oven")
  assert bad_goal.returncode == 2 and "oven" in bad_goal.stderr
