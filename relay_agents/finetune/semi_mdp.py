"""Finetuning a policy that predicts chunks of actions: its transitions as a semi-MDP (pure numpy).

A chunked policy (`GoalBCConfig.action_chunk` = k, `execute_steps` = m) decides once and then acts
m steps open-loop: it predicts k actions from (s_t, g), the actor executes the first m, and it
predicts again after m steps or as soon as its goal changes (the low level's new subgoal every
W_l steps; `gcbc.acting.GoalPolicy`). So the decision, not the step, is what the policy gradient
must score. Per decision at step t (covering steps t .. e-1, e - t <= m):

  input      [s_t, g_t]
  action     the executed actions a_t .. a_{e-1} in chunk order, NaN in the chunk's other dims:
             its log-probability is the marginal of the predicted chunk distribution over the
             executed dims (`GoalBCNetworks.marginal_log_prob`), exactly the probability with
             which the actor drew what it executed (one sample of the whole chunk)
  reward     sum_i gamma^i r_{t+i} over the executed steps
  discount   gamma^(e - t) for bootstrapping from the next decision's value
  done       a segment (re-plan window) or the episode ends within the decision
  steps      how many steps it executed (e - t, fewer where the episode ended)

`decision_starts` is the schedule the actor follows: within each segment of `segment` steps (W_l
for the low level, the whole episode for a flat policy) decisions start at offsets 0, m, 2m, ...
The finetuning actor re-predicts at every re-plan (`FinetuneActor`), so this holds exactly.
"""
from typing import Dict

import numpy as np


def decision_starts(horizon: int, segment: int, execute_steps: int) -> np.ndarray:
  """Steps (< horizon) at which a chunked policy predicts: offsets 0, m, 2m, ... in each segment."""
  if horizon < 0 or segment < 1 or execute_steps < 1:
    raise ValueError(f"need horizon >= 0, segment >= 1, execute_steps >= 1; got {horizon}, {segment}, "
                     f"{execute_steps}")
  t = np.arange(horizon)
  return t[(t % segment) % execute_steps == 0]


def decision_ends(starts: np.ndarray, horizon: int, segment: int, execute_steps: int) -> np.ndarray:
  """The step after each decision's last: min(start + m, the segment's end, horizon)."""
  return np.minimum(np.minimum(starts + execute_steps, (starts // segment + 1) * segment), horizon)


def to_decisions(steps: Dict[str, np.ndarray], segment: int, execute_steps: int, action_chunk: int,
                 gamma: float) -> Dict[str, np.ndarray]:
  """Per-step transitions -> per-decision transitions (see the module docstring).

  steps: [B, T] arrays rewards, done, mask, elapsed; inputs [B, T, d_in]; actions [B, T, d]
  (the executed actions, one per step). Returns the same keys over [B, D] decisions, actions
  [B, D, k * d] (NaN where not executed), plus discount and steps [B, D].
  """
  if not 1 <= execute_steps <= action_chunk:
    raise ValueError(f"execute_steps must be in 1..action_chunk ({action_chunk}), got {execute_steps}")
  mask = np.asarray(steps["mask"], np.float32)
  b, horizon = mask.shape
  actions = np.asarray(steps["actions"], np.float32)
  d = actions.shape[-1]
  starts = decision_starts(horizon, segment, execute_steps)
  ends = decision_ends(starts, horizon, segment, execute_steps)
  rewards = np.asarray(steps["rewards"], np.float32) * mask
  done = np.asarray(steps["done"], np.float32) * mask
  out_actions = np.full((b, len(starts), action_chunk * d), np.nan, np.float32)
  out_rewards = np.zeros((b, len(starts)), np.float32)
  out_done = np.zeros((b, len(starts)), np.float32)
  out_steps = np.zeros((b, len(starts)), np.float32)
  for j, (t, e) in enumerate(zip(starts, ends)):
    for i in range(e - t):
      live = mask[:, t + i] > 0
      out_actions[live, j, i * d:(i + 1) * d] = actions[live, t + i]
      out_rewards[:, j] += gamma ** i * rewards[:, t + i]
      out_done[:, j] = np.maximum(out_done[:, j], done[:, t + i])
      out_steps[:, j] += mask[:, t + i]
  discount = np.broadcast_to(np.float32(gamma) ** (ends - starts).astype(np.float32), (b, len(starts)))
  return {"inputs": np.asarray(steps["inputs"])[:, starts], "actions": out_actions, "rewards": out_rewards,
          "done": out_done, "mask": mask[:, starts], "elapsed": np.asarray(steps["elapsed"])[:, starts],
          "discount": np.ascontiguousarray(discount, np.float32), "steps": out_steps}
