"""Kitchen evaluation on compound goals of four elements, as in the paper.

A goal is the goal-space state with four elements at their targets (order-free: the agent picks
the order), taken from the final state of a demo that completed that set (with the four set to
their target values, since a later motion may have nudged one back). Goal sets: the
`num_frequent` element sets most frequent in the demos (the paper uses 17), plus the held-out
sets the generator kept out of every demo (compositional generalization), built from a demo's
initial state with the four elements moved to their targets. Metrics: average step completion
(elements done, 0-4, by the environment's own completion test) and success rate (all four).

Horizons: a rollout runs `max_steps` steps (`relay eval` default 400 for four-element goals) and
records the step at which each element was first completed, so one run also gives the results
at FrankaKitchen-v1's own limit of 280 steps (`ENV_HORIZON`); tables and JSON show both.
The environment is built with the settings the model's data was recorded under
(`kitchen.EnvSettings`); the actor maps the environment's observation to the model's layout.
"""
import collections
import dataclasses
import json
import multiprocessing
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from relay_data import atomic, kitchen, rlds_io

ENV_HORIZON = 280         # FrankaKitchen-v1's own max_episode_steps
DEFAULT_MAX_STEPS = 400   # `relay eval` default horizon for four-element goals


@dataclasses.dataclass
class EvalGoal:
  elements: List[str]
  goal_state: np.ndarray
  heldout: bool = False
  demos: int = 0

  @property
  def name(self) -> str:
    return "+".join(e for e in kitchen.ELEMENTS if e in self.elements)


def goal_sets(play_dir: str, num_frequent: int = 17, include_heldout: bool = True) -> List[EvalGoal]:
  counts, finals = collections.Counter(), {}
  first_state = None
  for ep in rlds_io.iter_episodes(play_dir):
    if first_state is None:
      first_state = ep["goal_state"][0]
    done = frozenset(kitchen.episode_elements(ep))
    if len(done) != 4:
      continue
    counts[done] += 1
    finals.setdefault(done, kitchen.set_goal_state(ep["goal_state"][-1], sorted(done)))
  goals = [EvalGoal(sorted(s, key=kitchen.ELEMENTS.index), finals[s], demos=c)
           for s, c in sorted(counts.items(), key=lambda kv: (-kv[1], sorted(kv[0])))[:num_frequent]]
  if include_heldout and first_state is not None:
    for name in rlds_io.read_metadata(play_dir).get("holdout", []):
      elements = name.split("+")
      goals.append(EvalGoal(elements, kitchen.set_goal_state(first_state, elements), heldout=True))
  return goals


def named_goals(play_dir: str, goals: Sequence[str]) -> List[EvalGoal]:
  """Compound goals named by their elements ('microwave,kettle,light switch,slide cabinet'), each
  with the goal state finetuning and the held-out sets use: the play data's initial state with
  those elements set to their goal positions. `demos` counts the play episodes that did exactly
  those elements (0: a held-out combination)."""
  parsed = [kitchen.parse_goal(text) for text in goals]
  first_state, counts = None, collections.Counter()
  for ep in rlds_io.iter_episodes(play_dir):
    if first_state is None:
      first_state = ep["goal_state"][0]
    counts[frozenset(kitchen.episode_elements(ep))] += 1
  if first_state is None:
    raise ValueError(f"{play_dir}: no episodes to take the initial state from")
  return [EvalGoal(sorted(e, key=kitchen.ELEMENTS.index), kitchen.set_goal_state(first_state, e),
                   heldout=counts[frozenset(e)] == 0, demos=counts[frozenset(e)]) for e in parsed]


@dataclasses.dataclass
class Rollout:
  completed: List[str]
  steps: int
  frames: Optional[List[np.ndarray]] = None
  first_done: Dict[str, int] = dataclasses.field(default_factory=dict)  # element -> first step done
  goal_states: Optional[np.ndarray] = None  # [steps + 1, 30] observed goal-space states (record_states)


_ENVS: Dict[tuple, object] = {}


