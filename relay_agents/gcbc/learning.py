"""The learner: Acme's JAX BC learner with our goal-conditioned loss.

Acme's `bc.BCLearner` expresses goal-conditioned BC exactly once the goal is part of the
observation (see `replay.learner_dataset`), so no learner of our own is needed.
"""
from typing import Iterator, Optional

import jax

from relay_agents import acme_compat  # noqa: F401
from acme import types  # pylint: disable=g-bad-import-order
from acme.agents.jax import bc
from acme.utils import loggers
from relay_agents.gcbc.config import GoalBCConfig
from relay_agents.gcbc.networks import GoalBCNetworks


def make_loss(networks: GoalBCNetworks, config: GoalBCConfig):
  if config.head in ("gaussian", "mixture"):
    return bc.logp(networks.bc_log_prob or networks.log_prob)
  return bc.mse(lambda output, key: networks.mean(output))


def make_learner(networks: GoalBCNetworks, dataset: Iterator[types.Transition], config: GoalBCConfig,
                 random_key, logger: Optional[loggers.Logger] = None) -> bc.BCLearner:
  return bc.BCLearner(network=networks.policy, random_key=random_key,
                      loss_fn=make_loss(networks, config), optimizer=config.optimizer(),
                      demonstrations=dataset, num_sgd_steps_per_step=config.num_sgd_steps_per_step,
                      logger=logger or loggers.NoOpLogger())


def params_of(learner: bc.BCLearner):
  return jax.device_get(learner.get_variables(["policy"])[0])
