"""Generate unsegmented kitchen play: 4 subtasks per episode, random order, no reset between.

Each episode picks four of the seven kitchen elements in a random order (never one of the
held-out compound goals), runs the closed-loop skill of each in turn with action noise and
randomized waypoints, retries a subtask whose skill ended without completing it, and keeps the
episode only if the environment's own completion test reports all four done and no held-out set
got completed along the way. Episodes are deterministic functions of (seed, index), so the
parallel generator returns the same dataset for any number of workers.

The demonstrator is built to be imitable by a Markovian goal-conditioned policy (version 1.1.0):
the controller keeps no hidden command (its action is a function of the observation and the
skill's current target), and every skill phase ends on an observable event (a pose reached, the
fingers stopped), never after a fixed number of steps. Version 1.0.0 had both kinds of hidden
state; policies cloned from it drifted within 30 steps even when fed the demo's own subgoals.
"""
import dataclasses
import hashlib
import itertools
import multiprocessing
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from relay_data import kitchen

GENERATOR_VERSION = "1.1.0"  # = the kitchen_play TFDS version; bump when episodes change
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
  action_noise: float = 0.05
  markovian: bool = True           # controller acts from the observation alone (see controller.py)
  lead_gain: float = 2.0           # markovian controller: how far the command leads the arm
  max_attempts: int = 3            # tries per subtask before the episode is dropped
  max_steps: int = 2000            # hard cap on an episode's env steps


@dataclasses.dataclass
class EpisodeResult:
  index: int
  ok: bool
  reason: str
  order: List[str]
  attempts: Dict[str, int]         # element -> attempts used
  completed: List[str]             # scripted subtasks completed (env's own test)
  steps: int = 0                   # env steps taken (kept or not)
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


class _Env:
  """One kitchen env + controller per process (MuJoCo models are not picklable)."""
  _instance = None

  @classmethod
  def get(cls, max_steps):
    if cls._instance is None:
      cls._instance = kitchen.make_env(max_episode_steps=max_steps + 10,
                                       terminate_on_tasks_completed=False)
    return cls._instance


def generate_episode(config: GeneratorConfig, index: int) -> EpisodeResult:
  """Runs one play episode; deterministic in (config, index)."""
  from relay_data.play import controller as ctl  # pylint: disable=import-outside-toplevel
  from relay_data.play import skills  # pylint: disable=import-outside-toplevel
  seed = episode_seed(config.seed, index)
  rng = np.random.default_rng(seed)
  order = sample_order(rng, config.subtasks, config.holdout)
  env = _Env.get(config.max_steps)
  env.unwrapped.tasks_to_complete = set(order)
  env.unwrapped.goal = {e: kitchen.ELEMENT_GOALS[e] for e in order}
  obs, _ = env.reset(seed=seed % (2 ** 31))
  u = env.unwrapped
  arm = ctl.ArmController(u.model, u.data, ctl.ControllerConfig(
      action_noise=config.action_noise, markovian=config.markovian, lead_gain=config.lead_gain), rng)
  scene = skills.Scene(u.model, u.data, arm)
  observations = [obs["observation"].astype(np.float32)]
  actions, rewards, masks = [], [], [kitchen.completion_mask(u.data.qpos[:30])]
  attempts: Dict[str, int] = {}
  completions: List[str] = []

  def run(commands) -> bool:
    nonlocal obs
    for pos, rot, grip in commands:
      if len(actions) >= config.max_steps:
        return False
      action = arm.action(obs["observation"], pos, rot, grip)
      obs, reward, _, _, info = env.step(action)
      actions.append(action)
      rewards.append(np.float32(reward))
      observations.append(obs["observation"].astype(np.float32))
      masks.append(kitchen.completion_mask(u.data.qpos[:30]))
      completions[:] = list(info["episode_task_completions"])  # env mutates its list: copy
    return True

  def via_point():
    """Between subtasks: back toward the home posture, then wander through a random point."""
    target = np.array([-0.35, 0.2, 2.1]) + rng.uniform([-0.12, -0.05, -0.1], [0.12, 0.08, 0.15])
    return itertools.chain(skills.rehome(scene, rng), skills.move_to(scene, target, tol=0.05, max_steps=40))

  reason = "ok"
  for element in order:
    done = False
    for attempt in range(1, config.max_attempts + 1):
      attempts[element] = attempt
      if not run(itertools.chain(via_point(), skills.SKILLS[element](scene, rng))):
        reason = f"step limit ({config.max_steps}) reached during {element}"
        break
      if element in completions:
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
  ok = reason == "ok"
  result = EpisodeResult(index=index, ok=ok, reason=reason, order=order, attempts=attempts,
                         completed=[e for e in order if e in completions], steps=len(actions))
  if ok:
    actions.append(np.zeros(kitchen.ACTION_DIM, np.float32))  # RLDS: the last step's action is unused
    rewards.append(np.float32(0.0))
    result.episode = {
        "observation": np.stack(observations),
        "action": np.stack(actions),
        "reward": np.asarray([0.0] + rewards[:-1], np.float32),  # reward for arriving at step t
        "completed_tasks": np.stack(masks),
        "episode_id": f"{config.seed}-{index}",
        "subtask_order": ",".join(order),
        "seed": seed,
    }
  return result


def _worker(args):
  config, index = args
  return generate_episode(config, index)


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
      pool = multiprocessing.get_context("spawn").Pool(workers)
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
