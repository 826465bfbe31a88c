"""DART-style execution perturbations for scripted play (generator 2.0.0).

A cloned policy drifts off the demonstrator's path (0.1-0.3 rad of arm motion over tens of
steps, measured by the oracle-subgoal diagnostic) and has then never seen how to come back. The
scripted expert can label any state, so the generator perturbs what is *executed* while every
stored label stays the expert's action from the state actually reached (Laskey et al., DART,
2017): the data then holds corrective actions from off-path states.

Perturbations, all pure functions of a random stream:
- **bursts**: a smooth (half-sine) joint-velocity push in a random arm-joint direction, lasting
  tens of steps, that moves the arm `drift` rad (0.1-0.3 by default) while briefly overpowering
  the expert (see `burst_profile`; measured in tests/test_play_generator.py);
- **detours**: after a subtask, the arm is sent for a few steps toward a random nearby point,
  labelled with the expert's action toward its real next target;
- **near-contact bursts and finger slips** (off in `dart`, on in `dart-near`): the same bursts,
  smaller (a few centimetres), while the open hand makes its final approach onto a handle, knob
  or switch, and the fingers closed early for a few steps there while the label keeps them open.
  Rollouts fail mostly in those last centimetres, closing on air beside the handle (docs/results.md,
  "Where rollouts miss goal elements"), a region where the `dart` bursts never act: this data
  shows the expert's corrections there;
- **policy bursts** (`dagger`): for tens of steps a trained policy (a `Driver`, e.g. the RIL agent
  toward the episode's four elements) acts instead of the expert, in free space and in the final
  approach, while the label stays the expert's action toward the target it held when the burst
  began (Ross et al., DAgger, 2011). Random pushes drift the arm in directions the learner never
  drifts; these bursts put the labels on the states the learner itself reaches.
"""
import dataclasses
import importlib
from typing import Any, Dict, Optional, Protocol, Tuple

import numpy as np

from relay_data import kitchen

ACTION_SCALE_DT = kitchen.ACTION_SCALE_DT  # rad of joint-target motion per unit of action per step
GRIPPER_OPEN = kitchen.GRIPPER_OPEN


@dataclasses.dataclass(frozen=True)
class PerturbConfig:
  """How execution is perturbed. The all-zero config (`NONE`) executes the labels exactly."""
  white_noise: float = 0.0                  # std of i.i.d. Gaussian arm-action noise (action units)
  burst_rate: float = 0.0                   # per-step chance that a burst starts (none active)
  burst_steps: Tuple[int, int] = (10, 30)   # burst length range (steps)
  burst_drift: Tuple[float, float] = (0.1, 0.3)  # open-loop arm drift of a burst (rad, L2)
  detour_prob: float = 0.0                  # chance of a detour after each subtask
  detour_steps: Tuple[int, int] = (4, 10)   # detour length range (steps)
  detour_dist: Tuple[float, float] = (0.08, 0.2)  # detour point distance from the hand (m)
  near_burst_rate: float = 0.0              # per-step chance of a burst in the final approach
  near_burst_steps: Tuple[int, int] = (4, 10)
  near_burst_drift: Tuple[float, float] = (0.02, 0.06)  # rad (L2): a few centimetres at the hand
  slip_rate: float = 0.0                    # per-step chance the fingers close early (final approach)
  slip_steps: Tuple[int, int] = (3, 8)      # how long they are commanded closed
  policy_rate: float = 0.0                  # per-step chance a policy burst starts (needs a Driver)
  policy_steps: Tuple[int, int] = (10, 30)  # policy burst length range (steps)

  @property
  def enabled(self) -> bool:
    return (self.white_noise > 0 or self.burst_rate > 0 or self.detour_prob > 0
            or self.near_burst_rate > 0 or self.slip_rate > 0 or self.policy_rate > 0)

  def to_dict(self) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> "PerturbConfig":
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


NONE = PerturbConfig()
DART = PerturbConfig(white_noise=0.05, burst_rate=0.03, detour_prob=0.5)
DART_NEAR = dataclasses.replace(DART, near_burst_rate=0.08, slip_rate=0.04)
# The random bursts of `dart` replaced by policy bursts of the same rate and length: what changes
# is only who drifts the arm (the learner instead of a random push).
DAGGER = dataclasses.replace(DART, burst_rate=0.0, policy_rate=DART.burst_rate)
PRESETS: Dict[str, PerturbConfig] = {"none": NONE, "dart": DART, "dart-near": DART_NEAR, "dagger": DAGGER}
DEFAULT_PRESET = "dart"


