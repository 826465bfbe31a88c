"""Timing helpers: best-of-N wall time, and a result line format shared by every benchmark."""
import time
from typing import Callable


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def report(name: str, value: float, baseline_name: str, baseline: float, target: str = "") -> str:
  ratio = value / baseline if baseline else float("nan")
  line = f"{name}: {ratio:.2f}x {baseline_name}  ({value:,.0f} vs {baseline:,.0f} per s){'  target ' + target if target else ''}"
  print(line, flush=True)
  return line
