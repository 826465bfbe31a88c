"""Summaries of relay datasets for `relay data info`: counts, subtask coverage, orders, lineage."""
import collections
import dataclasses
import os
from typing import Dict, List, Optional

import numpy as np

from relay_data import atomic, kitchen, pace, rlds_io
from relay_data.errors import DataError


@dataclasses.dataclass
class PlaySummary:
  """What a play dataset holds."""
  name: str
  episodes: int
  steps: int
  lengths: List[int]
  coverage: Dict[str, int]           # element -> episodes that completed it
  orders: collections.Counter        # "a > b > c > d" -> episodes
  metadata: Dict
  subtask_steps: Dict[str, List[int]] = dataclasses.field(default_factory=dict)  # element -> steps (pace)
  driven_steps: Optional[int] = None  # steps a trained policy drove (DAgger play); None: not recorded


def summarize_play(path: str) -> PlaySummary:
  """Reads every episode once (steps count, completion masks, orders)."""
  lengths, coverage, orders = [], collections.Counter(), collections.Counter()
  steps_per_element = collections.defaultdict(list)
  driven = None
  for ep in rlds_io.iter_episodes(path):
    lengths.append(int(ep["observation"].shape[0]))
    if "policy_driven" in ep:
      driven = (driven or 0) + int(ep["policy_driven"].sum())
    if "completed_tasks" in ep:
      order = kitchen.completion_order(ep["completed_tasks"])
      for element, steps in pace.subtask_steps(ep["completed_tasks"]):
        steps_per_element[element].append(steps)
    else:
      order = kitchen.episode_elements(ep)
    coverage.update(order)
    orders[" > ".join(order) or "(none)"] += 1
  builder = rlds_io.load_builder(path)
  return PlaySummary(name=builder.info.name, episodes=len(lengths), steps=int(sum(lengths)),
                     lengths=lengths, coverage={e: coverage.get(e, 0) for e in kitchen.ELEMENTS},
                     orders=orders, metadata=rlds_io.read_metadata(path),
                     subtask_steps=dict(steps_per_element), driven_steps=driven)


def format_play(summary: PlaySummary, top: int = 10) -> str:
  lines = [f"dataset {summary.name}: {summary.episodes} episodes, {summary.steps} steps"]
  if summary.lengths:
    lengths = np.array(summary.lengths)
    lines.append(f"episode length: min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
  lines.extend(pace.format_pace(pace.summarize(summary.subtask_steps), summary.lengths))
  if summary.driven_steps is not None:
    driver = summary.metadata.get("perturb", {}).get("driver", {})
    lines.append(f"policy-driven steps (DAgger play): {summary.driven_steps} "
                 f"({100.0 * summary.driven_steps / max(summary.steps, 1):.1f}%), driver {driver.get('model', '?')} "
                 f"(fingerprint {driver.get('fingerprint', '?')})")
  lines.append("subtask coverage (episodes completing each element):")
  for element, count in summary.coverage.items():
    lines.append(f"  {element:14s} {count:6d}  ({100.0 * count / max(summary.episodes, 1):5.1f}%)")
  lines.append(f"subtask orders: {len(summary.orders)} distinct; most frequent:")
  for order, count in summary.orders.most_common(top):
    lines.append(f"  {count:5d}  {order}")
  for key in ("generator_version", "holdout", "source", "format"):
    if key in summary.metadata:
      lines.append(f"{key}: {summary.metadata[key]}")
  return "\n".join(lines)


def plot_play(summary: PlaySummary, png_path: str, top: int = 15) -> str:
  """Writes a PNG: episode-length histogram and subtask-order frequencies (written atomically)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(18, 4.5), gridspec_kw={"width_ratios": [1, 1, 1.6]})
  ax1.hist(summary.lengths, bins=min(30, max(5, len(set(summary.lengths)))), color="tab:blue")
  ax1.set_xlabel("episode length (steps)")
  ax1.set_ylabel("episodes")
  ax1.set_title(f"{summary.name}: {summary.episodes} episodes")
  per = [summary.subtask_steps.get(e, []) for e in kitchen.ELEMENTS]
  ax3.hist([p for p in per if p], bins=20, stacked=True, label=[e for e, p in zip(kitchen.ELEMENTS, per) if p])
  lo, hi = pace.HUMAN_STEPS_PER_SUBTASK
  ax3.axvspan(lo, hi, color="grey", alpha=0.3, label="human play")
  ax3.set_xlabel("steps per subtask")
  ax3.set_ylabel("subtasks")
  ax3.set_title("pace (steps since the previous completion)")
  ax3.legend(fontsize=7)
  common = summary.orders.most_common(top)
  ax2.barh([o for o, _ in common][::-1], [c for _, c in common][::-1], color="tab:orange")
  ax2.set_xlabel("episodes")
  ax2.set_title(f"subtask orders ({len(summary.orders)} distinct, top {len(common)})")
  ax2.tick_params(axis="y", labelsize=7)
  return atomic.save_figure(fig, png_path)


def is_relabeled(path: str) -> bool:
  return rlds_io.read_metadata(path).get("created_by") == "pipelines.relabel"


def format_relabeled(path: str) -> str:
  lineage = rlds_io.read_metadata(path)
  missing = [k for k in ("source", "counts", "num_shards", "config", "code_version") if k not in lineage]
  if missing:
    raise DataError(f"lineage record lacks {', '.join(missing)}; the dataset is damaged",
                    path=os.path.join(rlds_io.resolve_dataset_dir(path), rlds_io.METADATA_FILE))
  builder = rlds_io.load_builder(path)
  src, counts = lineage["source"], lineage["counts"]
  lines = [f"relabeled dataset {builder.info.name}: {counts['examples_written']} examples "
           f"in {lineage['num_shards']} shard(s)",
           f"features: {', '.join(f'{k} {tuple(v.shape)}' for k, v in builder.info.features.items())}",
           f"config: {lineage['config']}",
           f"source: {src['name']} {src['version']} (fingerprint {src['fingerprint']}, "
           f"{src['num_episodes']} episodes) at {src['path']}",
           f"counts: {counts}",
           f"code: {lineage['code_version']}"]
  return "\n".join(lines)


def describe(path: str, plot: Optional[str] = None) -> str:
  """Text description of any relay dataset; writes the PNG plot for play datasets."""
  if is_relabeled(path):
    return format_relabeled(path)
  summary = summarize_play(path)
  text = format_play(summary)
  if plot:
    text += f"\nplot: {plot_play(summary, plot)}"
  return text
