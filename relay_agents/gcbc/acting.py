"""Actors: a goal-conditioned policy, and the relay hierarchical actor built from two of them.

The hierarchical actor re-plans every `replan_every` (= W_l) steps: the high-level policy maps
(s_t, final goal g_h) to a subgoal g_l, then the low-level policy acts toward g_l. Both run in
deterministic (mean) or sampled mode.
"""
from typing import Optional

import jax
import numpy as np

from relay_agents import acme_compat  # noqa: F401
from acme import core  # pylint: disable=g-bad-import-order
from relay_agents.gcbc.config import GoalBCConfig
from relay_agents.gcbc.networks import GoalBCNetworks
from relay_agents.gcbc.networks import policy_inputs


class GoalPolicy:
  """A trained goal-conditioned policy: (s, g) -> output, jitted; numpy in, numpy out."""

  def __init__(self, networks: GoalBCNetworks, params, config: GoalBCConfig):
    self.networks, self.params, self.config = networks, params, config

    def act(params, observation, goal, key, deterministic):
      inputs = policy_inputs(observation, goal, config.use_goal, jax.numpy.concatenate)
      output = networks.policy.apply(params, inputs[None])
      sampled = networks.sample(output, key)[0]
      return jax.numpy.where(deterministic, networks.mean(output)[0], sampled)

    self._act = jax.jit(act)

  def __call__(self, observation, goal, key, deterministic: bool = True) -> np.ndarray:
    goal = np.zeros(0, np.float32) if goal is None else goal
    return np.asarray(self._act(self.params, np.asarray(observation, np.float32),
                                np.asarray(goal, np.float32), key, deterministic))


class _GoalActor(core.Actor):
  """Shared bookkeeping: the episode goal, an RNG key, and no learning (pure evaluation)."""

  def __init__(self, seed: int, deterministic: bool):
    # Keys are drawn with numpy (a raw uint32[2] key per step): an eager jax.random.split per
    # env step costs about as much as the policy's own forward pass.
    self._rng = np.random.default_rng(seed)
    self.deterministic = deterministic
    self.goal: Optional[np.ndarray] = None

  def set_goal(self, goal: np.ndarray) -> None:
    self.goal = np.asarray(goal, np.float32)

  def _next_key(self) -> np.ndarray:
    return self._rng.integers(0, 2 ** 32, size=2, dtype=np.uint32)

  def observe_first(self, timestep) -> None:
    del timestep

  def observe(self, action, next_timestep) -> None:
    del action, next_timestep

  def update(self, wait: bool = False) -> None:
    del wait


class FlatActor(_GoalActor):
  """One goal-conditioned (or goal-free) policy acting directly: GCBC and BC baselines."""

  def __init__(self, policy: GoalPolicy, action_low=-1.0, action_high=1.0, seed: int = 0,
               deterministic: bool = True):
    super().__init__(seed, deterministic)
    self.policy, self.low, self.high = policy, action_low, action_high

  def select_action(self, observation):
    action = self.policy(observation, self.goal, self._next_key(), self.deterministic)
    return np.clip(action, self.low, self.high).astype(np.float32)


class HierarchicalActor(_GoalActor):
  """Relay policy: π_h picks a subgoal every `replan_every` steps, π_l acts toward it."""

  def __init__(self, high: GoalPolicy, low: GoalPolicy, replan_every: int = 30, action_low=-1.0,
               action_high=1.0, seed: int = 0, deterministic: bool = True):
    super().__init__(seed, deterministic)
    if replan_every <= 0:
      raise ValueError(f"replan_every must be positive, got {replan_every}")
    self.high, self.low_policy, self.replan_every = high, low, replan_every
    self.action_low, self.action_high = action_low, action_high
    self.subgoal: Optional[np.ndarray] = None
    self.steps = 0
    self.replans = []  # step indices at which a new subgoal was chosen (for tests and videos)

  def observe_first(self, timestep) -> None:
    del timestep
    self.steps = 0
    self.subgoal = None
    self.replans = []

  def select_action(self, observation):
    if self.steps % self.replan_every == 0:
      self.subgoal = self.high(observation, self.goal, self._next_key(), self.deterministic)
      self.replans.append(self.steps)
    action = self.low_policy(observation, self.subgoal, self._next_key(), self.deterministic)
    return np.clip(action, self.action_low, self.action_high).astype(np.float32)

  def observe(self, action, next_timestep) -> None:
    del action, next_timestep
    self.steps += 1
