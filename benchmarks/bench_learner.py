"""Learner SGD steps/s fed through Reverb vs the same learner fed from an in-memory array iterator
(target >= 0.9x) for three feed layouts, and hierarchical-actor env-steps/s (policy inference) vs
replaying the same actions."""
import time

import jax
import numpy as np

from benchmarks.common import report
from relay_agents import replay
from relay_agents.gcbc import acting, builder as gcbc_builder, data as gcbc_data, learning, networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import kitchen
from relay_data.relabel import DEFAULT_WINDOW


# (label, GoalBCConfig overrides): the feed layouts compared. train-il ships whole-batch items
# (GoalBCConfig.examples_per_item defaults to batch_size); items of 32 were its default before.
VARIANTS = (
    ("items of 32, 1 SGD step per fetch (the old train-il default)", {"examples_per_item": 32}),
    ("whole-batch items (256), 1 SGD step per fetch (train-il defaults)", {"examples_per_item": 256}),
    ("whole-batch items, 4 SGD steps per fetch", {"examples_per_item": 256, "num_sgd_steps_per_step": 4}),
)


def _rate(learner, sgd_per_call, calls=240, warmup=10):
  """(SGD steps/s, CPU ms per SGD step) over `calls` learner steps (CPU counts every thread:
  the feed's tf.data/Reverb/prefetch threads included)."""
  for _ in range(warmup):
    learner.step()
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(calls):
    learner.step()
  steps = calls * sgd_per_call
  return steps / (time.perf_counter() - start), 1e3 * (time.process_time() - cpu) / steps


def learner_benchmark(rounds=3):
  """Per variant, both learners are built first, then timed in alternation (`rounds` times each)
  and the medians compared, so a burst of load on this shared box hits both sides alike."""
  rng = np.random.default_rng(0)
  n = 50_000
  arrays = {"observation": rng.normal(size=(n, 59)).astype(np.float32),
            "goal": rng.normal(size=(n, 30)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(n, 9)).astype(np.float32)}
  dims = {k: v.shape[1] for k, v in arrays.items()}
  learner = networks = None
  for label, overrides in VARIANTS:
    config = GoalBCConfig(action_chunk=1, hidden_sizes=(256, 256), batch_size=256, **overrides)  # the paper MLP: figures stay comparable
    norm = gcbc_networks.stats_from_examples([arrays], config)
    networks = gcbc_networks.make_networks(89, 9, config, norm)
    memory = learning.make_learner(networks, gcbc_data.array_iterator(arrays, config), config, jax.random.PRNGKey(0))
    builder = gcbc_builder.GoalBCBuilder(config, dims)
    server, address = replay.start_server(builder.make_replay_tables())
    try:
      replay.feed(address, config.table_name, [arrays], sorted(dims), config.examples_per_item, progress=False)
      learner = builder.make_learner(jax.random.PRNGKey(0), networks,
                                     builder.make_dataset_iterator(replay.connect(address)))
      mem, rev = [], []
      for _ in range(rounds):
        mem.append(_rate(memory, config.num_sgd_steps_per_step))
        rev.append(_rate(learner, config.num_sgd_steps_per_step))
    finally:
      server.stop()
    hidden = "x".join(map(str, config.hidden_sizes))
    report(f"learner fed through Reverb vs in-memory arrays, {label} (batch {config.batch_size}, MLP {hidden}, "
           f"{config.head} head; SGD steps, median of {rounds})", float(np.median([r[0] for r in rev])),
           "in-memory", float(np.median([m[0] for m in mem])), ">= 0.9x")
    print(f"  CPU per SGD step: {np.median([r[1] for r in rev]):.2f} ms through Reverb vs "
          f"{np.median([m[1] for m in mem]):.2f} ms in-memory", flush=True)
  return networks, learner


def actor_benchmark(networks, learner, steps=300):
  params = learning.params_of(learner)
  high_config = GoalBCConfig(target="subgoal", hidden_sizes=(256, 256))
  high_networks = gcbc_networks.make_networks(89, 30, high_config, gcbc_networks.Normalization(
      np.zeros(89, np.float32), np.ones(89, np.float32), np.zeros(30, np.float32), np.ones(30, np.float32)))
  high_params = high_networks.policy.init(jax.random.PRNGKey(1))
  actor = acting.HierarchicalActor(acting.GoalPolicy(acting.GoalPolicyFn(high_networks, high_config), high_params),
                                   acting.GoalPolicy(acting.GoalPolicyFn(networks, GoalBCConfig(action_chunk=1, hidden_sizes=(256, 256))), params),
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