def parse(spec: str) -> PerturbConfig:
  """'none' | 'dart' | 'dart,burst_rate=0.05,detour_prob=0' (a preset, then field overrides)."""
  name, *overrides = [p.strip() for p in spec.split(",") if p.strip()] or [""]
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r} (choose one of {sorted(PRESETS)}, optionally "
                     f"followed by ,field=value overrides)")
  values = PRESETS[name].to_dict()
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep or key not in values:
      raise ValueError(f"{item!r} is not field=value with a field of {sorted(values)}")
    try:
      value = [float(x) for x in raw.split(":")] if isinstance(values[key], list) else float(raw)
    except ValueError as e:
      raise ValueError(f"{key}: {raw!r} is not a number{' range a:b' if isinstance(values[key], list) else ''}") from e
    if isinstance(values[key], list):
      if len(value) != 2 or value[0] > value[1] or value[0] < 0:
        raise ValueError(f"{key}: need a range lo:hi with 0 <= lo <= hi, got {raw!r}")
      if key.endswith("_steps"):
        value = [int(v) for v in value]
    elif value < 0 or (key.endswith(("_rate", "_prob")) and value > 1):
      raise ValueError(f"{key}: {raw!r} is out of range")
    values[key] = value
  return PerturbConfig.from_dict(values)


def burst_profile(rng: np.random.Generator, config: PerturbConfig,
                  near: bool = False) -> Tuple[np.ndarray, np.ndarray]:
  """One burst: ([steps, ACTION_DIM] action offsets, [steps] expert authority taken away).

  The offsets are a half-sine in time along a random unit direction over the 7 arm joints
  (fingers untouched), integrating to `drift` rad of joint-target motion. The closed-loop
  expert would cancel most of a mere offset (measured: a 0.3 rad offset moves a held arm by
  ~0.09 rad), so during the burst the executed arm action is `(1 - weight) * label + offset`, the
  weight following the same half-sine up to 1: like a push that overpowers the arm for a moment,
  it realises about `drift` rad, after which the expert's labels bring the arm back. `near`: the
  near-contact burst's length and drift."""
  lengths, drifts = ((config.near_burst_steps, config.near_burst_drift) if near
                     else (config.burst_steps, config.burst_drift))
  steps = int(rng.integers(lengths[0], lengths[1] + 1))
  drift = rng.uniform(*drifts)
  direction = np.zeros(kitchen.ACTION_DIM)
  arm = rng.normal(size=7)
  direction[kitchen.ARM] = arm / np.linalg.norm(arm)
  weight = np.sin(np.pi * (np.arange(steps) + 0.5) / steps)
  per_step = weight * drift / weight.sum()  # rad per step, summing to `drift`
  return (per_step[:, None] * direction[None, :] / ACTION_SCALE_DT).astype(np.float32), weight


class Driver(Protocol):
  """A policy that takes over execution during a policy burst (deterministic given its inputs)."""

  def start(self, goal_state: np.ndarray, observation: np.ndarray) -> None:
    """A burst begins: act toward `goal_state` (goal space) from `observation` (the env's)."""

  def action(self, observation: np.ndarray) -> np.ndarray:
    """The action to execute at `observation`."""


@dataclasses.dataclass(frozen=True)
class DriverSpec:
  """How a generator worker builds its `Driver`: `factory` ('module:callable') called with
  `model_dir`. A spec rather than an object, so that the data package does not import the agents
  and each worker process loads the model once (`build` is cached per spec)."""
  factory: str
  model_dir: str

  def build(self) -> Driver:
    if self not in _DRIVERS:
      module, _, name = self.factory.partition(":")
      _DRIVERS[self] = getattr(importlib.import_module(module), name)(self.model_dir)
    return _DRIVERS[self]


_DRIVERS: Dict[DriverSpec, Driver] = {}


