"""Learning curves of several `relay finetune` runs on one figure, and a table of their start and end.

    .venv/bin/python scripts/finetune_curves.py runs/dapg_rpl runs/dapg_gcbc --out curves.png [--smooth 5]

Reads each RUN/log.jsonl (one record per NPG iteration, the training episodes' task metrics) and
RUN/run.json (variant, model, goal). Prints, per run, the mean over the first and the last
`--smooth` iterations of elements done and success rate: the training episodes are sampled from
the policy, so these are the stochastic policy's figures; `relay eval --goal` measures the
deterministic one.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from relay_data import atomic  # noqa: E402  pylint: disable=wrong-import-position


def read_run(run_dir: str):
  with open(os.path.join(run_dir, "run.json")) as f:
    run = json.load(f)
  with open(os.path.join(run_dir, "log.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  if not records:
    raise SystemExit(f"{run_dir}: no iterations logged yet")
  return run, records


def label_of(run_dir: str, run) -> str:
  model = os.path.basename(os.path.normpath(run["run"]["model_dir"]))
  return f"{os.path.basename(os.path.normpath(run_dir))} ({run['config']['variant']}, {model})"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs="+", help="finetune run directories")
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--smooth", type=int, default=5, help="moving-average window in iterations (default 5)")
  args = parser.parse_args(argv)
  if args.smooth < 1:
    parser.error("--smooth must be positive")
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  print("| run | iterations | env steps | elements done, first / last | success, first / last |")
  print("|---|---|---|---|---|")
  for run_dir in args.runs:
    run, records = read_run(run_dir)
    steps = np.array([r["env_steps"] for r in records])
    cells = []
    for ax, key in zip(axes, ("elements_done", "success_rate")):
      values = np.array([r[key] for r in records], float)
      k = min(args.smooth, len(values))
      smooth = np.convolve(values, np.ones(k) / k, mode="valid")
      ax.plot(steps[k - 1:], smooth, label=label_of(run_dir, run))
      cells.append(f"{values[:k].mean():.2f} / {values[-k:].mean():.2f}")
    print(f"| {label_of(run_dir, run)} | {len(records)} | {int(steps[-1])} | {cells[0]} | {cells[1]} |")
  for ax, title, top in zip(axes, ("elements done (training episodes)", "success rate (training episodes)"),
                            (4, 1)):
    ax.set_xlabel("env steps")
    ax.set_title(f"{title}, {args.smooth}-iteration mean")
    ax.set_ylim(0, top)
  axes[0].legend(fontsize=7)
  print(f"plot: {atomic.save_figure(fig, args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
