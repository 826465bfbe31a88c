"""Play generation env steps/s vs replaying the same generated actions open-loop in the same
environment (identical physics and observation noise, so the ratio is the cost of the scripted
controller, the skills, the perturbation and the recorder), alternated in one run; then the
generator with 2 worker processes vs 1.

Targets (issue: human-paced play): >= 0.9x per worker; 2 workers >= 1.8x one.
"""
import statistics
import time

from benchmarks.common import report
from relay_data import kitchen
from relay_data.play import generator

EPISODES = (1, 2, 3)   # episode indices timed (index 0 warms the env up)
ROUNDS = 3
# Per side of the 2-vs-1 worker comparison. 12 (sessions 8-9) gave 1.17x-2.13x on one box: episode
# lengths vary 2x and results arrive in index order, so a few episodes' timing decided the ratio.
PARALLEL_EPISODES = 40


def _generate(config, indices):
  start = time.perf_counter()
  results = [generator.generate_episode(config, i) for i in indices]
  return results, time.perf_counter() - start


def _replay(env, result):
  """Open-loop replay of an episode's executed actions from its seed; returns seconds."""
  ep = result.episode
  env.unwrapped.tasks_to_complete = set(result.order)
  start = time.perf_counter()
  env.reset(seed=int(ep["seed"]) % (2 ** 31))
  for action in ep["executed_action"][:-1]:
    env.step(action)
  return time.perf_counter() - start


def _parallel_rate(config, workers, episodes):
  """Steady-state env steps/s of `generator.generate`: steps of the results after the first
  `workers` ones over the time from the `workers`-th result to the last. Why: each spawned worker
  pays a one-off start-up (process, imports, env construction: ~3.5 s, one episode's worth twice)
  that one worker in-process does not; over a real run (400 episodes, ~45 min) it is noise, over
  the few episodes a benchmark can afford it would be most of the difference."""
  arrivals, steps = [], []
  for result in generator.generate(config, episodes, workers=workers, progress=False):
    arrivals.append(time.perf_counter())
    steps.append(result.steps)
  return sum(steps[workers:]) / (arrivals[-1] - arrivals[workers - 1])


def main():
  config = generator.GeneratorConfig(seed=0)
  generator.generate_episode(config, 0)  # warm up (env construction)
  env = kitchen.make_env(max_episode_steps=10_000, terminate_on_tasks_completed=False,
                         settings=config.env)
  gen_rates, replay_rates = [], []
  for _ in range(ROUNDS):  # alternate, so load changes hit both sides alike
    results, seconds = _generate(config, EPISODES)
    kept = [r for r in results if r.ok]
    steps = sum(r.steps for r in kept)
    gen_rates.append(sum(r.steps for r in results) / seconds)
    replay_rates.append(steps / sum(_replay(env, r) for r in kept))
  report("play generation vs open-loop replay of its actions (median of rounds)",
         statistics.median(gen_rates), "replay", statistics.median(replay_rates), ">= 0.9x per worker")
  one = _parallel_rate(config, 1, PARALLEL_EPISODES)
  two = _parallel_rate(config, 2, PARALLEL_EPISODES)
  report("play generation, 2 workers vs 1 (steady state, worker start-up excluded)", two, "1 worker", one, ">= 1.8x")


if __name__ == "__main__":
  main()
