"""The relabeled-example datasets written by `pipelines.relabel`: config, features and reader.

A relabeled dataset is a TFDS dataset (one `train` split of flat examples) plus a
`metadata.json` with its lineage: source dataset (name, version, fingerprint), level, windows,
goals_per_step, seed, code version and counts.
"""
import dataclasses
import hashlib
import json
import os
from typing import Dict, Optional

import numpy as np

from relay_data import relabel, rlds_io

LEVELS = ("low", "high", "flat", "final-goal", "bc")


@dataclasses.dataclass(frozen=True)
class RelabelConfig:
  """What to relabel and how. Paper defaults: W_l = 30, W_h spans a whole play sequence.

  level: low | high | flat (one-level GCBC with relabeling) | final-goal (GCBC, goal = last
    state) | bc (no goal).
  window: W_l for low and high, W for flat; unused by final-goal and bc.
  window_high: W_h for high only; must exceed `window`.
  goals_per_step: k goals drawn per step instead of all (bounds output size), None = all.
  seed: with the episode id, seeds the goal sampling of each episode.
  """
  level: str = "low"
  window: int = relabel.DEFAULT_WINDOW
  window_high: int = 280
  goals_per_step: Optional[int] = None
  seed: int = 0

  def __post_init__(self):
    if self.level not in LEVELS:
      raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
    relabel._check_window("window", self.window)  # pylint: disable=protected-access
    relabel._check_k(self.goals_per_step)  # pylint: disable=protected-access
    if self.level == "high":
      relabel._check_window("window_high", self.window_high)  # pylint: disable=protected-access
      if self.window_high <= self.window:
        raise ValueError(f"window_high ({self.window_high}) must be larger than window ({self.window})")

  def to_json(self) -> Dict:
    out = dataclasses.asdict(self)
    if self.level != "high":
      out.pop("window_high")
    if self.level in ("final-goal", "bc"):
      out.pop("window")
      out.pop("goals_per_step")
    return out


def episode_seed(seed: int, episode_key: str) -> int:
  """Stable per-episode seed from the config seed and the episode's id (not Python's hash())."""
  digest = hashlib.sha256(f"{seed}/{episode_key}".encode()).digest()
  return int.from_bytes(digest[:8], "little")


def relabel_episode(config: RelabelConfig, states, goal_states, actions, episode_key: str):
  """Dispatches one episode to the pure relabeling function of `config.level`."""
  seed = episode_seed(config.seed, episode_key)
  if config.level in ("low", "flat"):
    return relabel.low_level_examples(states, goal_states, actions, config.window,
                                      config.goals_per_step, seed)
  if config.level == "high":
    return relabel.high_level_examples(states, goal_states, config.window, config.window_high,
                                       config.goals_per_step, seed)
  if config.level == "final-goal":
    return relabel.final_goal_examples(states, goal_states, actions)
  return relabel.bc_examples(states, actions)


def example_features(level: str, state_dim: int, goal_dim: int, action_dim: int):
  """TFDS features of one relabeled example of `level`."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  dims = {"observation": state_dim, "action": action_dim, "goal": goal_dim, "subgoal": goal_dim}
  keys = {"low": ("observation", "action", "goal"), "flat": ("observation", "action", "goal"),
          "final-goal": ("observation", "action", "goal"), "high": ("observation", "subgoal", "goal"),
          "bc": ("observation", "action")}[level]
  return tfds.features.FeaturesDict(
      {k: tfds.features.Tensor(shape=(dims[k],), dtype=np.float32) for k in keys})


def load(path: str, shuffle_files: bool = False):
  """A relabeled dataset as a `tf.data.Dataset` of dicts (observation, action/subgoal, goal)."""
  return rlds_io.load_builder(path).as_dataset(split="train", shuffle_files=shuffle_files)


def read_lineage(path: str) -> Dict:
  """The lineage record (metadata.json) of a relabeled dataset."""
  return rlds_io.read_metadata(path)


def fingerprint(dataset_dir: str) -> str:
  """Cheap content fingerprint of a TFDS dataset: its dataset_info plus shard names and sizes."""
  dataset_dir = rlds_io.resolve_dataset_dir(dataset_dir)
  h = hashlib.sha256()
  with open(os.path.join(dataset_dir, "dataset_info.json"), "rb") as f:
    info = json.load(f)
  info.pop("dataInfoDir", None)  # Absolute path: not content.
  h.update(json.dumps(info, sort_keys=True).encode())
  for name in sorted(os.listdir(dataset_dir)):
    if ".tfrecord" in name or ".array_record" in name:
      h.update(f"{name}:{os.path.getsize(os.path.join(dataset_dir, name))}".encode())
  return h.hexdigest()[:16]