def _goal_env(goal: EvalGoal, max_steps: int, render: bool, render_size,
              settings: Optional[kitchen.EnvSettings] = None):
  """A kitchen env whose tasks are `goal`'s elements; one env per (horizon, rendering, settings) is
  reused across rollouts (building the MuJoCo model costs ~0.5 s), its tasks swapped before reset."""
  key = (max_steps, render, tuple(render_size) if render else None, settings)
  if key not in _ENVS:
    kwargs = {"render_mode": "rgb_array", "width": render_size[0], "height": render_size[1]} if render else {}
    _ENVS[key] = kitchen.make_env(tasks_to_complete=goal.elements, max_episode_steps=max_steps,
                                  settings=settings, **kwargs)
  env = _ENVS[key]
  env.unwrapped.goal = {e: kitchen.ELEMENT_GOALS[e] for e in goal.elements}  # reset() derives the tasks
  return env


def rollout(actor, goal: EvalGoal, max_steps: int, seed: int, render: bool = False,
            render_size=(160, 120), render_every: int = 1,
            settings: Optional[kitchen.EnvSettings] = None, record_states: bool = False) -> Rollout:
  """One episode of `actor` toward `goal` in FrankaKitchen-v1 (ends when all four are done).

  The actor gets the environment's observation (it maps it to its own layout). With `render`,
  every `render_every`-th step is rendered (~0.5 s a frame in software) under a progress bar.
  `record_states` keeps every observed goal-space state (as a demo stores them), for diagnostics."""
  import dm_env  # pylint: disable=import-outside-toplevel
  env = _goal_env(goal, max_steps, render, render_size, settings)
  obs, _ = env.reset(seed=seed)
  actor.set_goal(goal.goal_state)
  actor.observe_first(dm_env.restart(obs["observation"]))
  frames = [env.render()] if render else None
  first_done: Dict[str, int] = {}
  states = [kitchen.goal_state_from_observation(obs["observation"])] if record_states else None
  steps = 0
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  for steps in tqdm(range(1, max_steps + 1), desc="rendering video", unit="step", disable=not render, leave=False):
    action = actor.select_action(obs["observation"].astype(np.float32))
    obs, reward, terminated, truncated, info = env.step(action)
    for e in info["episode_task_completions"]:  # the env mutates this list: read it now
      first_done.setdefault(e, steps)
    if record_states:
      states.append(kitchen.goal_state_from_observation(obs["observation"]))
    actor.observe(action, dm_env.transition(np.float32(reward), obs["observation"]))
    if render and steps % render_every == 0:
      frames.append(env.render())
    if terminated or truncated:
      break
  return Rollout(completed=[e for e in goal.elements if e in first_done], steps=steps, frames=frames,
                 first_done={e: first_done[e] for e in goal.elements if e in first_done},
                 goal_states=np.stack(states) if record_states else None)


@dataclasses.dataclass
class GoalResult:
  """Per goal: each rollout's first-completion step per element (within `max_steps`)."""
  goal: str
  heldout: bool
  first_done: List[Dict[str, int]]
  max_steps: int

  def completions_at(self, horizon: Optional[int] = None) -> List[int]:
    """Elements done per rollout within `horizon` steps (default: the whole rollout)."""
    h = self.max_steps if horizon is None else horizon
    return [sum(step <= h for step in done.values()) for done in self.first_done]

  @property
  def completions(self) -> List[int]:
    return self.completions_at()

  def step_completion(self, horizon: Optional[int] = None) -> float:
    return float(np.mean(self.completions_at(horizon)))

  def success_rate(self, horizon: Optional[int] = None) -> float:
    return float(np.mean([c == 4 for c in self.completions_at(horizon)]))

  def to_json(self) -> Dict:
    return {"goal": self.goal, "heldout": self.heldout, "completions": self.completions,
            "first_done": self.first_done, "max_steps": self.max_steps,
            "completions_at": {str(h): self.completions_at(h) for h in horizons(self.max_steps)}}


def horizons(max_steps: int) -> List[int]:
  """The horizons results are reported at: the env's own limit (when shorter) and `max_steps`."""
  return sorted({min(ENV_HORIZON, max_steps), max_steps})


def rollout_seeds(seed: int, goal_index: int, r: int):
  """(actor seed, env seed) of rollout `r` on goal `goal_index`: fixed, so runs resume and compare."""
  return seed * 100003 + goal_index * 1009 + r, seed * 7919 + goal_index * 101 + r


