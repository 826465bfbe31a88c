"""Acme-style builder of finetuning: Reverb tables, adder, actor, learner, demo data.

Tables on one server (all reached by address, so actors may live in other processes):
  trajectories  a queue of whole episodes (Acme `EpisodeAdder` items padded to the horizon,
                written once per episode by `adder.EpisodeWriter`), each sampled once by the
                learner: on-policy batches;
  relabeled     the relabeled demo examples imitation used (DAPG/IRIL; IRIL inserts more);
  variables     one item: the newest policy parameters, for `ReverbVariableSource`;
  variables_version  one item: their version alone, which actors poll before each episode;
  actor_spec    one item: the run's description (model, goal, horizon, table names), so
                `relay actor --reverb-address HOST:PORT` needs nothing else.
"""
from typing import Dict, Iterator, List, Optional, Sequence

import reverb

from relay_agents import acme_compat  # noqa: F401
from acme.adders.reverb import episode as episode_adders  # pylint: disable=g-bad-import-order
from acme.jax import variable_utils
from relay_agents.finetune import acting, adder as adder_lib, env as env_lib, filtered, learning, policy_io, replay_io
from relay_agents.finetune.config import FinetuneConfig


def _one_item_table(name: str) -> reverb.Table:
  return reverb.Table(name=name, sampler=reverb.selectors.Lifo(), remover=reverb.selectors.Fifo(),
                      max_size=1, rate_limiter=reverb.rate_limiters.MinSize(1))


class FinetuneBuilder:
  """Makes every component of a finetuning run from its config and the model being finetuned."""

  def __init__(self, config: FinetuneConfig, model: policy_io.Model):
    if config.finetune == "both" and not model.hierarchical:
      raise ValueError(f"--finetune both needs a relay (ril) model; {model.path} is '{model.agent}'")
    self.config, self.model = config, model
    self.demo_level = model.levels[acting.low_name(model)]

  @property
  def sequence_length(self) -> int:
    return self.config.max_episode_steps + 1  # observations of an episode (the last has no action)

  @property
  def demo_dims(self) -> Dict[str, int]:
    """The demo fields the level's BC term reads (observation, goal, its target): not, e.g., the
    action chunks a relabeled dataset also holds, which IRIL's on-policy examples lack."""
    level = self.demo_level
    wanted = {"observation", level.config.target_field} | ({"goal"} if level.config.use_goal else set())
    return {k: d for k, d in level.dims.items() if k in wanted}

  @property
  def demo_keys(self) -> List[str]:
    return sorted(self.demo_dims)

  @property
  def examples_per_item(self) -> int:
    return self.demo_level.config.examples_per_item

  def make_replay_tables(self) -> List[reverb.Table]:
    cfg = self.config
    signature = episode_adders.EpisodeAdder.signature(env_lib.environment_spec(), acting.extras_spec(),
                                                      sequence_length=self.sequence_length)
    tables = [reverb.Table.queue(cfg.trajectory_table, max_size=cfg.episodes_per_iteration, signature=signature),
              _one_item_table(cfg.variables_table), _one_item_table(acting.version_table(cfg.variables_table)),
              _one_item_table(cfg.spec_table)]
    if cfg.uses_demos:
      tables.append(replay_io.demo_table(cfg.demo_table, self.demo_dims,
                                         self.demo_level.config.max_replay_size, self.examples_per_item))
    return tables

  def make_adder(self, client: reverb.Client) -> adder_lib.EpisodeWriter:
    """Writes what `EpisodeAdder(padding_fn=np.zeros)` would, once per episode (see `adder`)."""
    return adder_lib.EpisodeWriter(client, self.config.trajectory_table, self.sequence_length)

  def make_actor(self, seed: int, variable_source, adder=None) -> acting.FinetuneActor:
    return self.make_actors([seed], variable_source, [adder])[0]

  def make_actors(self, seeds: Sequence[int], variable_source, adders: Sequence) -> List[acting.FinetuneActor]:
    """Lanes for `acting.run_episodes`: one actor per seed, sharing one variable client so that
    their policy calls batch together, each recording with its own adder."""
    client = variable_utils.VariableClient(variable_source, acting.variable_names(self.model))
    return [acting.FinetuneActor(self.model, client, adder, seed=seed) for seed, adder in zip(seeds, adders)]

  def feed_demos(self, address: str, data_dir: str, progress: bool = True, seed: int = 0) -> int:
    return replay_io.feed_demos(address, self.config.demo_table, data_dir, self.demo_keys, self.examples_per_item,
                                self.config.demo_max_examples, progress, seed)

  def make_demo_iterator(self, address: str) -> Iterator:
    return replay_io.demo_batches(address, self.config.demo_table, self.demo_level.config,
                                  self.config.demo_batch_size)

  def make_demo_inserter(self, address: str):
    """IRIL's writer: relabeled on-policy examples (dicts of arrays) into the demo table."""
    return lambda examples: replay_io.insert_examples(address, self.config.demo_table, examples, self.demo_keys,
                                                      self.examples_per_item)

  def make_learner(self, random_key, client: reverb.Client, eps: float, elements,
                   demo_iterator: Optional[Iterator] = None, demo_inserter=None, logger=None):
    if self.config.variant == "filtered":
      return filtered.FilteredLearner(self.model, self.config, client, eps, random_key, elements, demo_iterator)
    return learning.NPGLearner(self.model, self.config, client, eps, random_key, elements,
                               demo_iterator=demo_iterator, demo_inserter=demo_inserter, logger=logger)
