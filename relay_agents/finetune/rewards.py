"""Rewards of RL finetuning, as pure numpy functions of goal-space states (see relay_data.kitchen).

High level: task progress, i.e. how many of the compound goal's elements the environment's own
completion test counts as newly done (the env reports it; `window_sums` adds it up per re-plan
window for the high level's transitions).

Low level: reaching the subgoal the high level commanded, from the goal-space state reached
after each step (`g`, [..., 30]) and the subgoal (`subgoal`, [..., 30]):
  sparse        1 if ||g - subgoal|| < eps else 0 (the paper's best);
  euclidean     -||g - subgoal||;
  element-wise  the fraction of the goal space's parts (the robot's 9 joints, then each of the 7
                kitchen elements) that match the subgoal: the robot within eps, an element within
                kitchen.BONUS_THRESH (the env's own tolerance for "done").
`calibrate_eps` picks eps from demo windows.
"""
import numpy as np

from relay_data import kitchen

ROBOT = slice(0, 9)


def _pair(g, subgoal):
  g, subgoal = np.asarray(g, np.float32), np.asarray(subgoal, np.float32)
  if g.shape[-1] != kitchen.GOAL_DIM or subgoal.shape[-1] != kitchen.GOAL_DIM:
    raise ValueError(f"goal-space states must have {kitchen.GOAL_DIM} dims, got {g.shape} and {subgoal.shape}")
  return g, subgoal


def distance(g, subgoal) -> np.ndarray:
  g, subgoal = _pair(g, subgoal)
  return np.linalg.norm(g - subgoal, axis=-1)


def sparse(g, subgoal, eps: float) -> np.ndarray:
  return (distance(g, subgoal) < eps).astype(np.float32)


def euclidean(g, subgoal, eps: float = None) -> np.ndarray:
  del eps
  return -distance(g, subgoal).astype(np.float32)


def element_wise(g, subgoal, eps: float) -> np.ndarray:
  g, subgoal = _pair(g, subgoal)
  parts = [np.linalg.norm(g[..., ROBOT] - subgoal[..., ROBOT], axis=-1) < eps]
  parts += [np.linalg.norm(g[..., idx] - subgoal[..., idx], axis=-1) < kitchen.BONUS_THRESH
            for idx in (kitchen.ELEMENT_QPOS[e] for e in kitchen.ELEMENTS)]
  return np.mean(np.stack(parts, -1), -1).astype(np.float32)


LOW_LEVEL = {"sparse": sparse, "euclidean": euclidean, "element-wise": element_wise}


def low_level(name: str, g, subgoal, eps: float) -> np.ndarray:
  if name not in LOW_LEVEL:
    raise ValueError(f"unknown low-level reward {name!r}; known: {', '.join(LOW_LEVEL)}")
  return LOW_LEVEL[name](g, subgoal, eps)


def calibrate_eps(states, later_states, quantile: float = 0.25) -> float:
  """eps from demo windows: the `quantile` of the distance a demo moves in W_l steps.

  `states` and `later_states` are [N, 30] goal-space states W_l steps apart in the demos (the
  relabeled data's (s_t, g_{t+W_l}) pairs). A demo window ends exactly on its subgoal, so it
  reaches any eps > 0; eps as a low quantile of the windows' own displacement keeps the reward
  informative: being within eps is closer than (1 - quantile) of demo windows get by moving, so
  standing still next to a far subgoal does not earn it.
  """
  states, later = _pair(states, later_states)
  if states.shape != later.shape or states.ndim != 2 or len(states) == 0:
    raise ValueError(f"need two non-empty [N, {kitchen.GOAL_DIM}] arrays of equal shape, got "
                     f"{states.shape} and {later.shape}")
  if not 0 < quantile < 1:
    raise ValueError(f"quantile must be in (0, 1), got {quantile}")
  d = np.linalg.norm(later - states, axis=-1)
  if not np.isfinite(d).all():
    raise ValueError("states contain NaN or inf")
  eps = float(np.quantile(d, quantile))
  if eps <= 0:  # a dataset of mostly still windows: fall back to the smallest real motion
    moving = d[d > 0]
    if not len(moving):
      raise ValueError("no demo window moves at all: cannot calibrate eps")
    eps = float(moving.min())
  return eps


def window_sums(rewards: np.ndarray, window: int) -> np.ndarray:
  """[..., T] per-step rewards -> [..., ceil(T / W)] sums per re-plan window (the high level's)."""
  rewards = np.asarray(rewards, np.float32)
  t = rewards.shape[-1]
  n = -(-t // window)
  pad = np.zeros(rewards.shape[:-1] + (n * window - t,), np.float32)
  full = np.concatenate([rewards, pad], -1)
  return full.reshape(rewards.shape[:-1] + (n, window)).sum(-1)