def _rollout_task(task):
  """One rollout in a worker: (make_actor, goal, goal index, r, max_steps, seed, settings) -> summary."""
  make_actor, goal, gi, r, max_steps, seed, settings = task
  actor_seed, env_seed = rollout_seeds(seed, gi, r)
  result = rollout(make_actor(actor_seed), goal, max_steps, seed=env_seed, settings=settings)
  return gi, r, result.first_done, result.steps


def log_key(model_fingerprint: str, goals: Sequence[EvalGoal], play_fingerprint: str, max_steps: int,
            seed: int, sample: bool, replan: Optional[int] = None, sequential: bool = False,
            exploration=(1.0, 1.0), execute_steps: Optional[int] = None,
            ensemble: Optional[float] = None, sample_level: Optional[str] = None) -> str:
  """What a logged rollout depends on: the model's fingerprint, the goal vectors (and names), the
  play dataset's fingerprint, the horizon, the seed, the action mode, a re-plan interval other
  than the model's W_l, one-element-at-a-time goals, a sampled policy's (std scale,
  temperature), actions executed per chunk other than the model's, a temporal ensemble's decay
  and the one level that samples (the last six absent from the key when not set, so earlier
  logs still match)."""
  import hashlib  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for g in goals:
    h.update(g.name.encode() + np.asarray(g.goal_state, np.float32).tobytes())
  key = {"model": model_fingerprint, "goals": h.hexdigest()[:16], "play": play_fingerprint,
         "max_steps": max_steps, "seed": seed, "sample": sample}
  if replan is not None:
    key["replan"] = replan
  if sequential:
    key["sequential"] = True
  if sample and tuple(exploration) != (1.0, 1.0):
    key["exploration"] = list(map(float, exploration))
  if execute_steps is not None:
    key["execute_steps"] = execute_steps
  if ensemble is not None:
    key["ensemble"] = float(ensemble)
  if sample and sample_level is not None:
    key["sample_level"] = sample_level
  return json.dumps(key, sort_keys=True)


class RolloutLog:
  """Append-only JSONL of finished rollouts, so an interrupted evaluation resumes where it stopped.

  A record is reused only under the same `key` (`log_key`: model fingerprint, goal vectors, play
  dataset fingerprint, horizon, seed, action mode) and goal name; a torn last line (a crash
  mid-write) is ignored. The log is a cache, not a result: `relay eval --json` writes the result
  atomically.
  """

  def __init__(self, path: Optional[str], key: str):
    self.path, self.key, self.done = path, key, {}
    if path and os.path.exists(path):
      with open(path) as f:
        text = f.read()
      for line in text.splitlines():
        try:
          rec = json.loads(line)
        except ValueError:
          continue
        if isinstance(rec, dict) and rec.get("key") == key and isinstance(rec.get("first_done"), dict):
          self.done[(rec["goal"], rec["rollout"])] = rec["first_done"]
      if text and not text.endswith("\n"):
        with open(path, "a") as f:  # end the torn line, so the next record starts on its own
          f.write("\n")

  def add(self, goal: str, r: int, first_done: Dict[str, int], steps: int) -> None:
    self.done[(goal, r)] = first_done
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps({"key": self.key, "goal": goal, "rollout": r, "completed": len(first_done),
                            "first_done": first_done, "steps": steps}) + "\n")


