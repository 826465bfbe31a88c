"""Reverb plumbing shared by every agent: tables of relabeled examples, a feeder, datasets.

A relabeled dataset (TFDS, from `pipelines.relabel`) is shuffled and streamed into a Reverb table
in items of `examples_per_item` examples (one item per example costs a Reverb round trip per
example and halves learner throughput); learners sample items uniformly through Reverb's tf.data
datasets and flatten batch_size / examples_per_item of them into a batch. Server,
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


def example_signature(dims: Dict[str, int], per_item: int) -> Dict[str, tf.TensorSpec]:
  return {k: tf.TensorSpec([per_item, d], tf.float32, name=k) for k, d in sorted(dims.items())}


def make_table(name: str, dims: Dict[str, int], max_examples: int, per_item: int,
               min_size: int = 1) -> reverb.Table:
  """Uniform-sampling table of `per_item`-example items; FIFO eviction bounds memory."""
  return reverb.Table(name=name, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                      max_size=max(1, max_examples // per_item),
                      rate_limiter=reverb.rate_limiters.MinSize(min_size),
                      signature=example_signature(dims, per_item))


def feed(address: str, table: str, examples: tf.data.Dataset, keys: Sequence[str], per_item: int,
         limit: Optional[int] = None, progress: bool = True, total: Optional[int] = None,
         shuffle_buffer: int = 10_000, seed: int = 0, flush_every: int = 64) -> int:
  """Writes examples (dicts of [d] tensors) into `table` in items of `per_item` examples.

  Examples are shuffled (bounded buffer) before chunking so an item is not one episode's slice.
  The last partial item is completed with the stream's first examples, so every example is
  stored at least once. Returns the number of distinct examples written.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  client = reverb.Client(address)
  if limit is not None:
    examples = examples.take(limit)
  stream = examples.shuffle(shuffle_buffer, seed=seed).map(lambda ex: {k: ex[k] for k in keys})
  written, head = 0, None
  bar = tqdm(total=min(x for x in (limit, total, float("inf")) if x is not None), desc=f"feeding {table}",
             unit="ex", disable=not progress, leave=False)
  with client.trajectory_writer(num_keep_alive_refs=1) as writer:
    for i, chunk in enumerate(stream.batch(per_item).as_numpy_iterator()):
      n = len(chunk[keys[0]])
      if head is None:
        head = chunk
      if n < per_item:  # Complete the last item with examples from the first one.
        chunk = {k: np.concatenate([chunk[k], np.resize(head[k], (per_item - n,) + head[k].shape[1:])])
                 for k in keys}
      writer.append(chunk)
      writer.create_item(table, priority=1.0, trajectory={k: writer.history[k][-1] for k in keys})
      written += n
      bar.update(n)
      if (i + 1) % flush_every == 0:
        writer.flush()
    writer.flush()
  bar.close()
  return written


def learner_dataset(address: str, table: str, config: GoalBCConfig) -> tf.data.Dataset:
  """Batches of acme `Transition`s (observation = policy input, action = target) from Reverb."""
  ds = reverb.TrajectoryDataset.from_table_signature(
      server_address=address, table=table,
      max_in_flight_samples_per_worker=config.max_in_flight_samples_per_worker,
      num_workers_per_iterator=2)

  def to_transition(data):
    inputs = gcbc_networks.policy_inputs(data["observation"], data.get("goal"), config.use_goal, tf.concat)
    target = data[config.target]
    zeros = tf.zeros(tf.shape(target)[:-1])
    return types.Transition(observation=inputs, action=target, reward=zeros, discount=zeros,
                            next_observation=inputs)

  items = ds.map(lambda sample: sample.data)
  per_item = config.examples_per_item
  if config.batch_size % per_item == 0:
    # A batch is batch_size / per_item whole items, flattened: no per-example tf.data work. The
    # feeder shuffled examples across episodes before chunking, and items are sampled uniformly.
    examples = items.batch(config.batch_size // per_item, drop_remainder=True).map(
        lambda d: {k: tf.reshape(v, [config.batch_size, v.shape[-1]]) for k, v in d.items()})
  else:
    examples = items.unbatch().shuffle(4 * config.batch_size).batch(config.batch_size, drop_remainder=True)
  return examples.map(to_transition, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def numpy_iterator(dataset: tf.data.Dataset, prefetch: int = 4) -> Iterator[types.Transition]:
  """Numpy batches, fetched and put on the device by a background thread (overlaps with SGD)."""
  from acme.jax import utils as jax_utils  # pylint: disable=import-outside-toplevel
  return jax_utils.prefetch(dataset.as_numpy_iterator(), buffer_size=prefetch)


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
    from relay_data import relabeled  # pylint: disable=import-outside-toplevel
    return cls(relabeled.dims_of(relabeled_dir))

  @property
  def keys(self) -> List[str]:
    return sorted(self.dims)
