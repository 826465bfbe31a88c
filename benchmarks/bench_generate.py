"""Play generation env-steps/s vs raw FrankaKitchen-v1 random-action steps/s, one worker, same run
(target >= 0.8x)."""
import time

from benchmarks.common import report
from relay_data import kitchen
from relay_data.play import generator


def raw_steps_per_s(steps=2000):
  env = kitchen.make_env(max_episode_steps=10_000)
  env.reset(seed=0)
  env.action_space.seed(0)
  start = time.perf_counter()
  for _ in range(steps):
    env.step(env.action_space.sample())
  return steps / (time.perf_counter() - start)


def main():
  config = generator.GeneratorConfig(seed=0)
  generator.generate_episode(config, 0)  # warm up (env construction)
  raw = raw_steps_per_s()
  start = time.perf_counter()
  steps = sum(generator.generate_episode(config, i).steps for i in range(1, 4))
  gen = steps / (time.perf_counter() - start)
  report("play generation vs raw random-action env", gen, "raw env", raw, ">= 0.8x per worker")


if __name__ == "__main__":
  main()
