"""The goal-conditioned BC agent's learner input: relabeled-example batches as Acme `Transition`s.

`relay_agents.replay` moves named example fields; this is where they become what Acme's BC
learner consumes: observation = the policy input [s, g] (`networks.policy_inputs`), action = the
target field. A fetch holds `num_sgd_steps_per_step` batches, which the learner splits into that
many SGD steps, so the feed's cost is paid once per fetch.
"""
from typing import Dict, Iterator

import numpy as np
import tensorflow as tf

from relay_agents import acme_compat  # noqa: F401
from acme import types  # pylint: disable=g-bad-import-order
from relay_agents import replay
from relay_agents.gcbc import networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import kitchen


def to_transition(batch: Dict, config: GoalBCConfig, concat=np.concatenate, zeros=np.zeros) -> types.Transition:
  """A batch of examples as the Transition Acme's BC learner trains on (np or tf arrays)."""
  inputs = gcbc_networks.policy_inputs(batch["observation"], batch.get("goal"), config.use_goal, concat)
  target = batch[config.target_field]
  none = zeros(tf.shape(target)[:-1] if zeros is tf.zeros else target.shape[:-1], np.float32)
  return types.Transition(observation=inputs, action=target, reward=none, discount=none, next_observation=inputs)


NOISY_GOAL_DIMS = kitchen.ARM  # the goal dims `goal_noise` perturbs: the kitchen arm's 7 joints


def with_goal_noise(batch: Dict, std: float, normal) -> Dict:
  """The batch with N(0, std^2) added to its goals' arm joints (`GoalBCConfig.goal_noise`);
  `normal(shape)` draws standard normals (tf.random.normal in the graph, an np Generator's
  standard_normal otherwise). Pure given the draws; std 0 returns the batch unchanged."""
  if not std:
    return batch
  goal = batch["goal"]
  mask = np.zeros(int(goal.shape[-1]), np.float32)
  mask[NOISY_GOAL_DIMS] = std
  return {**batch, "goal": goal + normal(tf.shape(goal) if isinstance(goal, tf.Tensor) else goal.shape) * mask}


def reverb_dataset(address: str, config: GoalBCConfig) -> tf.data.Dataset:
  """Transitions of batch_size x num_sgd_steps_per_step examples from the agent's Reverb table,
  goals perturbed by `config.goal_noise` (training batches)."""
  fetches = replay.example_batches(address, config.table_name, config.batch_size, config.examples_per_item,
                                   steps_per_fetch=config.num_sgd_steps_per_step,
                                   max_in_flight_samples_per_worker=config.max_in_flight_samples_per_worker)
  return fetches.map(lambda b: to_transition(with_goal_noise(b, config.goal_noise, tf.random.normal), config,
                                             tf.concat, tf.zeros))


def reverb_iterator(address: str, config: GoalBCConfig) -> Iterator[types.Transition]:
  return replay.numpy_iterator(reverb_dataset(address, config))


def array_iterator(arrays: Dict[str, np.ndarray], config: GoalBCConfig, seed: int = 0) -> Iterator[types.Transition]:
  """The same Transitions drawn from in-memory arrays (no Reverb)."""
  rng = np.random.default_rng([seed, 1])
  normal = lambda shape: rng.standard_normal(shape, np.float32)
  for batch in replay.array_batches(arrays, config.batch_size, config.num_sgd_steps_per_step, seed):
    yield to_transition(with_goal_noise(batch, config.goal_noise, normal), config)
