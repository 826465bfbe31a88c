"""Acme builder of the goal-conditioned BC agent: Reverb table, dataset, learner, actor."""
from typing import Dict, Iterator, List, Optional

import reverb

from relay_agents import acme_compat  # noqa: F401
from acme import core, types  # pylint: disable=g-bad-import-order
from acme.agents.jax import builders
from relay_agents import replay
from relay_agents.gcbc import acting, data, learning
from relay_agents.gcbc.config import GoalBCConfig
from relay_agents.gcbc.networks import GoalBCNetworks


class GoalBCBuilder(builders.ActorLearnerBuilder):
  """Offline agent: data comes from a Reverb table filled by `replay.feed`, so no adder.

  `dims` are the relabeled example fields and sizes (e.g. observation 59, goal 30, action 9).
  """

  def __init__(self, config: GoalBCConfig, dims: Dict[str, int]):
    self.config, self.dims = config, dims

  def make_replay_tables(self, environment_spec=None) -> List[reverb.Table]:
    del environment_spec  # Tables hold relabeled examples, not environment transitions.
    return [replay.make_table(self.config.table_name, self.dims, self.config.max_replay_size,
                              self.config.examples_per_item)]

  def make_dataset_iterator(self, replay_client: reverb.Client) -> Iterator[types.Transition]:
    address = replay_client.server_address
    return data.reverb_iterator(address, self.config)

  def make_adder(self, replay_client: reverb.Client) -> None:
    del replay_client
    return None

  def make_actor(self, random_key, policy_network: acting.GoalPolicy, adder=None,
                 variable_source: Optional[core.VariableSource] = None) -> core.Actor:
    del adder, variable_source
    seed = int(random_key[-1]) if random_key is not None else 0
    return acting.FlatActor(policy_network, seed=seed)

  def make_learner(self, random_key, networks: GoalBCNetworks, dataset: Iterator[types.Transition],
                   replay_client=None, counter=None, logger=None) -> core.Learner:
    del replay_client, counter
    return learning.make_learner(networks, dataset, self.config, random_key, logger=logger)
