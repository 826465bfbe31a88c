"""Kitchen evaluation on compound goals of four elements, as in the paper.

A goal is the goal-space state with four elements at their targets (order-free: the agent picks
the order), taken from the final state of a demo that completed that set (with the four set to
their target values, since a later motion may have nudged one back). Goal sets: the
`num_frequent` element sets most frequent in the demos (the paper uses 17), plus the held-out
sets the generator kept out of every demo (compositional generalization), built from a demo's
initial state with the four elements moved to their targets. Metrics: average step completion
(elements done, 0-4, by the environment's own completion test) and success rate (all four).
"""
import collections
import dataclasses
import json
import multiprocessing
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from relay_data import atomic, kitchen, rlds_io


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
    done = frozenset(s for s in ep["subtask_order"].split(",") if s)
    if not done and "completed_tasks" in ep:  # ingested data: what was completed at any time
      done = frozenset(kitchen.ELEMENTS[i] for i in np.flatnonzero(ep["completed_tasks"].any(axis=0)))
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


@dataclasses.dataclass
class Rollout:
  completed: List[str]
  steps: int
  frames: Optional[List[np.ndarray]] = None


_ENVS: Dict[tuple, object] = {}


def _goal_env(goal: EvalGoal, max_steps: int, render: bool, render_size):
  """A kitchen env whose tasks are `goal`'s elements; one env per (horizon, rendering) is reused
  across rollouts (building the MuJoCo model costs ~0.5 s), its tasks swapped before reset."""
  key = (max_steps, render, tuple(render_size) if render else None)
  if key not in _ENVS:
    kwargs = {"render_mode": "rgb_array", "width": render_size[0], "height": render_size[1]} if render else {}
    _ENVS[key] = kitchen.make_env(tasks_to_complete=goal.elements, max_episode_steps=max_steps, **kwargs)
  env = _ENVS[key]
  env.unwrapped.goal = {e: kitchen.ELEMENT_GOALS[e] for e in goal.elements}  # reset() derives the tasks
  return env


def rollout(actor, goal: EvalGoal, max_steps: int, seed: int, render: bool = False,
            render_size=(160, 120), render_every: int = 1) -> Rollout:
  """One episode of `actor` toward `goal` in FrankaKitchen-v1 (ends when all four are done).

  With `render`, every `render_every`-th step is rendered (~0.5 s a frame in software) under a
  progress bar."""
  import dm_env  # pylint: disable=import-outside-toplevel
  env = _goal_env(goal, max_steps, render, render_size)
  obs, _ = env.reset(seed=seed)
  actor.set_goal(goal.goal_state)
  actor.observe_first(dm_env.restart(obs["observation"]))
  frames = [env.render()] if render else None
  completed: List[str] = []
  steps = 0
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  for steps in tqdm(range(1, max_steps + 1), desc="rendering video", unit="step", disable=not render, leave=False):
    action = actor.select_action(obs["observation"].astype(np.float32))
    obs, reward, terminated, truncated, info = env.step(action)
    completed = list(info["episode_task_completions"])  # the env mutates this list: copy
    actor.observe(action, dm_env.transition(np.float32(reward), obs["observation"]))
    if render and steps % render_every == 0:
      frames.append(env.render())
    if terminated or truncated:
      break
  return Rollout(completed=[e for e in goal.elements if e in completed], steps=steps, frames=frames)


@dataclasses.dataclass
class GoalResult:
  goal: str
  heldout: bool
  completions: List[int]

  @property
  def step_completion(self) -> float:
    return float(np.mean(self.completions))

  @property
  def success_rate(self) -> float:
    return float(np.mean([c == 4 for c in self.completions]))


def rollout_seeds(seed: int, goal_index: int, r: int):
  """(actor seed, env seed) of rollout `r` on goal `goal_index`: fixed, so runs resume and compare."""
  return seed * 100003 + goal_index * 1009 + r, seed * 7919 + goal_index * 101 + r


def _rollout_task(task):
  """One rollout in a worker: (make_actor, goal, goal index, r, max_steps, seed) -> summary."""
  make_actor, goal, gi, r, max_steps, seed = task
  actor_seed, env_seed = rollout_seeds(seed, gi, r)
  result = rollout(make_actor(actor_seed), goal, max_steps, seed=env_seed)
  return gi, r, len(result.completed), result.steps


class RolloutLog:
  """Append-only JSONL of finished rollouts, so an interrupted evaluation resumes where it stopped.

  A record is reused only under the same `key` (which names the model, its training record, the
  horizon, the seed and the action mode) and goal name; a torn last line (a crash mid-write) is
  ignored. The log is a cache, not a result: `relay eval --json` writes the result atomically.
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
        if rec.get("key") == key:
          self.done[(rec["goal"], rec["rollout"])] = rec["completed"]
      if text and not text.endswith("\n"):
        with open(path, "a") as f:  # end the torn line, so the next record starts on its own
          f.write("\n")

  def add(self, goal: str, r: int, completed: int, steps: int) -> None:
    self.done[(goal, r)] = completed
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps({"key": self.key, "goal": goal, "rollout": r, "completed": completed,
                            "steps": steps}) + "\n")


def evaluate(make_actor: Callable[[int], object], goals: Sequence[EvalGoal], rollouts: int,
             max_steps: int, seed: int = 0, progress: bool = True, workers: int = 1,
             log: Optional[RolloutLog] = None) -> List[GoalResult]:
  """`rollouts` rollouts of the actor from `make_actor(seed)` on every goal.

  workers > 1 runs rollouts in that many spawned processes (`make_actor` must then be picklable,
  e.g. a functools.partial of a module-level function); results do not depend on `workers`.
  `log` skips rollouts it already holds and records new ones as they finish.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  log = log if log is not None else RolloutLog(None, "")
  tasks = [(make_actor, goal, gi, r, max_steps, seed) for gi, goal in enumerate(goals)
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
    for gi, r, completed, steps in finished:
      log.add(goals[gi].name, r, completed, steps)
      bar.update(1)
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
  return [GoalResult(goal.name, goal.heldout, [log.done[(goal.name, r)] for r in range(rollouts)])
          for goal in goals]


def summarize(results: Sequence[GoalResult], heldout: Optional[bool] = False) -> Dict[str, float]:
  chosen = [r for r in results if heldout is None or r.heldout == heldout]
  if not chosen:
    return {"success_rate": float("nan"), "step_completion": float("nan"), "goals": 0}
  return {"success_rate": float(np.mean([r.success_rate for r in chosen])),
          "step_completion": float(np.mean([r.step_completion for r in chosen])), "goals": len(chosen)}


def format_table(results: Sequence[GoalResult]) -> str:
  lines = [f"{'goal':58s} {'set':8s} {'success':>8s} {'steps done':>10s}"]
  for r in results:
    lines.append(f"{r.goal:58s} {'held-out' if r.heldout else 'demo':8s} {100 * r.success_rate:7.1f}% "
                 f"{r.step_completion:10.2f}")
  for label, flag in (("frequent goals", False), ("held-out goals", True)):
    s = summarize(results, flag)
    if s["goals"]:
      lines.append(f"{'mean over ' + label:58s} {'':8s} {100 * s['success_rate']:7.1f}% {s['step_completion']:10.2f}")
  return "\n".join(lines)


def plot(results_by_method: Dict[str, Sequence[GoalResult]], png_path: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  methods = list(results_by_method)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label, top in ((axes[0], "success_rate", "success rate (all 4 done)", 1.0),
                              (axes[1], "step_completion", "avg. elements done (0-4)", 4.0)):
    vals = [summarize(results_by_method[m], False)[key] for m in methods]
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
