"""One compound kitchen goal as a dm_env.Environment, so Acme's loops and adders apply.

Observation: {"observation": [59] env observation, "goal": [30] the compound goal's goal-space
state}. Reward: the high level's, task progress by FrankaKitchen-v1's own completion test (the
number of the goal's elements newly done at this step; the env removes an element once done, so
each counts once). The episode terminates when every element is done and is truncated at
`max_episode_steps` (a `dm_env.truncation`, discount 1, so value bootstrapping stays correct).
The low level's reward depends on the subgoal the actor chose, so the learner computes it from
the recorded trajectory (`rewards`), which also lets a run switch rewards without re-collecting.

Each episode's randomness is `episode_seed(seed, index)`: set `episode_index` before a reset and
episode k is the same whichever actor runs it, which makes interrupted runs resumable exactly.
"""
from typing import Optional, Sequence

import dm_env
import numpy as np
from dm_env import specs

from relay_data import kitchen


OBSERVATION_SPEC = {"observation": specs.Array((kitchen.OBS_DIM,), np.float32, "observation"),
                    "goal": specs.Array((kitchen.GOAL_DIM,), np.float32, "goal")}
ACTION_SPEC = specs.BoundedArray((kitchen.ACTION_DIM,), np.float32, -1.0, 1.0, "action")
REWARD_SPEC = specs.Array((), np.float32, "reward")
DISCOUNT_SPEC = specs.BoundedArray((), np.float32, 0.0, 1.0, "discount")


def environment_spec():
  """The Acme EnvironmentSpec of `GoalKitchenEnv` (static: no MuJoCo model needed)."""
  from relay_agents import acme_compat  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from acme import specs as acme_specs  # pylint: disable=import-outside-toplevel
  return acme_specs.EnvironmentSpec(OBSERVATION_SPEC, ACTION_SPEC, REWARD_SPEC, DISCOUNT_SPEC)


def episode_seed(seed: int, index: int) -> int:
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFFFFFF)


def default_goal_state(elements: Sequence[str], env=None) -> np.ndarray:
  """The kitchen's initial goal-space state (reset seed 0) with `elements` moved to their targets,
  as `relay eval` builds its held-out goals."""
  env = env or kitchen.make_env(tasks_to_complete=elements)
  obs, _ = env.reset(seed=0)
  return kitchen.set_goal_state(kitchen.goal_state_from_observation(obs["observation"]), elements)


parse_goal = kitchen.parse_goal  # 'microwave,kettle,...' -> validated elements (one home: kitchen)


class GoalKitchenEnv(dm_env.Environment):
  """FrankaKitchen-v1 toward one compound goal (elements in any order)."""

  def __init__(self, elements: Sequence[str], goal_state: Optional[np.ndarray] = None,
               max_episode_steps: int = 280, seed: int = 0, settings=None,
               share_model_of: Optional["GoalKitchenEnv"] = None, **env_kwargs):
    """`settings`: the environment settings the model's data was recorded with (a
    `relay_data.kitchen.EnvSettings`, passed to `kitchen.make_env`; None: its default).
    `share_model_of`: step that environment's MuJoCo model (`kitchen.share_model`; see `lanes`)."""
    self.elements = list(elements)
    if settings is not None:
      env_kwargs["settings"] = settings
    # The TimeLimit wrapper is given room to spare: truncation is ours (so it is a dm_env truncation).
    self._env = kitchen.make_env(tasks_to_complete=self.elements, max_episode_steps=max_episode_steps + 1,
                                 **env_kwargs)
    if share_model_of is not None:
      kitchen.share_model(self._env, share_model_of._env)  # pylint: disable=protected-access
    self.goal_state = (default_goal_state(self.elements, self._env) if goal_state is None
                       else np.asarray(goal_state, np.float32))
    if self.goal_state.shape != (kitchen.GOAL_DIM,):
      raise ValueError(f"goal_state must have shape ({kitchen.GOAL_DIM},), got {self.goal_state.shape}")
    self.max_episode_steps, self.seed, self.episode_index = max_episode_steps, seed, 0
    self._steps, self._done = 0, True
    self.completed = []   # the goal's elements done so far this episode, in order

  def _observation(self, obs) -> dict:
    return {"observation": np.asarray(obs["observation"], np.float32), "goal": self.goal_state}

  def reset(self) -> dm_env.TimeStep:
    obs, _ = self._env.reset(seed=episode_seed(self.seed, self.episode_index))
    self.episode_index += 1
    self._steps, self._done, self.completed = 0, False, []
    return dm_env.restart(self._observation(obs))

  def step(self, action) -> dm_env.TimeStep:
    if self._done:
      return self.reset()
    action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
    obs, reward, terminated, _, info = self._env.step(action)
    self.completed = [e for e in info["episode_task_completions"] if e in self.elements]  # copy
    self._steps += 1
    observation, reward = self._observation(obs), np.float32(reward)
    # float32 discounts (dm_env's helpers use Python floats, which Reverb's signature rejects).
    if terminated:
      self._done = True
      return dm_env.TimeStep(dm_env.StepType.LAST, reward, np.float32(0.0), observation)
    if self._steps >= self.max_episode_steps:
      self._done = True
      return dm_env.TimeStep(dm_env.StepType.LAST, reward, np.float32(1.0), observation)
    return dm_env.TimeStep(dm_env.StepType.MID, reward, np.float32(1.0), observation)

  def observation_spec(self):
    return OBSERVATION_SPEC

  def action_spec(self):
    return ACTION_SPEC

  def reward_spec(self):
    return REWARD_SPEC

  def discount_spec(self):
    return DISCOUNT_SPEC

  def close(self):
    self._env.close()


def lanes(count: int, elements: Sequence[str], goal_state: Optional[np.ndarray] = None, max_episode_steps: int = 280,
          seed: int = 0, settings=None, first: Optional[GoalKitchenEnv] = None) -> list:
  """`count` environments toward one goal for `acting.run_episodes`'s lockstep lanes, all stepping
  one MuJoCo model (the first's; `first`, if given, is that first lane): each lane keeps its own
  state, and its episodes are those of a kitchen of its own."""
  if count < 1:
    raise ValueError(f"need at least one lane, got {count}")
  first = first or GoalKitchenEnv(elements, goal_state, max_episode_steps, seed, settings=settings)
  return [first] + [GoalKitchenEnv(elements, goal_state, max_episode_steps, seed, settings=settings, share_model_of=first)
                    for _ in range(count - 1)]
