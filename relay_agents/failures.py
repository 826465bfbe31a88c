"""Where evaluation rollouts fail, per goal element: not reached, reached but not engaged, or
engaged but not completed.

Why: success rates say how many elements a policy finishes, not why it misses the others. The
three failures need different fixes: a hand that never gets to the handle (the policy goes
elsewhere, or wanders between elements), a hand at the handle that never moves it (contact
acquisition: a grasp closed too early or beside the handle), a door opened part way (the
manipulation itself). docs/results.md reports this split for the trained agents.

Every measure is defined once and applied alike to demos and rollouts, from observed goal-space
states (the kitchen's full qpos, 30-d, as demos store them):
- the hand is the arm's end-effector site, an element's contact point one site on it (the
  microwave handle, a stove knob, the kettle, ...), both placed by MuJoCo's kinematics of the
  state (`ElementGeometry`);
- an element is *engaged* at the first step its distance to its goal (the environment's
  completion measure) has covered `ENGAGE_FRACTION` of the way from where it started to the
  completion threshold, and at least `ENGAGE_MIN` (`engagement_step`): a fraction, because the
  slide cabinet is done after 7 cm while the hinge door needs 1.15 rad;
- *reached* means the hand came within the element's reach radius: the distance from hand to
  contact point at which the demos engage it (their `REACH_QUANTILE` quantile plus
  `REACH_SLACK_M`, since contact sites sit a few centimetres from where a hand engages; see
  `reach_radii`).
The geometry needs MuJoCo; everything else here is pure numpy on those arrays.
"""
import collections
import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from relay_data import kitchen

CONTACT_SITES: Dict[str, str] = {
    "microwave": "microhandle_site",
    "kettle": "kettle_site",
    "light switch": "light_site",
    "slide cabinet": "slide_site",
    "hinge cabinet": "hinge_site2",
    "bottom burner": "knob2_site",
    "top burner": "knob4_site",
}
HAND_SITE = "end_effector"
OUTCOMES = ("done", "engaged, not done", "reached, not engaged", "not reached")
ENGAGE_FRACTION = 0.25  # of the way from the element's start to the completion threshold
ENGAGE_MIN = 0.02       # element qpos units (rad / m): above observation noise and jitter
REACH_QUANTILE = 0.9
REACH_SLACK_M = 0.02


