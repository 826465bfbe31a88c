"""Generate unsegmented kitchen play: 4 subtasks per episode, random order, no reset between.

Each episode picks four of the seven kitchen elements in a random order (never one of the
held-out compound goals), runs the closed-loop skill of each in turn, retries a subtask whose
skill ended without it done (or with it undone again as the hand let go), and keeps the episode
only if the environment's own completion test reports all four done, all four are still done at
its end, and no held-out set got completed along the way. Episodes are deterministic functions
of (seed, index), so the parallel generator returns the same dataset for any number of workers.

Version 2.0.0 plays at the pace of human kitchen play (~60 steps per subtask, the
paper's W_l = 30 spans about half a subtask), in an environment with RPL's observation noise
(`kitchen.EnvSettings`), and stores clean labels: a step's `action` is the demonstrator's
intended action from the state it observed, and `executed_action` what was actually sent to the
environment after DART-style perturbations (`relay_data.play.perturb`), so the data holds
corrective actions from off-path states. A step's `reward` is the env reward of that step's
action (RLDS alignment). Versions 1.x were ~3.7x slower than human play and stored the executed,
noise-corrupted action as the label. Version 2.1.0 keeps completed subtasks done: in 2.0.0 a
handle slipping in the fingers let a door sag, the skill's command followed it and the hand shut
the door again (52 % of microwave openings, 30 % of hinge-cabinet ones were undone by the
episode's end), so the demos taught opening and re-closing; and the kettle, pushed on after it
had reached its spot, was carried back out of it (done at the end of 5 of 12 kettle skills
traced from reset; 24 of 24 now). Version 2.2.0 pulls a door open with the hand keeping its
orientation instead of turning with the door, which let the handle slip out of the fingers in
about 4 of 10 door skills; the retries that followed were what kept the pace above ~70 steps per
subtask (skills.DOOR_GRIPPER_TURN). Version 2.3.0 closes the fingers on the hinge cabinet's
handle only once the hand is within 2 cm of it, approaching again otherwise (skills.grasp): 2.2.0
closed them wherever its final approach had stopped, on air in most of its failed hinge tries.
Version 2.4.0 starts the kettle push from the home posture (skills.KETTLE_POSTURE_TOL) and grasps a
stove knob the way 2.3.0 grasps the hinge handle, within skills.KNOB_REACH of it: the loose re-home
between subtasks left the arm far from home, where the push stalled and the knob's fingers closed on
air, and those retries made most of 2.3.0's episode-length tail.
"""
import dataclasses
import hashlib
import itertools
import multiprocessing
import signal
import threading
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from relay_data import kitchen
from relay_data.play import perturb as perturb_lib

GENERATOR_VERSION = "2.4.0"  # = the kitchen_play TFDS version; bump when episodes change
ALL_SETS: List[FrozenSet[str]] = [frozenset(c) for c in itertools.combinations(kitchen.ELEMENTS, 4)]


def default_holdout(num: int = 3) -> List[FrozenSet[str]]:
  """`num` of the 35 four-element sets, fixed for all datasets (so evaluations compare)."""
  idx = np.random.default_rng(2019).choice(len(ALL_SETS), size=num, replace=False)
  return [ALL_SETS[i] for i in sorted(idx)]


def parse_holdout(spec: str) -> List[FrozenSet[str]]:
  """'microwave+kettle+light switch+top burner;...' -> sets. 'none' -> []. 'default' -> default."""
  spec = spec.strip()
  if spec in ("", "none"):
    return []
  if spec == "default":
    return default_holdout()
  out = []
  for part in spec.split(";"):
    items = frozenset(s.strip() for s in part.split("+") if s.strip())
    unknown = sorted(items - set(kitchen.ELEMENTS))
    if unknown or len(items) != 4:
      raise ValueError(f"held-out set {part!r}: need 4 distinct elements of {kitchen.ELEMENTS}"
                       + (f"; unknown: {unknown}" if unknown else ""))
    out.append(items)
  return out


