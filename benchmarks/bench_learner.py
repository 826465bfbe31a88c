"""Learner steps/s fed through Reverb vs the same learner fed from an in-memory array iterator
(target >= 0.9x), and hierarchical-actor env-steps/s (policy inference) vs replaying the same actions."""
import time

import jax
import numpy as np
import reverb

from benchmarks.common import report
from relay_agents import replay
from relay_agents.gcbc import acting, builder as gcbc_builder, learning, networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import kitchen
from relay_data.relabel import DEFAULT_WINDOW


def _steps_per_s(learner, steps=300, warmup=20):
  for _ in range(warmup):
    learner.step()
  start = time.perf_counter()
  for _ in range(steps):
    learner.step()
  return steps / (time.perf_counter() - start)


def learner_benchmark(rounds=3):
  """Both learners are built first, then timed in alternation (`rounds` times each) and the
  medians compared, so a burst of load on this noisy box hits both sides alike."""
  config = GoalBCConfig(batch_size=256)  # the defaults `relay train-il` trains with
  rng = np.random.default_rng(0)
  n = 50_000
  arrays = {"observation": rng.normal(size=(n, 59)).astype(np.float32),
            "goal": rng.normal(size=(n, 30)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(n, 9)).astype(np.float32)}
  dims = {k: v.shape[1] for k, v in arrays.items()}
  norm = gcbc_networks.stats_from_examples([arrays], config)
  networks = gcbc_networks.make_networks(89, 9, config, norm)
  memory = learning.make_learner(networks, replay.array_iterator(arrays, config), config, jax.random.PRNGKey(0))
  builder = gcbc_builder.GoalBCBuilder(config, dims)
  server = reverb.Server(builder.make_replay_tables())
  try:
    address = f"localhost:{server.port}"
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    replay.feed(address, config.table_name, tf.data.Dataset.from_tensor_slices(arrays), sorted(dims),
                config.examples_per_item, progress=False)
    learner = builder.make_learner(jax.random.PRNGKey(0), networks,
                                   builder.make_dataset_iterator(reverb.Client(address)))
    mem_rates, rev_rates = [], []
    for _ in range(rounds):
      mem_rates.append(_steps_per_s(memory))
      rev_rates.append(_steps_per_s(learner))
  finally:
    server.stop()
  hidden = "x".join(map(str, config.hidden_sizes))
  report(f"learner fed through Reverb vs in-memory arrays (batch {config.batch_size}, MLP {hidden}, "
         f"{config.head} head; median of {rounds})", float(np.median(rev_rates)), "in-memory",
         float(np.median(mem_rates)), ">= 0.9x")
  return networks, learner


def actor_benchmark(networks, learner, steps=300):
  params = learning.params_of(learner)
  high_config = GoalBCConfig(target="subgoal")
  high_networks = gcbc_networks.make_networks(89, 30, high_config, gcbc_networks.Normalization(
      np.zeros(89, np.float32), np.ones(89, np.float32), np.zeros(30, np.float32), np.ones(30, np.float32)))
  high_params = high_networks.policy.init(jax.random.PRNGKey(1))
  actor = acting.HierarchicalActor(acting.GoalPolicy(acting.GoalPolicyFn(high_networks, high_config), high_params),
                                   acting.GoalPolicy(acting.GoalPolicyFn(networks, GoalBCConfig()), params),
                                   window=DEFAULT_WINDOW)
  actor.set_goal(np.zeros(30, np.float32))
  env = kitchen.make_env(max_episode_steps=10_000)
  obs, _ = env.reset(seed=0)
  actor.select_action(obs["observation"].astype(np.float32))  # compile
  obs, _ = env.reset(seed=0)
  actions = []
  start = time.perf_counter()
  for _ in range(steps):
    actions.append(actor.select_action(obs["observation"].astype(np.float32)))
    obs, *_ = env.step(actions[-1])
    actor.observe(None, None)
  with_policy = steps / (time.perf_counter() - start)
  # Baseline: the same actions replayed from the same reset, so the physics (whose cost depends
  # on contacts) is identical and the ratio isolates the policy's cost.
  env.reset(seed=0)
  start = time.perf_counter()
  for action in actions:
    env.step(action)
  raw = steps / (time.perf_counter() - start)
  report("hierarchical actor (policy inference + env) vs replaying its actions", with_policy, "raw env", raw)


def main():
  networks, learner = learner_benchmark()
  actor_benchmark(networks, learner)


if __name__ == "__main__":
  main()
