"""Pace of play: steps per subtask, from any dataset's per-step completion masks.

Relay learning depends on the low-level window W_l being a fraction of a subtask (the paper's
W_l = 30 is about half of a human subtask; its ablation loses most success at W_l = 90), so the
pace of a play dataset decides which windows fit it. A subtask's steps are counted from the
previous element's first completion (the first from the episode start) to this element's first
completion: what a person would time with a stopwatch, for our scripted play and ingested data
alike.
"""
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from relay_data import kitchen

# Human kitchen play (RPL / D4RL / relay-kitchen demos), for comparison in reports.
HUMAN_STEPS_PER_SUBTASK = (57, 63)
HUMAN_STEPS_PER_EPISODE = (227, 252)  # 4-subtask episodes


def subtask_steps(completed: np.ndarray, elements: Sequence[str] = kitchen.ELEMENTS) -> List[Tuple[str, int]]:
  """[L, len(elements)] per-step completion mask -> [(element, steps it took)] in completion order."""
  completed = np.asarray(completed, bool)
  if completed.ndim != 2 or not len(completed):
    return []
  done = np.flatnonzero(completed.any(axis=0))
  first = sorted((int(np.argmax(completed[:, i])), elements[i]) for i in done)
  out, previous = [], 0
  for step, element in first:
    out.append((element, step - previous))
    previous = step
  return out


def _stats(values: Iterable[int]) -> Dict[str, float]:
  v = np.asarray(list(values), float)
  if not len(v):
    return {"n": 0}
  return {"n": int(len(v)), "median": float(np.median(v)), "mean": float(v.mean()),
          "p95": float(np.percentile(v, 95))}


def summarize(steps_per_element: Dict[str, List[int]]) -> Dict:
  """{element: [steps, ...]} -> JSON-able stats per element and over all subtasks."""
  return {"per_element": {e: _stats(steps_per_element[e]) for e in kitchen.ELEMENTS if steps_per_element.get(e)},
          "all": _stats(s for e in steps_per_element for s in steps_per_element[e])}


def format_pace(summary: Dict, episode_lengths: Sequence[int] = ()) -> List[str]:
  """Text lines for `relay data info`, with human play's pace beside ours."""
  lines = []
  total = summary.get("all", {})
  if total.get("n"):
    lo, hi = HUMAN_STEPS_PER_SUBTASK
    lines.append(f"pace: steps per subtask median {total['median']:.0f}, mean {total['mean']:.1f}, "
                 f"p95 {total['p95']:.0f} over {total['n']} subtasks (human play: ~{lo}-{hi})")
    for element, st in summary["per_element"].items():
      lines.append(f"  {element:14s} median {st['median']:6.0f}  mean {st['mean']:6.1f}  p95 {st['p95']:6.0f}  (n={st['n']})")
  if len(episode_lengths):
    lengths = np.asarray(episode_lengths)
    lo, hi = HUMAN_STEPS_PER_EPISODE
    lines.append(f"episode length: median {np.median(lengths):.0f}, p95 {np.percentile(lengths, 95):.0f} "
                 f"(human 4-subtask play: ~{lo}-{hi})")
  return lines
