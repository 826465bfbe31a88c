"""Observation spec and goal space: what a dataset's observation vectors are, and its goals.

Every dataset and every model records a `DataSpec` (metadata key `spec`):
  observation  which environment produced the vectors and in which layout, as indices into that
               environment's own observation, so evaluation can map the environment's observation
               to what a model was trained on;
  goal space   which observation dims form the goal (its width) and the per-element completion
               test that turns a goal-space state into "which subtasks are done".

Kitchen layouts (the environment is FrankaKitchen-v1, 59-d observation):
  franka-kitchen-v1  the env's own 59-d observation (robot qpos 9, qvel 9, object qpos 21, qvel 20)
  d4rl               the paper's / D4RL's 30-d robot + object positions (no velocities)
Both have the same 30-d goal space `kitchen-qpos` (robot qpos 9 + object qpos 21) whose elements
are tested as the env does (`kitchen.completion_mask`). Data from anywhere else is `env: none`:
its goal is what the data says (or the observation), it has no completion test, and it trains
but cannot be evaluated in the kitchen.

The environment is a declared choice (`relay ingest --env`), never guessed from a width; within
the kitchen the width names the layout (59 or 30) and any other width is an error.
"""
import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from relay_data import kitchen
from relay_data.errors import DataError

ENVS = ("kitchen", "none")
METADATA_KEY = "spec"

_GOAL_IN_ENV_OBS = tuple(range(0, 9)) + tuple(range(18, 39))  # kitchen goal dims in the 59-d obs
KITCHEN_LAYOUTS: Dict[str, Tuple[int, ...]] = {   # layout -> indices into the env's observation
    "franka-kitchen-v1": tuple(range(kitchen.OBS_DIM)),
    "d4rl": _GOAL_IN_ENV_OBS,
}


def kitchen_goal_indices(obs_dim: int) -> Tuple[int, ...]:
  """The goal-space dims of a kitchen observation, told by its width (each layout has its own)."""
  for layout in KITCHEN_LAYOUTS.values():
    if len(layout) == obs_dim:
      index = {e: i for i, e in enumerate(layout)}
      return tuple(index[e] for e in _GOAL_IN_ENV_OBS)
  widths = ", ".join(f"{name} {len(l)}" for name, l in KITCHEN_LAYOUTS.items())
  raise ValueError(f"a {obs_dim}-d observation is no kitchen layout ({widths})")


@dataclasses.dataclass(frozen=True)
class GoalSpace:
  """The goal vectors' space: `kitchen-qpos` (30-d, with a per-element completion test) or `custom`."""
  name: str
  dim: int

  @property
  def elements(self) -> Tuple[str, ...]:
    """Goal elements with a completion test (none for a custom goal space)."""
    return tuple(kitchen.ELEMENTS) if self.name == "kitchen-qpos" else ()

  def completion_mask(self, goal_states: np.ndarray, elements: Optional[Sequence[str]] = None) -> np.ndarray:
    """[..., dim] goal-space states -> [..., len(elements)] bool (the env's own test)."""
    if not self.elements:
      raise ValueError(f"goal space {self.name!r} has no completion test")
    return kitchen.completion_mask(goal_states, self.elements if elements is None else elements)


