"""Acme builders of the goal-conditioned BC agent and of the relay hierarchy built from two of them.

As in Acme, a builder makes every piece of an agent from its config: the Reverb table, the
dataset iterator, the learner, the policy (`make_policy`, Acme's newer builder method; evaluation
= deterministic) and the actor, which reads its parameters from a `VariableSource` (a learner
while training, the saved parameters of a model when evaluating: `relay_agents.models`). The
actor the builder makes is the one evaluation uses, so a finetuning builder can sit beside this
one and reuse the same wiring.
"""
from typing import Dict, Iterator, List, Optional

import reverb

from relay_agents import acme_compat  # noqa: F401
from acme import core, types  # pylint: disable=g-bad-import-order
from acme.agents.jax import builders
from relay_agents import replay
from relay_agents.gcbc import acting, data, learning
from relay_agents.gcbc.config import GoalBCConfig
from relay_agents.gcbc.networks import GoalBCNetworks


def _seed(random_key) -> int:
  return int(random_key[-1]) if random_key is not None else 0


class GoalBCBuilder(builders.ActorLearnerBuilder):
  """Offline agent: data comes from a Reverb table filled by `replay.feed`, so no adder.

  `dims` are the relabeled example fields and sizes (e.g. observation 59, goal 30, action 9): the
  replay table's signature (not needed to act). `observation_fn` maps the environment's
  observation to the layout the data has (None: as is; `relay_data.goal_space.ObservationSpec.from_env`).
  """

  def __init__(self, config: GoalBCConfig, dims: Optional[Dict[str, int]] = None, observation_fn=None):
    self.config, self.dims, self.observation_fn = config, dims, observation_fn

  def make_replay_tables(self, environment_spec=None) -> List[reverb.Table]:
    del environment_spec  # Tables hold relabeled examples, not environment transitions.
    if not self.dims:
      raise ValueError("the replay table needs the example dims (GoalBCBuilder(config, dims))")
    return [replay.make_table(self.config.table_name, self.dims, self.config.max_replay_size,
                              self.config.examples_per_item)]

  def make_dataset_iterator(self, replay_client: reverb.Client) -> Iterator[types.Transition]:
    address = replay_client.server_address
    return data.reverb_iterator(address, self.config)

  def make_adder(self, replay_client: reverb.Client) -> None:
    del replay_client
    return None

  def make_policy(self, networks: GoalBCNetworks, environment_spec=None,
                  evaluation: bool = True) -> acting.GoalPolicyFn:
    """The jitted policy; evaluation acts on the mean (likeliest mode), otherwise it samples."""
    del environment_spec
    return acting.GoalPolicyFn(networks, self.config, deterministic=evaluation)

  def make_actor(self, random_key, policy_network: acting.GoalPolicyFn, adder=None,
                 variable_source: Optional[core.VariableSource] = None) -> acting.FlatActor:
    del adder
    if variable_source is None:
      raise ValueError("the actor needs a variable_source holding the 'policy' parameters")
    params = variable_source.get_variables(["policy"])[0]
    return acting.FlatActor(acting.GoalPolicy(policy_network, params), seed=_seed(random_key),
                            deterministic=policy_network.deterministic, observation_fn=self.observation_fn,
                            variable_source=variable_source)

  def make_learner(self, random_key, networks: GoalBCNetworks, dataset: Iterator[types.Transition],
                   replay_client=None, counter=None, logger=None) -> core.Learner:
    del replay_client, counter
    return learning.make_learner(networks, dataset, self.config, random_key, logger=logger)


class RelayBuilder:
  """The relay hierarchy: a high-level and a low-level `GoalBCBuilder` and W_l (`window`).

  Each level is learned by its own builder (the levels share no data or parameters); the actor
  combines their policies into a `HierarchicalActor` that re-plans every `window` steps.
  """
  LEVELS = ("high", "low")

  def __init__(self, high: GoalBCBuilder, low: GoalBCBuilder, window: int):
    self.levels = {"high": high, "low": low}
    self.window = window

  def make_policy(self, networks: Dict[str, GoalBCNetworks], environment_spec=None,
                  evaluation: bool = True) -> Dict[str, acting.GoalPolicyFn]:
    return {level: self.levels[level].make_policy(networks[level], environment_spec, evaluation)
            for level in self.LEVELS}

  def make_actor(self, random_key, policy_network: Dict[str, acting.GoalPolicyFn], adder=None,
                 variable_source: Optional[Dict[str, core.VariableSource]] = None) -> acting.HierarchicalActor:
    del adder
    if variable_source is None or set(variable_source) != set(self.LEVELS):
      raise ValueError(f"the relay actor needs a variable source per level {self.LEVELS}")
    bound = {level: acting.GoalPolicy(policy_network[level], variable_source[level].get_variables(["policy"])[0])
             for level in self.LEVELS}
    return acting.HierarchicalActor(bound["high"], bound["low"], window=self.window, seed=_seed(random_key),
                                    deterministic=policy_network["low"].deterministic,
                                    high_deterministic=policy_network["high"].deterministic,
                                    observation_fn=self.levels["low"].observation_fn)