def evaluate(make_actor: Callable[[int], object], goals: Sequence[EvalGoal], rollouts: int,
             max_steps: int, seed: int = 0, progress: bool = True, workers: int = 1,
             log: Optional[RolloutLog] = None, settings: Optional[kitchen.EnvSettings] = None) -> List[GoalResult]:
  """`rollouts` rollouts of the actor from `make_actor(seed)` on every goal.

  workers > 1 runs rollouts in that many spawned processes (`make_actor` must then be picklable,
  e.g. a functools.partial of a module-level function); results do not depend on `workers`.
  `log` skips rollouts it already holds and records new ones as they finish. `settings`: the
  kitchen's settings (the model's; None = gymnasium defaults).
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  log = log if log is not None else RolloutLog(None, "")
  tasks = [(make_actor, goal, gi, r, max_steps, seed, settings) for gi, goal in enumerate(goals)
           for r in range(rollouts) if (goal.name, r) not in log.done]
  bar = tqdm(total=len(goals) * rollouts, initial=len(goals) * rollouts - len(tasks), desc="evaluating",
             unit="rollout", disable=not progress, leave=False)
  pool = None
  try:
    if workers > 1 and len(tasks) > 1:
      pool = multiprocessing.get_context("spawn").Pool(workers)
      finished = pool.imap_unordered(_rollout_task, tasks, chunksize=1)
    else:
      finished = map(_rollout_task, tasks)
    for gi, r, first_done, steps in finished:
      log.add(goals[gi].name, r, first_done, steps)
      bar.update(1)
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
  return [GoalResult(goal.name, goal.heldout, [log.done[(goal.name, r)] for r in range(rollouts)], max_steps)
          for goal in goals]


def summarize(results: Sequence[GoalResult], heldout: Optional[bool] = False,
              horizon: Optional[int] = None) -> Dict[str, Optional[float]]:
  """Mean success rate and step completion over the chosen goals (None when there are none:
  results are written as strict JSON)."""
  chosen = [r for r in results if heldout is None or r.heldout == heldout]
  if not chosen:
    return {"success_rate": None, "step_completion": None, "goals": 0}
  return {"success_rate": float(np.mean([r.success_rate(horizon) for r in chosen])),
          "step_completion": float(np.mean([r.step_completion(horizon) for r in chosen])), "goals": len(chosen)}


def to_json(results: Sequence[GoalResult]) -> Dict:
  """One method's results: per goal, and summaries at the full horizon and at each of `horizons`."""
  max_steps = results[0].max_steps if results else 0
  return {"per_goal": [r.to_json() for r in results], "max_steps": max_steps,
          "frequent": summarize(results, False), "heldout": summarize(results, True),
          "horizons": {str(h): {"frequent": summarize(results, False, h), "heldout": summarize(results, True, h)}
                       for h in horizons(max_steps)}}


def format_table(results: Sequence[GoalResult]) -> str:
  """Per-goal success and elements done at each reported horizon (env limit and full rollout)."""
  hs = horizons(results[0].max_steps) if results else []
  head = " ".join(f"{'success@' + str(h):>12s} {'done@' + str(h):>9s}" for h in hs)
  lines = [f"{'goal':58s} {'set':8s} {head}"]

  def cells(get):
    return " ".join(f"{'-' if s is None else f'{100 * s:.1f}%':>12s} {'-' if d is None else f'{d:.2f}':>9s}"
                    for s, d in (get(h) for h in hs))

  for r in results:
    lines.append(f"{r.goal:58s} {'held-out' if r.heldout else 'demo':8s} "
                 + cells(lambda h, r=r: (r.success_rate(h), r.step_completion(h))))
  for label, flag in (("frequent goals", False), ("held-out goals", True)):
    if summarize(results, flag)["goals"]:
      lines.append(f"{'mean over ' + label:58s} {'':8s} " + cells(
          lambda h, flag=flag: (summarize(results, flag, h)["success_rate"], summarize(results, flag, h)["step_completion"])))
  return "\n".join(lines)


def plot(results_by_method: Dict[str, Sequence[GoalResult]], png_path: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  methods = list(results_by_method)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label, top in ((axes[0], "success_rate", "success rate (all 4 done)", 1.0),
                              (axes[1], "step_completion", "avg. elements done (0-4)", 4.0)):
    vals = [summarize(results_by_method[m], False)[key] or 0.0 for m in methods]
    ax.bar(methods, vals, color="tab:blue")
    ax.set_ylim(0, top)
    ax.set_title(label)
  return atomic.save_figure(fig, png_path)


def write_video(frames: Sequence[np.ndarray], path: str, fps: int = 12) -> str:
  """MP4 (ffmpeg from the imageio-ffmpeg wheel) or GIF, by extension; written atomically."""
  import imageio  # pylint: disable=import-outside-toplevel
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".mp4", ".gif"):
    raise ValueError(f"video path must end in .mp4 or .gif, got {path!r}")
  with atomic.atomic_file(path) as tmp:
    if ext == ".gif":
      imageio.mimsave(tmp, list(frames), duration=1000.0 / fps, loop=0)
    else:
      # 16-pixel macro blocks: pass sizes through unchanged, no rescaling warnings.
      imageio.mimsave(tmp, list(frames), fps=fps, macro_block_size=1)
  return path
