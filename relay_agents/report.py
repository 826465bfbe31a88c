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
  return out


def markdown(agg: Dict[str, Dict[str, List[float]]]) -> str:
  def cell(values, pct=False):
    v = np.asarray(values, float) * (100 if pct else 1)
    return f"{v.mean():.1f} ± {v.std():.1f}" if pct else f"{v.mean():.2f} ± {v.std():.2f}"
  lines = ["| method | seeds | success % (demo goals) | avg. elements done | success % (held-out) | avg. done (held-out) |",
           "|---|---|---|---|---|---|"]
  for method, m in agg.items():
    lines.append(f"| {method} | {len(m['frequent/success_rate'])} | {cell(m['frequent/success_rate'], True)} | "
                 f"{cell(m['frequent/step_completion'])} | {cell(m['heldout/success_rate'], True)} | "
                 f"{cell(m['heldout/step_completion'])} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("runs", nargs="+", help="eval JSON files")
  parser.add_argument("--out", default=None, help="write the markdown table here too")
  args = parser.parse_args(argv)
  runs = [json.load(open(p)) for p in args.runs]
  table = markdown(aggregate(runs))
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
