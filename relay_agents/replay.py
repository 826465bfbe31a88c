"""Reverb plumbing shared by every agent: tables of relabeled examples, a feeder, datasets.

A relabeled dataset (TFDS, from `pipelines.relabel`) is streamed into a Reverb table, one item
per example; learners sample uniformly from it through Reverb's tf.data datasets. Server,
feeder and learner only share an address, so they can be separate processes or machines.
Memory is bounded by the table's `max_size` (oldest examples are evicted first).
"""
import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import reverb
import tensorflow as tf

from relay_agents import acme_compat  # noqa: F401
from acme import types  # pylint: disable=g-bad-import-order
from relay_agents.gcbc import networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig


def example_signature(dims: Dict[str, int]) -> Dict[str, tf.TensorSpec]:
  return {k: tf.TensorSpec([d], tf.float32, name=k) for k, d in sorted(dims.items())}


def make_table(name: str, dims: Dict[str, int], max_size: int, min_size: int = 1) -> reverb.Table:
  """Uniform-sampling table of single examples; FIFO eviction bounds memory."""
  return reverb.Table(name=name, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                      max_size=max_size, rate_limiter=reverb.rate_limiters.MinSize(min_size),
                      signature=example_signature(dims))


def start_server(tables: Sequence[reverb.Table], port: Optional[int] = None) -> reverb.Server:
  return reverb.Server(tables=list(tables), port=port)


def feed(address: str, table: str, examples: tf.data.Dataset, keys: Sequence[str],
         limit: Optional[int] = None, progress: bool = True, flush_every: int = 128,
         total: Optional[int] = None) -> int:
  """Writes examples (dicts of [d] tensors) into `table`; returns how many were written."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  client = reverb.Client(address)
  written = 0
  bar = tqdm(total=min(x for x in (limit, total, float("inf")) if x is not None), desc=f"feeding {table}", unit="ex", disable=not progress, leave=False)
  with client.trajectory_writer(num_keep_alive_refs=1) as writer:
    for batch in examples.batch(flush_every).as_numpy_iterator():
      n = len(batch[keys[0]])
      for i in range(n):
        if limit is not None and written >= limit:
          break
        writer.append({k: batch[k][i] for k in keys})
        writer.create_item(table, priority=1.0,
                           trajectory={k: writer.history[k][-1] for k in keys})
        written += 1
      writer.flush()
      bar.update(n)
      if limit is not None and written >= limit:
        break
  bar.close()
  return written


def learner_dataset(address: str, table: str, config: GoalBCConfig) -> tf.data.Dataset:
  """Batches of acme `Transition`s (observation = policy input, action = target) from Reverb."""
  ds = reverb.TrajectoryDataset.from_table_signature(
      server_address=address, table=table,
      max_in_flight_samples_per_worker=config.max_in_flight_samples_per_worker)

  def to_transition(sample):
    data = sample.data
    inputs = gcbc_networks.policy_inputs(data["observation"], data.get("goal"), config.use_goal)
    target = data[config.target]
    zeros = tf.zeros(tf.shape(target)[:-1])
    return types.Transition(observation=inputs, action=target, reward=zeros, discount=zeros,
                            next_observation=inputs)

  return ds.batch(config.batch_size, drop_remainder=True).map(to_transition).prefetch(4)


def numpy_iterator(dataset: tf.data.Dataset) -> Iterator[types.Transition]:
  return dataset.as_numpy_iterator()


def array_iterator(arrays: Dict[str, np.ndarray], config: GoalBCConfig, seed: int = 0) -> Iterator[types.Transition]:
  """The same batches from in-memory arrays (the benchmark's baseline; no Reverb)."""
  rng = np.random.default_rng(seed)
  inputs = gcbc_networks.policy_inputs(arrays["observation"], arrays.get("goal"), config.use_goal)
  target = arrays[config.target]
  zeros = np.zeros(config.batch_size, np.float32)
  while True:
    idx = rng.integers(0, len(target), config.batch_size)
    yield types.Transition(inputs[idx], target[idx], zeros, zeros, inputs[idx])


@dataclasses.dataclass
class ExampleDims:
  dims: Dict[str, int]

  @classmethod
  def of(cls, relabeled_dir: str) -> "ExampleDims":
    from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
    features = rlds_io.load_builder(relabeled_dir).info.features
    return cls({k: int(v.shape[0]) for k, v in features.items()})

  @property
  def keys(self) -> List[str]:
    return sorted(self.dims)