def format_set(s) -> str:
  return "+".join(e for e in kitchen.ELEMENTS if e in s)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """What play to generate. `holdout` sets are never completed together in any kept episode."""
  seed: int = 0
  subtasks: int = 4
  holdout: Tuple[FrozenSet[str], ...] = tuple(default_holdout())
  perturb: perturb_lib.PerturbConfig = perturb_lib.PRESETS[perturb_lib.DEFAULT_PRESET]
  env: kitchen.EnvSettings = kitchen.DEFAULT_SETTINGS
  lead_gain: float = 2.0           # markovian controller: how far the command leads the arm
  max_attempts: int = 3            # tries per subtask before the episode is dropped
  max_steps: int = 800             # hard cap on an episode's env steps
  driver: Optional[perturb_lib.DriverSpec] = None  # the policy of `perturb.policy_rate` bursts


@dataclasses.dataclass
class EpisodeResult:
  index: int
  ok: bool
  reason: str
  order: List[str]
  attempts: Dict[str, int]         # element -> attempts used
  completed: List[str]             # scripted subtasks completed (env's own test)
  steps: int = 0                   # env steps taken (kept or not)
  completion_steps: Dict[str, int] = dataclasses.field(default_factory=dict)  # element -> first step done
  episode: Optional[Dict] = None   # RLDS-ready arrays when ok


def episode_seed(seed: int, index: int) -> int:
  digest = hashlib.sha256(f"kitchen-play/{seed}/{index}".encode()).digest()
  return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: fits the int64 `seed` field


def sample_order(rng: np.random.Generator, subtasks: int, holdout: Sequence[FrozenSet[str]]) -> List[str]:
  allowed = [s for s in itertools.combinations(kitchen.ELEMENTS, subtasks) if frozenset(s) not in holdout]
  if not allowed:
    raise ValueError("every element set is held out")
  chosen = list(allowed[rng.integers(len(allowed))])
  rng.shuffle(chosen)
  return chosen


FREE_SPACE_M = 0.1  # hand farther than this from its target, gripper open: no contact expected


def in_free_space(hand: np.ndarray, target: Optional[np.ndarray], grip: float) -> bool:
  """Free space (where the `dart` bursts act): re-homing (no target), or heading for a point more
  than FREE_SPACE_M away with the hand open."""
  return target is None or (grip > 0 and np.linalg.norm(hand - target) > FREE_SPACE_M)


class _Env:
  """One kitchen env per process and settings (MuJoCo models are not picklable)."""
  _instances: Dict[kitchen.EnvSettings, object] = {}

  @classmethod
  def get(cls, settings: kitchen.EnvSettings, max_steps: int):
    if settings not in cls._instances:
      cls._instances[settings] = kitchen.make_env(max_episode_steps=max_steps + 50, settings=settings,
                                                  terminate_on_tasks_completed=False)
    return cls._instances[settings]


def generate_episode(config: GeneratorConfig, index: int) -> EpisodeResult:
  """Runs one play episode; deterministic in (config, index). BLAS runs single-threaded meanwhile
  (`controller.single_threaded_blas`: the controller's small solves only lose from threads)."""
  from relay_data.play import controller as ctl  # pylint: disable=import-outside-toplevel
  with ctl.single_threaded_blas():
    return _generate_episode(config, index)


