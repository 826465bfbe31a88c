"""Diagnostics that tell which level of a relay agent (or the data) is failing.

`oracle_subgoal_rollout` runs a low-level policy from a demo's own initial state, fed the demo's
own future goal-space states as subgoals (re-planned every W_l steps, indexed by time). A low
level that cannot redo the demo's subtasks even with these perfect subgoals points at the low
level or at the demonstrations, not at the high level's planning. This is the check that found
the hidden state in generator 1.0.0's demonstrations (docs/results.md).
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np

from relay_agents.gcbc import acting
from relay_data import kitchen


@dataclasses.dataclass
class OracleResult:
  demo_subtasks: List[str]     # what the demo completed, in order
  completed: List[str]         # what the policy completed (env's own test), in order
  steps: int
  arm_error: List[float]       # at each re-plan: max |arm joints - demo's arm joints at that step|


def oracle_subgoal_rollout(low_policy, episode: Dict, replan_every: int = 30, max_steps: Optional[int] = None,
                           seed: int = 0) -> OracleResult:
  """`low_policy`: a trained low-level `GoalPolicy`; `episode` from `rlds_io.iter_episodes`.

  The env is reset with the episode's recorded seed (generated play), so the rollout starts in
  the demo's initial state (ingested data has none: `seed` is used); it runs for `max_steps`
  (default: the demo's length + 300), or until the demo's subtasks are all done.
  """
  goal_states = episode["goal_state"]
  length = len(goal_states)
  order = [s for s in str(episode.get("subtask_order", "")).split(",") if s]
  max_steps = length + 300 if max_steps is None else max_steps
  env = kitchen.make_env(tasks_to_complete=order or kitchen.ELEMENTS, max_episode_steps=max_steps,
                         terminate_on_tasks_completed=bool(order))
  recorded = int(episode.get("seed", -1))  # -1: ingested data, no recorded reset seed
  obs, _ = env.reset(seed=(recorded if recorded >= 0 else seed) % (2 ** 31))
  actor = acting.FlatActor(low_policy, seed=seed)  # the low level acting alone, toward set subgoals
  completed: List[str] = []
  arm_error: List[float] = []
  steps = 0
  for steps in range(1, max_steps + 1):
    t = steps - 1
    if t % replan_every == 0:
      actor.set_goal(goal_states[min(t + replan_every, length - 1)])
      arm_error.append(float(np.abs(obs["observation"][:7] - goal_states[min(t, length - 1)][:7]).max()))
    obs, _, terminated, truncated, info = env.step(actor.select_action(obs["observation"].astype(np.float32)))
    completed = list(info["episode_task_completions"])
    if terminated or truncated:
      break
  env.close()
  return OracleResult(demo_subtasks=order, completed=completed, steps=steps, arm_error=arm_error)
