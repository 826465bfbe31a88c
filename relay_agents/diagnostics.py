"""Diagnostics that tell which level of a relay agent (or the data) is failing.

`oracle_subgoal_rollout` runs a low-level policy from a demo's own initial state, fed the demo's
own future goal-space states as subgoals (re-planned every W_l steps). A low level that cannot
redo the demo's subtasks even with these perfect subgoals points at the low level or at the
demonstrations, not at the high level's planning. This is the check that found the hidden state
in generator 1.0.0's demonstrations (docs/results.md). Subgoals are indexed either by time (the
demo's state W_l steps after the current step: a low level that is slower than the demo falls
behind and is then asked to skip ahead) or by progress (the demo's state W_l steps after the demo
state nearest to where the rollout is now: what a perfect high level that re-plans from the
current state would ask for, so slowness alone is not punished).

`subgoal_trace` runs a hierarchical actor on an evaluation goal and records every re-plan:
which goal elements are done, which the proposed subgoal has done, how far the subgoal asks the
arm to go and how far the arm then went. It is how docs/results.md found that RIL stops chaining
because the low level stalls short of ordinary subgoals once it is off the demos' paths.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from relay_agents import evaluation
from relay_agents.gcbc import acting
from relay_data import kitchen


INDEXING = ("time", "progress")


def nearest_progress(goal_states: np.ndarray, now: np.ndarray, start: int, horizon: int) -> int:
  """The index in [start, start + horizon) of the demo goal-space state nearest (L2) to `now`.

  Searching forward from the last match only keeps progress monotone: a rollout is never sent
  back to an earlier phase of the demo because two phases pass through similar states."""
  end = min(len(goal_states), start + max(horizon, 1))
  start = min(start, end - 1)
  return start + int(np.argmin(np.linalg.norm(goal_states[start:end] - now, axis=-1)))


@dataclasses.dataclass
class OracleResult:
  demo_subtasks: List[str]     # what the demo completed, in order
  completed: List[str]         # what the policy completed (env's own test), in order
  steps: int
  arm_error: List[float]       # at each re-plan: max |arm joints - demo's arm joints at that step|
  progress: List[int] = dataclasses.field(default_factory=list)  # at each re-plan: the demo step matched

  @property
  def done(self) -> int:
    """How many of the demo's subtasks the rollout completed."""
    return len(set(self.completed) & set(self.demo_subtasks))


def oracle_subgoal_rollout(low_policy, episode: Dict, window: int, max_steps: Optional[int] = None,
                           seed: int = 0, observation_fn=None,
                           settings: Optional[kitchen.EnvSettings] = None,
                           indexing: str = "time") -> OracleResult:
  """`low_policy`: a trained low-level `GoalPolicy`; `episode` from `rlds_io.iter_episodes`;
  `window`: W_l (the model's, `ModelRecord.window`); `observation_fn`: env observation -> the
  policy's layout (`models.observation_fn`; None: the env's own observation); `settings`: the
  kitchen's (`models.env_settings`; None: `kitchen.DEFAULT_SETTINGS`).

  `indexing`: "time" (at step t the subgoal is the demo's state at t + W_l) or "progress" (the
  demo's state W_l steps after the demo state nearest to the rollout's, searched up to 3 W_l
  steps ahead of the previous match; see the module doc). `arm_error` is measured against the
  demo step the subgoal was indexed from.

  The env is reset with the episode's recorded seed (generated play), so the rollout starts in
  the demo's initial state (ingested data has none: `seed` is used); it runs for `max_steps`
  (default: the demo's length + 300), or until the demo's subtasks are all done.
  """
  if indexing not in INDEXING:
    raise ValueError(f"indexing must be one of {', '.join(INDEXING)}, got {indexing!r}")
  goal_states = episode["goal_state"]
  length = len(goal_states)
  order = kitchen.episode_elements(episode)
  max_steps = length + 300 if max_steps is None else max_steps
  env = kitchen.make_env(tasks_to_complete=order or kitchen.ELEMENTS, max_episode_steps=max_steps,
                         terminate_on_tasks_completed=bool(order), settings=settings)
  recorded = int(episode.get("seed", -1))  # -1: ingested data, no recorded reset seed
  obs, _ = env.reset(seed=(recorded if recorded >= 0 else seed) % (2 ** 31))
  actor = acting.FlatActor(low_policy, seed=seed, observation_fn=observation_fn)  # low level alone, set subgoals
  completed: List[str] = []
  arm_error: List[float] = []
  progress: List[int] = []
  steps, matched = 0, 0
  for steps in range(1, max_steps + 1):
    t = steps - 1
    if t % window == 0:
      if indexing == "time":
        matched = min(t, length - 1)
      else:
        now = kitchen.goal_state_from_observation(obs["observation"])
        matched = nearest_progress(goal_states, now, matched, 3 * window)
      progress.append(matched)
      actor.set_goal(goal_states[min(matched + window, length - 1)])
      arm_error.append(float(np.abs(obs["observation"][kitchen.ARM] - goal_states[matched][kitchen.ARM]).max()))
    obs, _, terminated, truncated, info = env.step(actor.select_action(obs["observation"].astype(np.float32)))
    completed = list(info["episode_task_completions"])
    if terminated or truncated:
      break
  env.close()
  return OracleResult(demo_subtasks=order, completed=completed, steps=steps, arm_error=arm_error,
                      progress=progress)


