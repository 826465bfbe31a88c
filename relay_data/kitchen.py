"""FrankaKitchen-v1 facts shared by the generator, converters and evaluation.

Numbers are from gymnasium-robotics 1.4.2 (`kitchen_env.py`): element qpos indices into the
object part of qpos, their goal values, and the completion threshold. The goal-space state is
the D4RL layout: robot joint positions (9) + object positions (21) = 30 dims, which is
observation[0:9] ++ observation[18:39] of the 59-d env observation.
"""
import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

ENV_ID = "FrankaKitchen-v1"
OBS_DIM = 59
ACTION_DIM = 9
GOAL_DIM = 30
BONUS_THRESH = 0.3  # L2 distance of an element's qpos to its goal counted as done.
ARM = slice(0, 7)  # the 7 arm joints: first in qpos, the observation and the goal space alike
FINGERS = slice(7, 9)  # the two finger joints, right after the arm (qpos and action alike)
# An action moves each joint's position target to the *measured* position + ACTION_SCALE_DT * action
# (FrankaKitchen-v1 scales the action by 2 and integrates it over dt = 0.08 s).
ACTION_SCALE_DT = 2.0 * 0.08
GRIPPER_OPEN = 0.04    # finger joint target of the open hand (m); closed is 0

ELEMENTS: List[str] = ["microwave", "kettle", "light switch", "slide cabinet", "hinge cabinet",
                       "bottom burner", "top burner"]