def _generate_episode(config: GeneratorConfig, index: int) -> EpisodeResult:
  from relay_data.play import controller as ctl  # pylint: disable=import-outside-toplevel
  from relay_data.play import skills  # pylint: disable=import-outside-toplevel
  seed = episode_seed(config.seed, index)
  rng = np.random.default_rng(seed)
  order = sample_order(rng, config.subtasks, config.holdout)
  env = _Env.get(config.env, config.max_steps)
  env.unwrapped.tasks_to_complete = set(order)
  env.unwrapped.goal = {e: kitchen.ELEMENT_GOALS[e] for e in order}
  obs, _ = env.reset(seed=seed % (2 ** 31))
  # The perturbation draws from its own stream, so with and without it an episode has the same
  # order and waypoints (the ablation changes one thing). A policy burst's driver is given the
  # episode's four elements as its goal, as evaluation gives a compound goal.
  driver = None
  if config.perturb.policy_rate > 0:
    if config.driver is None:
      raise ValueError("perturbation with policy bursts (policy_rate > 0) needs a driver model")
    driver = config.driver.build()
  perturber = perturb_lib.Perturber(
      config.perturb, np.random.default_rng([seed, 1]), driver,
      kitchen.set_goal_state(kitchen.goal_state_from_observation(obs["observation"]), order))
  u = env.unwrapped
  arm = ctl.ArmController(u.model, u.data, ctl.ControllerConfig(lead_gain=config.lead_gain))
  scene = skills.Scene(u.model, u.data, arm)
  observations = [obs["observation"].astype(np.float32)]
  actions, executed, rewards, masks = [], [], [], [kitchen.completion_mask(u.data.qpos[:30])]
  driven = []  # per step: the executed action was the driver's (policy bursts)
  attempts: Dict[str, int] = {}
  completions: List[str] = []
  first_done: Dict[str, int] = {}

  def step(label, sent) -> None:
    nonlocal obs
    obs, reward, _, _, info = env.step(sent)
    actions.append(label)
    executed.append(sent)
    driven.append(perturber.drove)
    rewards.append(np.float32(reward))
    observations.append(obs["observation"].astype(np.float32))
    masks.append(kitchen.completion_mask(u.data.qpos[:30]))
    completions[:] = list(info["episode_task_completions"])  # env mutates its list: copy
    for e in completions:
      first_done.setdefault(e, len(actions))

  def run(commands, detour=None) -> bool:
    """Executes a skill. `detour` (point, steps): first head for a random point for a few steps,
    labelled with the skill's first command (the expert's action toward its real target)."""
    commands = iter(commands)
    first = next(commands, None)
    if first is None:
      return True
    if detour is not None:
      point, steps = detour
      for _ in range(steps):
        if len(actions) >= config.max_steps:
          return False
        label = arm.action(obs["observation"], *first)
        step(label, perturber.execute(arm.action(obs["observation"], point), observation=obs["observation"]))
    for pos, rot, grip in itertools.chain([first], commands):
      while True:  # one step; more while a policy burst holds the expert's current target
        if len(actions) >= config.max_steps:
          return False
        label = arm.action(obs["observation"], pos, rot, grip)
        step(label, perturber.execute(label, free_space=in_free_space(arm.position, pos, grip),
                                      near_contact=scene.final_approach, observation=obs["observation"]))
        if not perturber.driving:
          break
    return True

  reason = "ok"
  for i, element in enumerate(order):
    done = False
    for attempt in range(1, config.max_attempts + 1):
      attempts[element] = attempt
      detour = perturber.detour(arm.position) if i > 0 or attempt > 1 else None
      commands = skills.SKILLS[element](scene, rng)
      if i > 0 or attempt > 1:
        commands = itertools.chain(skills.rehome(scene, rng), commands)
      if not run(commands, detour):
        reason = f"step limit ({config.max_steps}) reached during {element}"
        break
      # Done = the env's test held, and still holds once the hand has let go (as a person leaves
      # a door open): an element undone by its own release is retried, not recorded as done.
      if element in completions and masks[-1][kitchen.ELEMENTS.index(element)]:
        done = True
        break
    if not done:
      reason = reason if reason != "ok" else f"{element} not completed after {config.max_attempts} attempts"
      break
  # Anything completed at any time counts (an element may be undone later, e.g. a door bumped
  # closed while reaching for the next element, as in human play).
  ever = set(completions) | {kitchen.ELEMENTS[i] for i in np.flatnonzero(np.any(masks, axis=0))}
  leaked = [s for s in config.holdout if s <= ever]
  if reason == "ok" and leaked:
    reason = f"completed held-out set {format_set(leaked[0])}"
  # Human play ends with its subtasks done; one undone later (a door bumped shut on the way to the
  # next element) would make the episode's final state, a relabeled goal, contradict its order.
  undone = [e for e, m in zip(kitchen.ELEMENTS, masks[-1]) if e in order and not m]
  if reason == "ok" and undone:
    reason = f"{undone[0]} undone by the end of the episode"
  ok = reason == "ok"
  result = EpisodeResult(index=index, ok=ok, reason=reason, order=order, attempts=attempts,
                         completed=[e for e in order if e in completions], steps=len(actions),
                         completion_steps={e: first_done[e] for e in order if e in first_done})
  if ok:
    # RLDS: step t holds s_t, a_t and the reward of a_t; the last step (final state) has no action.
    zeros = np.zeros(kitchen.ACTION_DIM, np.float32)
    result.episode = {
        "observation": np.stack(observations),
        "action": np.stack(actions + [zeros]),
        "executed_action": np.stack(executed + [zeros]),
        "reward": np.asarray(rewards + [0.0], np.float32),
        "completed_tasks": np.stack(masks),
        "episode_id": f"{config.seed}-{index}",
        "subtask_order": ",".join(order),
        "seed": seed,
    }
    if config.perturb.policy_rate > 0:
      result.episode["policy_driven"] = np.asarray(driven + [False])
  return result


