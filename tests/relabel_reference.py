"""Slow literal reference of the relabeling semantics, written straight from the definitions.

Kept deliberately naive (nested Python loops) so the vectorized code in relay_data.relabel can
be checked against it and benchmarked against it.
"""
import numpy as np


def low_level(states, goal_states, actions, window, target_ok=None):
  T = len(states) - 1
  ok = [True] * len(states) if target_ok is None else list(target_ok)
  rows = {"observation": [], "action": [], "goal": []}
  for t in range(0, T):
    for j in range(1, window + 1):
      if t + j <= T and ok[t + j]:
        rows["observation"].append(states[t])
        rows["action"].append(actions[t])
        rows["goal"].append(goal_states[t + j])
  return _stack(rows, {"observation": states, "action": actions, "goal": goal_states})


def high_level(states, goal_states, window_low, window_high, target_ok=None):
  T = len(states) - 1
  ok = [True] * len(states) if target_ok is None else list(target_ok)
  rows = {"observation": [], "subgoal": [], "goal": []}
  for t in range(0, T):
    for j in range(1, window_high + 1):
      if t + j <= T and ok[t + j] and ok[t + min(window_low, j)]:
        rows["observation"].append(states[t])
        rows["subgoal"].append(goal_states[t + min(window_low, j)])
        rows["goal"].append(goal_states[t + j])
  return _stack(rows, {"observation": states, "subgoal": goal_states, "goal": goal_states})


def _stack(rows, like):
  return {k: np.array(v, dtype=like[k].dtype).reshape(-1, like[k].shape[1]) for k, v in rows.items()}
