"""Relay data relabeling: the goal-relabeled examples of Relay Imitation Learning, as pure numpy.

One episode has L = T+1 RLDS steps: policy inputs s_0..s_T (`states`), goal-space states
g_0..g_T (`goal_states`) and actions a_0..a_T (`actions`; a_T is never used).

Low level, window W_l:  every (s_t, a_t, goal=g_{t+j})              0 <= t < T, 1 <= j <= W_l, t+j <= T
High level, W_l < W_h:  every (s_t, subgoal=g_{t+min(W_l,j)}, goal=g_{t+j})
                                                                    0 <= t < T, 1 <= j <= W_h, t+j <= T

With `goals_per_step=k`, each t keeps k distinct j drawn uniformly from its valid range (all of
them when the range has <= k), reproducible from `seed`; this bounds the O(T*W) output size.
Examples come out ordered by t, then j. Everything is vectorized: index arrays are built by
broadcasting and rows are gathered once, with no Python loop over examples.

With `target_ok` (a [L] bool mask), a pair (t, j) is kept only if every state it takes as a
target (the goal g_{t+j}, and the high level's subgoal g_{t+min(W_l,j)}) is at an allowed step;
k goals per step are then drawn from the allowed j. DAgger play disallows the steps a trained
policy drove: the label there is the expert's correction, but where the policy went is no goal
the expert chose, and relabeling it as one would teach the old policy's drift. DART play's
perturbations are the same case (`perturbed_states`): during a burst the label says where the
expert wanted to go and the executed action took the hand elsewhere, so a goal inside the burst
would pair a state the perturbation reached with an action that does not lead there.

With `action_chunk=k > 1`, every action-carrying example also gets `action_chunk`, the k actions
a_t..a_{t+k-1} flattened to [k*d] (steps past the last action a_{T-1} repeat it): the targets of
a policy that predicts k actions at once (action chunking).

Baselines reuse the same machinery: flat goal-conditioned BC is `low_level_examples` with one
window; `final_goal_examples` pairs every step with the episode's final state; `bc_examples`
drops the goal.
"""
from typing import Dict, Optional, Tuple

import numpy as np

DEFAULT_WINDOW = 30  # W_l, the paper's: the one default from `relay relabel --window` to the actor
# Actions per example chunk (`action_chunks`): the one default of `relay relabel --action-chunk`
# and of the policies' `GoalBCConfig.action_chunk`, so default data trains default policies.
DEFAULT_ACTION_CHUNK = 10

Examples = Dict[str, np.ndarray]


def _check_arrays(**arrays: np.ndarray) -> Tuple[int, Dict[str, np.ndarray]]:
  out = {}
  length = None
  for name, value in arrays.items():
    arr = np.asarray(value)
    if arr.ndim != 2:
      raise ValueError(f"{name} must be a [L, d] array (one row per RLDS step), got shape {arr.shape}")
    if length is None:
      length = arr.shape[0]
    elif arr.shape[0] != length:
      sizes = ", ".join(f"{k}={np.shape(v)[0]}" for k, v in arrays.items())
      raise ValueError(f"mismatched episode lengths: {sizes}")
    out[name] = arr
  return length, out


def _rows(array: np.ndarray, index: np.ndarray) -> np.ndarray:
  """array[index] along axis 0; np.take is ~10x faster than fancy indexing for row gathers."""
  return np.take(array, index, axis=0)


def perturbed_states(actions: np.ndarray, executed_actions: np.ndarray, threshold: float) -> np.ndarray:
  """[L] bool: state i was reached by a perturbed action, i.e. the action executed at step i - 1
  departed from its label by more than `threshold` (largest absolute difference over the action's
  dims). State 0 is never perturbed. `target_ok = ~perturbed_states(...)` keeps goals and subgoals
  off the states DART bursts and detours put the hand in (`relay relabel --perturbation-threshold`)."""
  length, arrays = _check_arrays(actions=actions, executed_actions=executed_actions)
  if arrays["actions"].shape != arrays["executed_actions"].shape:
    raise ValueError(f"executed_actions must have the actions' shape {arrays['actions'].shape}, "
                     f"got {arrays['executed_actions'].shape}")
  if not (np.isfinite(threshold) and threshold >= 0):
    raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
  departed = np.abs(arrays["executed_actions"] - arrays["actions"]).max(axis=1, initial=0.0) > threshold
  out = np.zeros(length, bool)
  out[1:] = departed[:-1]
  return out


def _check_window(name: str, window) -> int:
  if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window <= 0:
    raise ValueError(f"{name} must be a positive integer, got {window!r}")
  return int(window)


def _check_k(goals_per_step) -> Optional[int]:
  if goals_per_step is None:
    return None
  return _check_window("goals_per_step", goals_per_step)


def _check_mask(target_ok, num_steps: int) -> Optional[np.ndarray]:
  if target_ok is None:
    return None
  mask = np.asarray(target_ok)
  if mask.dtype != bool or mask.shape != (num_steps,):
    raise ValueError(f"target_ok must be a [{num_steps}] bool mask, got {mask.dtype} {mask.shape}")
  return mask


def valid_pairs(num_steps: int, window: int, target_ok: Optional[np.ndarray] = None,
                subgoal_window: Optional[int] = None) -> np.ndarray:
  """[T, min(window, T)] bool: pair (t, j = column + 1) is valid (t+j <= T, and with `target_ok`
  both g_{t+j} and, given `subgoal_window` W_l, g_{t+min(W_l, j)} are at allowed steps)."""
  window = _check_window("window", window)
  mask = _check_mask(target_ok, num_steps)
  last = max(num_steps - 1, 0)
  t = np.arange(last)[:, None]
  j = np.arange(1, min(window, last) + 1)[None, :]
  valid = t + j <= last
  if mask is not None:
    valid = valid & mask[np.minimum(t + j, last)]
    if subgoal_window is not None:
      valid &= mask[np.minimum(t + np.minimum(j, subgoal_window), last)]
  return valid