def _worker(args):
  config, index = args
  return generate_episode(config, index)


def _start_pool(workers: int, context=None):
  """A spawn pool of `workers` processes, started with Ctrl-C held back until it is whole.

  Interrupted inside its constructor, `multiprocessing.Pool` leaves the workers it started and its
  maintenance thread behind without a finalizer; at exit that thread respawns the workers the exit
  handler kills, and the new ones die reading their start-up data ("EOFError: Ran out of input" on
  the user's terminal, after `relay generate: interrupted`). So a SIGINT that arrives meanwhile is
  held and handed to the Python handler that was installed (the default one raises KeyboardInterrupt)
  once the pool can be terminated cleanly; with SIGINT ignored it stays ignored.
  """
  context = context or multiprocessing.get_context("spawn")
  if threading.current_thread() is not threading.main_thread():
    return context.Pool(workers)  # signals reach the main thread only
  held = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
  try:
    pool = context.Pool(workers)
  finally:
    signal.signal(signal.SIGINT, previous)
  if held and callable(previous):
    try:
      previous(signal.SIGINT, held[0])  # Python's default handler raises KeyboardInterrupt here
    except BaseException:
      pool.terminate()
      pool.join()
      raise
  return pool


def generate(config: GeneratorConfig, episodes: int, workers: int = 1, progress: bool = True,
             max_tries_factor: float = 2.0) -> Iterator[EpisodeResult]:
  """Yields results (kept and dropped) in index order until `episodes` were kept.

  Gives up with RuntimeError after `max_tries_factor * episodes` tries (+10).
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  limit = int(max_tries_factor * episodes) + 10
  bar = tqdm(total=episodes, desc="generating play", unit="ep", disable=not progress)
  kept = 0
  indices = ((config, i) for i in range(limit))
  pool = None
  try:
    if workers > 1:
      pool = _start_pool(workers)
      results = pool.imap(_worker, indices, chunksize=1)
    else:
      results = map(_worker, indices)
    for result in results:
      kept += result.ok
      if result.ok:
        bar.update(1)
      bar.set_postfix(dropped=result.index + 1 - kept)
      yield result
      if kept >= episodes:
        return
    raise RuntimeError(f"only {kept} of {episodes} episodes succeeded in {limit} tries")
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
      pool.join()  # workers and the pool's threads gone before we return: nothing respawns at exit