class ElementGeometry:
  """Goal-space states -> hand and contact-point positions, by MuJoCo's forward kinematics."""

  def __init__(self, model=None):
    import mujoco  # pylint: disable=import-outside-toplevel
    if model is None:
      env = kitchen.make_env()
      model = env.unwrapped.model
    if model.nq != kitchen.GOAL_DIM:
      raise ValueError(f"kitchen model has {model.nq} qpos, the goal space {kitchen.GOAL_DIM}")
    self._mujoco, self._model, self._data = mujoco, model, mujoco.MjData(model)
    site = lambda name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)
    self._hand = site(HAND_SITE)
    self._contacts = {e: site(s) for e, s in CONTACT_SITES.items()}

  def __call__(self, goal_states: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """[T, 30] -> (hand [T, 3], {element: contact point [T, 3]})."""
    goal_states = np.asarray(goal_states, np.float64)
    hand = np.zeros((len(goal_states), 3))
    contacts = {e: np.zeros((len(goal_states), 3)) for e in self._contacts}
    for t, state in enumerate(goal_states):
      self._data.qpos[:] = state
      self._mujoco.mj_kinematics(self._model, self._data)
      hand[t] = self._data.site_xpos[self._hand]
      for e, s in self._contacts.items():
        contacts[e][t] = self._data.site_xpos[s]
    return hand, contacts

  def distances(self, goal_states: np.ndarray) -> Dict[str, np.ndarray]:
    """[T, 30] -> {element: [T] hand-to-contact-point distance (m)}."""
    hand, contacts = self(goal_states)
    return {e: np.linalg.norm(hand - c, axis=-1) for e, c in contacts.items()}


def element_errors(goal_states: np.ndarray, elements: Sequence[str] = kitchen.ELEMENTS) -> Dict[str, np.ndarray]:
  """[T, 30] -> {element: [T] L2 distance of its qpos to its goal} (the env's completion measure)."""
  if not elements:  # e.g. a demo that completed nothing
    return {}
  distances = kitchen.element_distances(goal_states, elements)
  return {e: distances[:, i] for i, e in enumerate(elements)}


def engagement_step(errors: np.ndarray, fraction: float = ENGAGE_FRACTION, minimum: float = ENGAGE_MIN,
                    threshold: float = kitchen.BONUS_THRESH) -> Optional[int]:
  """First step at which an element has moved `fraction` of the way from its step-0 distance to
  its goal toward the completion `threshold` (and at least `minimum`); None: never."""
  errors = np.asarray(errors)
  drop = max(fraction * (errors[0] - threshold), minimum)
  moved = np.flatnonzero(errors <= errors[0] - drop)
  return int(moved[0]) if len(moved) else None


def demo_engagement_distances(goal_states: np.ndarray, subtasks: Sequence[str],
                              distances: Mapping[str, np.ndarray]) -> Dict[str, float]:
  """One demo: {element: hand-to-contact distance when it was engaged} for the elements it did.

  The distance is the smallest over the engagement step and the two before it (the hand may
  already be pulling back as the element starts to move)."""
  errors = element_errors(goal_states, subtasks)
  out = {}
  for e in subtasks:
    t = engagement_step(errors[e])
    if t is not None:
      out[e] = float(np.min(distances[e][max(0, t - 2):t + 1]))
  return out


def reach_radii(engagement_distances: Mapping[str, Sequence[float]], quantile: float = REACH_QUANTILE,
                slack: float = REACH_SLACK_M) -> Dict[str, float]:
  """{element: reach radius (m)} from the demos' engagement distances (elements without any are left out)."""
  return {e: float(np.quantile(np.asarray(d), quantile)) + slack for e, d in engagement_distances.items() if len(d)}


def classify(errors: np.ndarray, distances: np.ndarray, done: bool, radius: float) -> str:
  """The outcome (one of `OUTCOMES`) of one goal element in one rollout."""
  if done:
    return OUTCOMES[0]
  if engagement_step(errors) is not None:
    return OUTCOMES[1]
  return OUTCOMES[2] if float(np.min(distances)) <= radius else OUTCOMES[3]


@dataclasses.dataclass
class RolloutAnatomy:
  goal: str
  rollout: int
  outcomes: Dict[str, str]        # goal element (not done at the start) -> outcome
  closest: Dict[str, float]       # goal element -> closest hand-to-contact distance (m)
  reached: List[str]              # every element (goal or not) whose reach radius the hand entered
  engaged_off_goal: List[str]     # elements outside the goal that the rollout moved

  def to_json(self) -> Dict:
    return dataclasses.asdict(self)


def rollout_anatomy(goal_states: np.ndarray, goal_elements: Sequence[str], first_done: Mapping[str, int],
                    distances: Mapping[str, np.ndarray], radii: Mapping[str, float], goal: str = "",
                    rollout: int = 0) -> RolloutAnatomy:
  """Outcome per goal element of one rollout (its observed goal-space states and hand distances)."""
  errors = element_errors(goal_states)
  initially_done = kitchen.completion_mask(goal_states[:1], goal_elements)[0]
  outcomes, closest = {}, {}
  for e, already in zip(goal_elements, initially_done):
    if already or e not in radii:
      continue
    outcomes[e] = classify(errors[e], distances[e], e in first_done, radii[e])
    closest[e] = float(np.min(distances[e]))
  reached = [e for e in kitchen.ELEMENTS if e in radii and float(np.min(distances[e])) <= radii[e]]
  off_goal = [e for e in kitchen.ELEMENTS if e not in goal_elements and engagement_step(errors[e]) is not None]
  return RolloutAnatomy(goal, rollout, outcomes, closest, reached, off_goal)


def summarize(rows: Sequence[RolloutAnatomy]) -> Dict:
  """Counts of each outcome, overall and per element, and what the hand did besides."""
  per_element = collections.defaultdict(collections.Counter)
  for row in rows:
    for e, outcome in row.outcomes.items():
      per_element[e][outcome] += 1
  total = collections.Counter()
  for counts in per_element.values():
    total.update(counts)
  n = max(len(rows), 1)
  return {
      "rollouts": len(rows),
      "outcomes": {o: total[o] for o in OUTCOMES},
      "per_element": {e: {o: per_element[e][o] for o in OUTCOMES} for e in kitchen.ELEMENTS if e in per_element},
      "elements_reached_per_rollout": sum(len(r.reached) for r in rows) / n,
      "off_goal_engaged_per_rollout": sum(len(r.engaged_off_goal) for r in rows) / n,
  }


def format_summary(summary: Dict, radii: Mapping[str, float]) -> str:
  """A text table: per element, how often each outcome happened (and the reach radius used)."""
  head = f"{'element':15s} {'radius':>7s} " + " ".join(f"{o:>21s}" for o in OUTCOMES)
  lines = [head]
  for e, counts in summary["per_element"].items():
    lines.append(f"{e:15s} {radii[e] * 100:5.1f}cm " + " ".join(f"{counts[o]:21d}" for o in OUTCOMES))
  lines.append(f"{'all':15s} {'':7s} " + " ".join(f"{summary['outcomes'][o]:21d}" for o in OUTCOMES))
  lines.append(f"elements whose reach radius the hand entered, per rollout: {summary['elements_reached_per_rollout']:.2f}; "
               f"elements outside the goal moved, per rollout: {summary['off_goal_engaged_per_rollout']:.2f}")
  return "\n".join(lines)


def demo_reach_radii(play_dir: str, geometry: ElementGeometry, episodes: int = 100,
                     progress: bool = True) -> Tuple[Dict[str, float], Dict[str, List[float]]]:
  """(reach radii, engagement distances) from the first `episodes` demos of a kitchen play dataset."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  found = collections.defaultdict(list)
  for ep in tqdm(rlds_io.iter_episodes(play_dir, 0, episodes), total=episodes, desc="demo reach",
                 unit="demo", disable=not progress, leave=False):
    states = ep["goal_state"]
    for e, d in demo_engagement_distances(states, kitchen.episode_elements(ep), geometry.distances(states)).items():
      found[e].append(d)
  return reach_radii(found), dict(found)


def run_anatomy(model_dir: str, goals, rollouts: int, max_steps: int, seed: int,
                geometry: ElementGeometry, radii: Mapping[str, float], progress: bool = True) -> List[RolloutAnatomy]:
  """`rollouts` evaluation rollouts of a model per goal (`evaluation.EvalGoal`s), with the same
  actor and env seeds as `relay eval --seed`, each dissected by `rollout_anatomy`."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from relay_agents import evaluation, models  # pylint: disable=import-outside-toplevel
  settings = models.env_settings(models.read_record(model_dir))
  rows = []
  with tqdm(total=len(goals) * rollouts, desc="rollouts", unit="rollout", disable=not progress, leave=False) as bar:
    for gi, goal in enumerate(goals):
      for r in range(rollouts):
        actor_seed, env_seed = evaluation.rollout_seeds(seed, gi, r)
        result = evaluation.rollout(models.make_actor(model_dir, actor_seed), goal, max_steps, seed=env_seed,
                                    settings=settings, record_states=True)
        states = result.goal_states
        rows.append(rollout_anatomy(states, goal.elements, result.first_done, geometry.distances(states), radii,
                                    goal=goal.name, rollout=r))
        bar.update(1)
  return rows
