"""Aggregate `relay eval --json` files (one per seed) into a mean ± std table (markdown).

A file given as LABEL=PATH has its methods renamed (LABEL, or LABEL/method when the file holds
several), so the same method evaluated two ways (e.g. `relay eval --replan 1` beside the paper's
cadence) or trained in separate runs gets its own row.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

import numpy as np


ENV_HORIZON = "280"  # FrankaKitchen-v1's own limit: `relay eval` reports it beside its --max-steps


def aggregate(runs: List[Dict]) -> Dict[str, Dict[str, List[float]]]:
  """method -> "split/metric" (and "split/metric@280" when the runs report the env's own limit
  beside a longer horizon) -> one value per run; a split a run has no goals for adds nothing."""
  out: Dict[str, Dict[str, List[float]]] = {}
  for run in runs:
    for method, result in run.items():
      m = out.setdefault(method, {})
      at_limit = result.get("horizons", {}).get(ENV_HORIZON) if str(result.get("max_steps")) != ENV_HORIZON else None
      for split in ("frequent", "heldout"):
        for key in ("success_rate", "step_completion"):
          for name, source in ((f"{split}/{key}", result), (f"{split}/{key}@{ENV_HORIZON}", at_limit)):
            value = source.get(split, {}).get(key) if source else None
            if value is not None:
              m.setdefault(name, []).append(value)
      m.setdefault("rollouts", []).extend(len(g["completions"]) for g in result.get("per_goal", []))
  return out


def markdown(agg: Dict[str, Dict[str, List[float]]]) -> str:
  def cell(values, pct=False):
    if not values:
      return "-"
    v = np.asarray(values, float) * (100 if pct else 1)
    return f"{v.mean():.1f} ± {v.std():.1f}" if pct else f"{v.mean():.2f} ± {v.std():.2f}"
  limit = any(f"frequent/success_rate@{ENV_HORIZON}" in m for m in agg.values())
  head = ["method", "seeds", "rollouts/goal", "success % (demo goals)", "avg. elements done", "success % (held-out)",
          "avg. done (held-out)"]
  if limit:
    head += [f"success % (demo goals, {ENV_HORIZON} steps)", f"avg. done ({ENV_HORIZON} steps)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, m in agg.items():
    counts = m.get("rollouts") or [0]
    rollouts = str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    row = [method, str(len(m.get("frequent/success_rate", []))), rollouts,
           cell(m.get("frequent/success_rate"), True), cell(m.get("frequent/step_completion")),
           cell(m.get("heldout/success_rate"), True), cell(m.get("heldout/step_completion"))]
    if limit:
      row += [cell(m.get(f"frequent/success_rate@{ENV_HORIZON}"), True),
              cell(m.get(f"frequent/step_completion@{ENV_HORIZON}"))]
    lines.append("| " + " | ".join(row) + " |")
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
      values = [np.asarray(agg[m].get(f"{split}/{key}") or [0.0], float) for m in methods]
      ax.bar(x + offset, [v.mean() for v in values], 0.4, yerr=[v.std() for v in values], color=color,
             label="demo goals" if split == "frequent" else "held-out goals", capsize=3)
    ax.set_xticks(x, methods)
    ax.set_ylim(0, top)
    ax.set_title(f"{label} (mean ± std over seeds)")
    ax.legend()
  return atomic.save_figure(fig, png_path)


def labelled(arg: str) -> Tuple[str, str]:
  """"LABEL=PATH" -> (LABEL, PATH); an existing path, or one without "=", has no label."""
  if os.path.exists(arg) or "=" not in arg:
    return "", arg
  label, path = arg.split("=", 1)
  return label, path


def relabel_methods(run: Dict, label: str) -> Dict:
  """The run's methods under LABEL (one method) or LABEL/method (several); no label: unchanged."""
  if not label:
    return run
  if len(run) == 1:
    return {label: next(iter(run.values()))}
  return {f"{label}/{method}": result for method, result in run.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("runs", nargs="+", metavar="[LABEL=]PATH",
                      help="eval JSON files; LABEL= renames the file's methods (rows merge by name)")
  parser.add_argument("--out", default=None, help="write the markdown table here too")
  parser.add_argument("--plot", default=None, help="PNG bar chart (mean ± std over seeds)")
  args = parser.parse_args(argv)
  runs = []
  for arg in args.runs:
    label, path = labelled(arg)
    try:
      with open(path) as f:
        runs.append(relabel_methods(json.load(f), label))
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