KITCHEN_GOAL_SPACE = GoalSpace("kitchen-qpos", kitchen.GOAL_DIM)


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
  """What one observation vector is: environment, layout and width."""
  env: str
  layout: str
  dim: int

  def __post_init__(self):
    if self.env not in ENVS:
      raise ValueError(f"env must be one of {', '.join(ENVS)}, got {self.env!r}")
    if self.env == "kitchen":
      if self.layout not in KITCHEN_LAYOUTS:
        raise ValueError(f"kitchen layout must be one of {', '.join(KITCHEN_LAYOUTS)}, got {self.layout!r}")
      if self.dim != len(KITCHEN_LAYOUTS[self.layout]):
        raise ValueError(f"kitchen layout {self.layout} is {len(KITCHEN_LAYOUTS[self.layout])}-d, not {self.dim}")

  @property
  def evaluable(self) -> bool:
    return self.env == "kitchen"

  def from_env(self, env_observation: np.ndarray) -> np.ndarray:
    """The environment's observation [..., 59] -> this layout [..., dim] (float32)."""
    if not self.evaluable:
      raise ValueError(f"observations of env {self.env!r} cannot be made from the kitchen environment")
    obs = np.asarray(env_observation, np.float32)
    if self.layout == "franka-kitchen-v1":
      return obs
    return obs[..., list(KITCHEN_LAYOUTS[self.layout])]

  def goal_indices(self) -> Optional[Tuple[int, ...]]:
    """Dims of this observation that form the kitchen goal-space state (None: not a kitchen layout)."""
    if self.env != "kitchen":
      return None
    index = {e: i for i, e in enumerate(KITCHEN_LAYOUTS[self.layout])}
    return tuple(index[e] for e in _GOAL_IN_ENV_OBS)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Observation spec + goal space of a dataset or model (metadata key `spec`)."""
  observation: ObservationSpec
  goal_space: GoalSpace

  @property
  def env(self) -> str:
    return self.observation.env

  def goal_state(self, observation: np.ndarray) -> np.ndarray:
    """[..., obs dim] -> [..., goal dim] goal-space state (kitchen layouts only)."""
    idx = self.observation.goal_indices()
    if idx is None:
      raise ValueError(f"env {self.env!r} data has no goal dims in its observation; give goal states")
    return np.asarray(observation, np.float32)[..., list(idx)]

  def to_dict(self) -> Dict:
    return {"observation": dataclasses.asdict(self.observation), "goal_space": dataclasses.asdict(self.goal_space)}

  @classmethod
  def from_dict(cls, d: Dict) -> "DataSpec":
    try:
      return cls(ObservationSpec(**d["observation"]), GoalSpace(**d["goal_space"]))
    except (KeyError, TypeError) as e:
      raise DataError(f"malformed observation/goal spec {d!r}: {e}", field=METADATA_KEY) from e

  def describe(self) -> str:
    o, g = self.observation, self.goal_space
    return f"env {o.env}, {o.dim}-d {o.layout} observation, {g.dim}-d {g.name} goal"

  def require_same(self, other: "DataSpec", mine: str, theirs: str) -> None:
    """Raises a one-line DataError when `other` differs (observation, goal space or env)."""
    if self != other:
      raise DataError(f"{mine} has {self.describe()} but {theirs} has {other.describe()}")


def kitchen_spec(obs_dim: int, where: str = "") -> DataSpec:
  """The kitchen spec of `obs_dim`-wide observations (59: env's own; 30: D4RL positions)."""
  for layout, idx in KITCHEN_LAYOUTS.items():
    if len(idx) == obs_dim:
      return DataSpec(ObservationSpec("kitchen", layout, obs_dim), KITCHEN_GOAL_SPACE)
  raise DataError(f"observations are {obs_dim}-d; the kitchen's are 59-d (FrankaKitchen-v1) or 30-d (D4RL robot "
                  "+ object positions); data from another environment needs env 'none' (relay ingest --env none)",
                  path=where or None, field="observation")


def custom_spec(obs_dim: int, goal_dim: int) -> DataSpec:
  return DataSpec(ObservationSpec("none", "custom", obs_dim), GoalSpace("custom", goal_dim))


def infer_legacy(obs_dim: int, goal_dim: int, fmt: Optional[str] = None) -> DataSpec:
  """Spec of a dataset written before specs were recorded, as the code then treated it:
  59/30 wide = kitchen play or Minari kitchen; 30/30 from D4RL hdf5 = D4RL kitchen; else custom."""
  if (obs_dim, goal_dim) == (kitchen.OBS_DIM, kitchen.GOAL_DIM):
    return kitchen_spec(obs_dim)
  if (obs_dim, goal_dim) == (kitchen.GOAL_DIM, kitchen.GOAL_DIM) and fmt == "d4rl-hdf5":
    return kitchen_spec(obs_dim)
  return custom_spec(obs_dim, goal_dim)


def of_episode_dataset(path: str) -> DataSpec:
  """The spec of an RLDS episode dataset: recorded in its metadata, or inferred for old ones."""
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  meta = rlds_io.read_metadata(path)
  if METADATA_KEY in meta:
    return DataSpec.from_dict(meta[METADATA_KEY])
  obs = rlds_io.load_builder(path).info.features["steps"]["observation"]
  return infer_legacy(int(obs["state"].shape[0]), int(obs["goal_state"].shape[0]), meta.get("format"))


def env_settings_of_metadata(meta: Dict, spec: DataSpec) -> Optional[Dict]:
  """Kitchen settings recorded in a dataset's metadata; a kitchen dataset without the key predates
  it and used gymnasium's defaults; None outside the kitchen."""
  if spec.env != "kitchen":
    return None
  return normalize_env_settings(meta.get("env_settings"))


def normalize_env_settings(settings: Optional[Dict]) -> Dict:
  """Recorded kitchen settings with every field present (missing ones at gymnasium's defaults),
  so records from before a field existed compare equal to the defaults they ran under."""
  return kitchen.EnvSettings.from_dict(settings).to_dict()


def provenance_of_episode_dataset(path: str) -> Dict:
  """{`spec`, `env_settings`} of an episode dataset: what a relabeled dataset's lineage carries on."""
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  spec = of_episode_dataset(path)
  return {METADATA_KEY: spec.to_dict(), "env_settings": env_settings_of_metadata(rlds_io.read_metadata(path), spec)}


def provenance_of_relabeled_dataset(path: str) -> Dict:
  """{`spec`, `env_settings`} of a relabeled dataset: from its lineage, else (older lineages) from
  its source dataset when that is still there, else inferred from its example widths."""
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  lineage = rlds_io.read_metadata(path)
  if METADATA_KEY in lineage:
    spec = DataSpec.from_dict(lineage[METADATA_KEY])
    return {METADATA_KEY: spec.to_dict(), "env_settings": lineage.get("env_settings", env_settings_of_metadata({}, spec))}
  source = lineage.get("source", {}).get("path")
  if source and os.path.exists(source):
    return provenance_of_episode_dataset(source)
  features = rlds_io.load_builder(path).info.features
  obs = int(features["observation"].shape[0])
  goal = int(features["goal"].shape[0]) if "goal" in features else kitchen.GOAL_DIM
  spec = infer_legacy(obs, goal)
  return {METADATA_KEY: spec.to_dict(), "env_settings": env_settings_of_metadata({}, spec)}
