"""Aggregate `relay eval --json` files (one per seed) into a mean ± std table (markdown)."""
import argparse
import json
import sys
from typing import Dict, List

import numpy as np


def aggregate(runs: List[Dict]) -> Dict[str, Dict[str, List[float]]]:
  out: Dict[str, Dict[str, List[float]]] = {}
  for run in runs:
    for method, result in run.items():
      for split in ("frequent", "heldout"):
        for key in ("success_rate", "step_completion"):
          out.setdefault(method, {}).setdefault(f"{split}/{key}", []).append(result[split][key])
      out[method].setdefault("rollouts", []).extend(len(g["completions"]) for g in result.get("per_goal", []))
  return out


def markdown(agg: Dict[str, Dict[str, List[float]]]) -> str:
  def cell(values, pct=False):
    v = np.asarray(values, float) * (100 if pct else 1)
    return f"{v.mean():.1f} ± {v.std():.1f}" if pct else f"{v.mean():.2f} ± {v.std():.2f}"
  lines = ["| method | seeds | rollouts/goal | success % (demo goals) | avg. elements done | success % (held-out) | "
           "avg. done (held-out) |", "|---|---|---|---|---|---|---|"]
  for method, m in agg.items():
    counts = m.get("rollouts") or [0]
    rollouts = str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    lines.append(f"| {method} | {len(m['frequent/success_rate'])} | {rollouts} | "
                 f"{cell(m['frequent/success_rate'], True)} | "
                 f"{cell(m['frequent/step_completion'])} | {cell(m['heldout/success_rate'], True)} | "
                 f"{cell(m['heldout/step_completion'])} |")
  return "\n".join(lines)


def plot(agg: Dict[str, Dict[str, List[float]]], png_path: str) -> str:
  """Bar chart of mean ± std over seeds: success rate and elements done, demo and held-out goals."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from relay_data import atomic  # pylint: disable=import-outside-toplevel
  methods = list(agg)
  x = np.arange(len(methods))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, label, top in ((axes[0], "success_rate", "success rate", 1.0),
                              (axes[1], "step_completion", "avg. elements done (0-4)", 4.0)):
    for offset, split, color in ((-0.2, "frequent", "tab:blue"), (0.2, "heldout", "tab:orange")):
      values = [np.asarray(agg[m][f"{split}/{key}"], float) for m in methods]
      ax.bar(x + offset, [v.mean() for v in values], 0.4, yerr=[v.std() for v in values], color=color,
             label="demo goals" if split == "frequent" else "held-out goals", capsize=3)
    ax.set_xticks(x, methods)
    ax.set_ylim(0, top)
    ax.set_title(f"{label} (mean ± std over seeds)")
    ax.legend()
  return atomic.save_figure(fig, png_path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("runs", nargs="+", help="eval JSON files")
  parser.add_argument("--out", default=None, help="write the markdown table here too")
  parser.add_argument("--plot", default=None, help="PNG bar chart (mean ± std over seeds)")
  args = parser.parse_args(argv)
  runs = []
  for path in args.runs:
    try:
      with open(path) as f:
        runs.append(json.load(f))
    except (OSError, ValueError) as e:
      parser.error(f"cannot read eval JSON {path}: {e}")
  agg = aggregate(runs)
  table = markdown(agg)
  print(table)
  if args.plot:
    plot(agg, args.plot)
  if args.out:
    from relay_data import atomic  # pylint: disable=import-outside-toplevel
    atomic.write_text(args.out, table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
