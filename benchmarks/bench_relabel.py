"""Relabel core: vectorized functions vs the literal reference loop (target >= 50x), and absolute
low-level examples/s on one core (target >= 1M/s). Episode: L = 1000 steps, 59-d states."""
import numpy as np

from benchmarks.common import best_time, report
from relay_data import relabel
from tests import relabel_reference as ref


def main():
  rng = np.random.default_rng(0)
  length = 1000
  s = rng.normal(size=(length, 59)).astype(np.float32)
  g = rng.normal(size=(length, 30)).astype(np.float32)
  a = rng.normal(size=(length, 9)).astype(np.float32)
  n_low = len(relabel.low_level_examples(s, g, a, 30)["goal"])
  t_vec = best_time(lambda: relabel.low_level_examples(s, g, a, 30), 5)
  t_ref = best_time(lambda: ref.low_level(s, g, a, 30), 1)
  report("relabel low level (W=30): vectorized vs reference loop", n_low / t_vec, "reference", n_low / t_ref, ">= 50x")
  print(f"  absolute: {n_low / t_vec / 1e6:.2f}M low-level examples/s on one core (target >= 1M/s)")
  n_high = len(relabel.high_level_examples(s, g, 30, 280)["goal"])
  t_vec = best_time(lambda: relabel.high_level_examples(s, g, 30, 280), 3)
  t_ref = best_time(lambda: ref.high_level(s, g, 30, 280), 1)
  report("relabel high level (W_l=30, W_h=280): vectorized vs reference", n_high / t_vec, "reference", n_high / t_ref, ">= 50x")
  t_k = best_time(lambda: relabel.high_level_examples(s, g, 30, 280, goals_per_step=10), 5)
  n_k = len(relabel.high_level_examples(s, g, 30, 280, goals_per_step=10)["goal"])
  print(f"  high level with goals_per_step=10: {n_k / t_k / 1e6:.2f}M examples/s")


if __name__ == "__main__":
  main()