# Indices into the full qpos (robot 9 + objects 21); goal-space index is the same number.
ELEMENT_QPOS: Dict[str, List[int]] = {
    "bottom burner": [11, 12],
    "top burner": [15, 16],
    "light switch": [17, 18],
    "slide cabinet": [19],
    "hinge cabinet": [20, 21],
    "microwave": [22],
    "kettle": [23, 24, 25, 26, 27, 28, 29],
}
ELEMENT_GOALS: Dict[str, np.ndarray] = {
    "bottom burner": np.array([-0.88, -0.01]),
    "top burner": np.array([-0.92, -0.01]),
    "light switch": np.array([-0.69, -0.05]),
    "slide cabinet": np.array([0.37]),
    "hinge cabinet": np.array([0.0, 1.45]),
    "microwave": np.array([-0.75]),
    "kettle": np.array([-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),
}


def goal_state_from_observation(observation: np.ndarray) -> np.ndarray:
  """[..., 59] env observation -> [..., 30] goal-space state (robot qpos + object qpos)."""
  observation = np.asarray(observation)
  return np.concatenate([observation[..., 0:9], observation[..., 18:39]], axis=-1).astype(np.float32)


def element_distances(goal_states: np.ndarray, elements: Sequence[str] = ELEMENTS, xp=np) -> np.ndarray:
  """[..., 30] goal-space states -> [..., len(elements)] L2 distance of each element's qpos to its
  goal: the environment's completion measure (done below BONUS_THRESH). `xp`: numpy, or
  jax.numpy inside a network."""
  goal_states = xp.asarray(goal_states)
  return xp.stack([xp.linalg.norm(goal_states[..., ELEMENT_QPOS[e]] - ELEMENT_GOALS[e], axis=-1)
                   for e in elements], axis=-1)


def completion_mask(goal_states: np.ndarray, elements: Sequence[str] = ELEMENTS, xp=np) -> np.ndarray:
  """[..., 30] goal-space states -> [..., len(elements)] bool: element within BONUS_THRESH of its goal."""
  return element_distances(goal_states, elements, xp) < BONUS_THRESH


def episode_elements(episode: Mapping[str, Any]) -> List[str]:
  """The elements an episode completed: its `subtask_order` (generated play), or for ingested
  data without one, every element its `completed_tasks` mask marks at any step (kitchen order)."""
  done = [s for s in str(episode.get("subtask_order", "")).split(",") if s]
  if not done and "completed_tasks" in episode:
    done = [ELEMENTS[i] for i in np.flatnonzero(np.asarray(episode["completed_tasks"]).any(axis=0))]
  return done


def set_goal_state(goal_state: np.ndarray, elements: Sequence[str]) -> np.ndarray:
  """Returns a copy of `goal_state` with `elements` moved to their goal values."""
  out = np.array(goal_state, dtype=np.float32, copy=True)
  for e in elements:
    out[..., ELEMENT_QPOS[e]] = ELEMENT_GOALS[e]
  return out


ENV_LIMIT_STEPS = 280  # FrankaKitchen-v1's own episode limit (gymnasium-robotics default)


@dataclasses.dataclass(frozen=True)
class EnvSettings:
  """The environment settings a dataset was recorded with; evaluation and finetuning rebuild the
  same environment from them, so data and evaluation never disagree.

  The default follows RPL's kitchen (robot observation noise ratio 0.1, i.e. about +-0.01 rad on
  the joints); `GYMNASIUM_DEFAULTS` is what FrankaKitchen-v1 uses when nothing is said, and what a
  dataset without recorded settings (play data before 2.0.0, most ingested files) is read as.
  """
  env_id: str = ENV_ID
  robot_noise_ratio: float = 0.1
  object_noise_ratio: float = 0.0005

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Optional[Mapping[str, Any]]) -> "EnvSettings":
    """Settings from a metadata dict. Nothing recorded (None, or a field missing because the
    record predates it) means gymnasium's defaults, which such data was recorded under."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown environment settings {unknown} (known: {sorted(known)})")
    return dataclasses.replace(GYMNASIUM_DEFAULTS, **values)

  def env_kwargs(self) -> Dict[str, float]:
    return {"robot_noise_ratio": self.robot_noise_ratio, "object_noise_ratio": self.object_noise_ratio}


GYMNASIUM_DEFAULTS = EnvSettings(robot_noise_ratio=0.01, object_noise_ratio=0.0005)
DEFAULT_SETTINGS = EnvSettings()


def make_env(tasks_to_complete: Sequence[str] = tuple(ELEMENTS), max_episode_steps: int = ENV_LIMIT_STEPS,
             settings: Optional[EnvSettings] = None, **kwargs):
  """Builds FrankaKitchen-v1 (registers gymnasium-robotics envs on first use) with `settings`
  (default: `DEFAULT_SETTINGS`, RPL's observation noise)."""
  import gymnasium as gym  # pylint: disable=import-outside-toplevel
  import gymnasium_robotics  # pylint: disable=import-outside-toplevel
  gym.register_envs(gymnasium_robotics)
  settings = DEFAULT_SETTINGS if settings is None else settings
  if settings.env_id != ENV_ID:
    raise ValueError(f"environment {settings.env_id!r} is not supported (only {ENV_ID})")
  kwargs.setdefault("disable_env_checker", True)
  return gym.make(ENV_ID, tasks_to_complete=list(tasks_to_complete),
                  max_episode_steps=max_episode_steps, **settings.env_kwargs(), **kwargs)


def share_model(env, source) -> None:
  """Makes the kitchen `env` (as `make_env` builds it) step `source`'s MuJoCo model, with a state
  (MjData) of its own that holds `env`'s current one. Both must be FrankaKitchen-v1 built from
  the same model file; the model is only read by a step, so kitchens sharing one act exactly as
  separate ones. Why: the model is ~57 MB (its meshes); a process stepping N kitchens side by
  side (`relay_agents.finetune.acting.run_episodes`) holds N copies that evict each other from
  the CPU caches (N = 16 steps ~4 % slower than one kitchen; sharing recovers about half) and
  cost N times the memory.

  Reaches into gymnasium-robotics 1.4.2's FrankaRobot, which the kitchen wraps: its `model` and
  `data` (also aliased by the kitchen and the renderer) and `init_qvel`, a view of its data's
  velocities that reset restores."""
  import mujoco  # pylint: disable=import-outside-toplevel
  target, shared = env.unwrapped, source.unwrapped.robot_env.model
  robot = target.robot_env
  if robot.model is shared:
    return
  own = robot.model
  if (own.nq, own.nv, own.nu, own.nbody, own.ngeom, own.nbuffer) != (
      shared.nq, shared.nv, shared.nu, shared.nbody, shared.ngeom, shared.nbuffer):
    raise ValueError("cannot share a kitchen model between environments built from different model files")
  data = mujoco.MjData(shared)
  mujoco.mj_copyData(data, shared, robot.data)
  robot.model, robot.data, robot.init_qvel = shared, data, data.qvel
  target.model, target.data = shared, data
  renderer = getattr(robot, "mujoco_renderer", None)
  if renderer is not None:
    renderer.model, renderer.data = shared, data


def parse_goal(text: str) -> List[str]:
  """'microwave,kettle,light switch,slide cabinet' -> the list of elements (validated)."""
  elements = [e.strip() for e in text.split(",") if e.strip()]
  unknown = [e for e in elements if e not in ELEMENTS]
  if not elements or unknown or len(set(elements)) != len(elements):
    raise ValueError(f"goal {text!r}: need distinct comma-separated elements from "
                     f"{', '.join(ELEMENTS)}" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
  return elements


def completion_order(completed: np.ndarray, elements: Sequence[str] = ELEMENTS) -> List[str]:
  """Elements completed at any step of the episode, in the order they were first completed.

  `completed` is the [L, len(elements)] per-step mask of `completion_mask`.
  """
  completed = np.asarray(completed, bool)
  done = np.flatnonzero(completed.any(axis=0)) if len(completed) else np.zeros(0, int)
  first = [int(np.argmax(completed[:, i])) for i in done]
  return [elements[i] for _, i in sorted(zip(first, done))]