@dataclasses.dataclass
class Replan:
  step: int
  done: List[str]               # goal elements done at this step (env's threshold, goal space)
  subgoal_done: List[str]       # goal elements done in the proposed subgoal
  subgoal_arm_distance: float   # L2 over the 7 arm joints: proposed subgoal vs now
  arm_moved: float              # L2 arm motion until the next re-plan (nan for the last one)


class _ReplanRecorder:
  """Passes everything to a `HierarchicalActor` and keeps (step, observation, subgoal) per re-plan."""

  def __init__(self, actor: acting.HierarchicalActor):
    self.actor = actor
    self.records = []

  def set_goal(self, goal):
    self.actor.set_goal(goal)

  def observe_first(self, timestep):
    self.actor.observe_first(timestep)
    self.records = []

  def select_action(self, observation):
    step = self.actor.steps
    action = self.actor.select_action(observation)
    if self.actor.replans and self.actor.replans[-1] == step:
      self.records.append((step, np.array(observation), np.array(self.actor.subgoal)))
    return action

  def observe(self, action, next_timestep):
    self.actor.observe(action, next_timestep)


def subgoal_trace(actor: acting.HierarchicalActor, goal: evaluation.EvalGoal, max_steps: int,
                  seed: int = 0, settings: Optional[kitchen.EnvSettings] = None) -> Tuple[evaluation.Rollout, List[Replan]]:
  """One evaluation rollout of `actor` toward `goal` (in a kitchen built with `settings`, the
  model's: `models.env_settings`), with a `Replan` record per re-plan."""
  recorder = _ReplanRecorder(actor)
  result = evaluation.rollout(recorder, goal, max_steps, seed=seed, settings=settings)

  def done(goal_state):
    mask = kitchen.completion_mask(goal_state[None], goal.elements)[0]
    return [e for e, m in zip(goal.elements, mask) if m]

  trace = []
  for i, (step, observation, subgoal) in enumerate(recorder.records):
    now = kitchen.goal_state_from_observation(observation)
    after = recorder.records[i + 1][1] if i + 1 < len(recorder.records) else None
    arm = observation[kitchen.ARM]
    moved = float(np.linalg.norm(after[kitchen.ARM] - arm)) if after is not None else float("nan")
    reach = float(np.linalg.norm(subgoal[kitchen.ARM] - arm))
    trace.append(Replan(step=step, done=done(now), subgoal_done=done(subgoal), subgoal_arm_distance=reach,
                        arm_moved=moved))
  return result, trace