class Perturber:
  """Per-episode state of the execution perturbation (the active burst).

  `driver` and `goal_state`: the policy that acts during policy bursts and the goal it is given
  (required when `config.policy_rate > 0`)."""

  def __init__(self, config: PerturbConfig, rng: np.random.Generator, driver: Optional[Driver] = None,
               goal_state: Optional[np.ndarray] = None):
    if config.policy_rate > 0 and (driver is None or goal_state is None):
      raise ValueError("policy bursts (policy_rate > 0) need a driver policy and a goal state")
    self.config, self.rng = config, rng
    self.driver, self.goal_state = driver, goal_state
    self._burst: Optional[Tuple[np.ndarray, np.ndarray]] = None
    self._k = 0
    self._slip = 0  # steps the fingers stay commanded closed
    self._policy = 0  # steps left in the active policy burst
    self.drove = False  # the last `execute` returned the driver's action

  @property
  def driving(self) -> bool:
    """A policy burst is under way (the generator then holds the expert's current target)."""
    return self._policy > 0

  def execute(self, label: np.ndarray, free_space: bool = True, near_contact: bool = False,
              observation: Optional[np.ndarray] = None) -> np.ndarray:
    """The action sent to the environment for the expert's `label` this step (`observation`: the
    env's, which a policy burst's driver acts on).

    Bursts run only while the hand moves in free space (`free_space`), or, smaller, while the
    open hand makes its final approach onto a contact (`near_contact`): one in the middle of a
    grasp or a door's arc would mostly make the subtask fail, and failed demonstrations are
    dropped, so they would teach nothing. An active burst ends when contact begins, and so does a
    finger slip.
    """
    c = self.config
    if not c.enabled:
      return label
    if c.policy_rate > 0:
      sent = self._policy_burst(free_space or near_contact, observation)
      self.drove = sent is not None
      if sent is not None:
        return sent
    action = label.astype(np.float64)
    if c.white_noise > 0:  # arm joints only: finger noise would loosen every grasp
      action[kitchen.ARM] += self.rng.normal(0.0, c.white_noise, size=7)
    rate = c.burst_rate if free_space else c.near_burst_rate if near_contact else 0.0
    if not (free_space or near_contact):
      self._burst, self._slip = None, 0
    elif self._burst is None and rate > 0 and self.rng.random() < rate:
      self._burst, self._k = burst_profile(self.rng, c, near=not free_space), 0
    if near_contact and not free_space and self._slip == 0 and c.slip_rate > 0 and self.rng.random() < c.slip_rate:
      self._slip = int(self.rng.integers(c.slip_steps[0], c.slip_steps[1] + 1))
    if self._slip > 0:  # finger targets moved from the expert's (open) to closed
      action[kitchen.FINGERS] -= GRIPPER_OPEN / ACTION_SCALE_DT
      self._slip -= 1
    if self._burst is not None:
      offsets, weight = self._burst
      action[kitchen.ARM] *= 1.0 - weight[self._k]
      action = action + offsets[self._k]
      self._k += 1
      if self._k >= len(weight):
        self._burst = None
    return np.clip(action, -1.0, 1.0).astype(np.float32)

  def _policy_burst(self, allowed: bool, observation) -> Optional[np.ndarray]:
    """The driver's action while a policy burst runs (None otherwise). A burst starts only when no
    other burst or slip is active, and ends early where the expert's contact begins."""
    if not allowed:
      self._policy = 0
      return None
    if self._policy == 0 and self._burst is None and self._slip == 0 and self.rng.random() < self.config.policy_rate:
      lo, hi = self.config.policy_steps
      self._policy = int(self.rng.integers(lo, hi + 1))
      self.driver.start(self.goal_state, observation)
    if self._policy == 0:
      return None
    self._policy -= 1
    return np.clip(np.asarray(self.driver.action(observation), np.float32), -1.0, 1.0)

  def detour(self, hand: np.ndarray) -> Optional[Tuple[np.ndarray, int]]:
    """After a subtask: None, or (a random point near the hand, steps to head for it)."""
    c = self.config
    if c.detour_prob <= 0 or self.rng.random() >= c.detour_prob:
      return None
    direction = self.rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    point = hand + direction * self.rng.uniform(*c.detour_dist)
    return point, int(self.rng.integers(c.detour_steps[0], c.detour_steps[1] + 1))