def relabel_indices(num_steps: int, window: int, goals_per_step: Optional[int] = None,
                    seed: int = 0, target_ok: Optional[np.ndarray] = None,
                    subgoal_window: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(t, j) index pairs of an episode with `num_steps` = L rows: 0 <= t < T, 1 <= j <= window, t+j <= T
  (and the targets allowed by `target_ok`, see `valid_pairs`).

  Ordered by t then j. With `goals_per_step=k`, k distinct j per t drawn uniformly (all when fewer).
  """
  window = _check_window("window", window)
  k = _check_k(goals_per_step)
  last = num_steps - 1  # T
  if last <= 0:
    empty = np.zeros(0, np.int64)
    return empty, empty
  w = min(window, last)
  t = np.arange(last)[:, None]
  j = np.arange(1, w + 1)[None, :]
  valid = valid_pairs(num_steps, window, target_ok, subgoal_window)  # [T, w]
  if k is not None and k < w:
    # Random keys; invalid j sort last. The k smallest keys of a row are a uniform k-subset of
    # its valid j (all of them when the row has <= k valid j).
    keys = np.random.default_rng(seed).random((last, w))
    keys[~valid] = np.inf
    chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]  # [T, k] column ids
    chosen.sort(axis=1)
    chosen_valid = np.take_along_axis(valid, chosen, axis=1)
    t_idx = np.broadcast_to(t, chosen.shape)[chosen_valid]
    j_idx = (chosen + 1)[chosen_valid]
    return t_idx.astype(np.int64), j_idx.astype(np.int64)
  t_idx, j_idx = np.broadcast_arrays(t, j)
  return t_idx[valid].astype(np.int64), j_idx[valid].astype(np.int64)


def _check_chunk(action_chunk) -> int:
  return _check_window("action_chunk", action_chunk)


def action_chunks(actions: np.ndarray, t: np.ndarray, action_chunk: int) -> np.ndarray:
  """[n, k*d]: a_t..a_{t+k-1} for each t (t+i clamped to the last action a_{T-1}, T = L-1)."""
  k = _check_chunk(action_chunk)
  last = max(actions.shape[0] - 2, 0)
  steps = np.minimum(np.asarray(t)[:, None] + np.arange(k)[None, :], last)  # [n, k]
  return _rows(actions, steps.reshape(-1)).reshape(len(t), k * actions.shape[1])


def _with_actions(examples: Examples, actions: np.ndarray, t: np.ndarray, action_chunk: int) -> Examples:
  examples["action"] = _rows(actions, t)
  if _check_chunk(action_chunk) > 1:
    examples["action_chunk"] = action_chunks(actions, t, action_chunk)
  return examples


def low_level_examples(states, goal_states, actions, window: int,
                       goals_per_step: Optional[int] = None, seed: int = 0, action_chunk: int = 1,
                       target_ok: Optional[np.ndarray] = None) -> Examples:
  """Low-level (or flat GCBC) examples: observation s_t, action a_t, goal g_{t+j}, 1 <= j <= window."""
  _, arr = _check_arrays(states=states, goal_states=goal_states, actions=actions)
  t, j = relabel_indices(arr["states"].shape[0], window, goals_per_step, seed, target_ok)
  return _with_actions({"observation": _rows(arr["states"], t), "goal": _rows(arr["goal_states"], t + j)},
                       arr["actions"], t, action_chunk)


def high_level_examples(states, goal_states, window_low: int, window_high: int,
                        goals_per_step: Optional[int] = None, seed: int = 0,
                        target_ok: Optional[np.ndarray] = None) -> Examples:
  """High-level examples: observation s_t, subgoal g_{t+min(W_l, j)}, goal g_{t+j}, 1 <= j <= W_h."""
  window_low = _check_window("window_low", window_low)
  window_high = _check_window("window_high", window_high)
  if window_high <= window_low:
    raise ValueError(f"window_high ({window_high}) must be larger than window_low ({window_low})")
  _, arr = _check_arrays(states=states, goal_states=goal_states)
  t, j = relabel_indices(arr["states"].shape[0], window_high, goals_per_step, seed, target_ok, window_low)
  g = arr["goal_states"]
  return {"observation": _rows(arr["states"], t), "subgoal": _rows(g, t + np.minimum(j, window_low)),
          "goal": _rows(g, t + j)}


def final_goal_examples(states, goal_states, actions, action_chunk: int = 1) -> Examples:
  """GCBC without relabeling: every (s_t, a_t) with the episode's final goal-space state g_T."""
  length, arr = _check_arrays(states=states, goal_states=goal_states, actions=actions)
  t = np.arange(max(length - 1, 0))
  goal = np.broadcast_to(arr["goal_states"][-1:], (t.size, arr["goal_states"].shape[1])) \
      if length else arr["goal_states"][:0]
  return _with_actions({"observation": _rows(arr["states"], t), "goal": np.array(goal)}, arr["actions"], t,
                       action_chunk)


def bc_examples(states, actions, action_chunk: int = 1) -> Examples:
  """Plain BC: every (s_t, a_t), 0 <= t < T, no goal."""
  length, arr = _check_arrays(states=states, actions=actions)
  t = np.arange(max(length - 1, 0))
  return _with_actions({"observation": _rows(arr["states"], t)}, arr["actions"], t, action_chunk)
