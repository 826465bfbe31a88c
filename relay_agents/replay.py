"""Reverb plumbing shared by every agent: servers, tables, a feeder of relabeled examples, batches.

Agent-neutral: nothing here knows a policy's inputs or targets; it moves dicts of named float32
fields ([n, d] arrays) between relabeled datasets, Reverb tables and learners. An agent maps
batches to its own learner input (e.g. `relay_agents.gcbc.data`).

    relabeled dataset --(chunked reads, block shuffle)--> feed --> table of k-example items
        --> example_batches: fetches of batch_size x steps_per_fetch examples --> learner

CPU per SGD step is what limits a Reverb-fed learner on a small machine, so the feed works in
whole items and whole fetches: items hold `per_item` examples (one Reverb round trip and one
tf.data element per item, not per example); a fetch is a whole number of items reshaped into
one [batch_size * steps_per_fetch, d] batch (no per-example tf.data work), and a learner that
runs several SGD steps per call (Acme's `num_sgd_steps_per_step`) pays the fetch once for all of
them. With per_item == batch_size * steps_per_fetch a fetch is a single item.

Servers, feeders and learners only share an address, so they can be separate processes. Servers
started here are addressed through loopback (127.0.0.1). Note: Reverb 0.14's C++ server binds
`[::]:port` (all interfaces) and offers no bind-address option, so on a machine reachable from
untrusted networks, firewall the port; see `start_server`. Clients check the address answers
within a bounded time (`connect`) instead of hanging on an unreachable one.
"""
import dataclasses
import sys
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import reverb
import tensorflow as tf

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 10


def example_signature(dims: Dict[str, int], per_item: int) -> Dict[str, tf.TensorSpec]:
  return {k: tf.TensorSpec([per_item, d], tf.float32, name=k) for k, d in sorted(dims.items())}


def make_table(name: str, dims: Dict[str, int], max_examples: int, per_item: int,
               min_size: int = 1) -> reverb.Table:
  """Uniform-sampling table of `per_item`-example items; FIFO eviction bounds memory."""
  return reverb.Table(name=name, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                      max_size=max(1, max_examples // per_item),
                      rate_limiter=reverb.rate_limiters.MinSize(min_size),
                      signature=example_signature(dims, per_item))


def trajectory_table(name: str, signature, max_size: int, min_size: int = 1,
                     samples_per_insert: Optional[float] = None, error_buffer: float = 100.0) -> reverb.Table:
  """A uniform/FIFO table for an Acme adder's items (signature e.g. from
  `acme.adders.reverb.NStepTransitionAdder.signature(env_spec)`); with `samples_per_insert`,
  a rate limiter that keeps sampling and inserting at that ratio (online agents)."""
  limiter = (reverb.rate_limiters.MinSize(min_size) if samples_per_insert is None else
             reverb.rate_limiters.SampleToInsertRatio(samples_per_insert, min_size, error_buffer))
  return reverb.Table(name=name, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                      max_size=max_size, rate_limiter=limiter, signature=signature)


def start_server(tables: Sequence[reverb.Table], port: Optional[int] = None,
                 host: str = LOOPBACK) -> Tuple[reverb.Server, str]:
  """A Reverb server and the address to reach it by (`host:port`, loopback by default).

  Reverb 0.14 always binds all interfaces (its C++ server listens on `[::]:port`); `host` only
  names the address clients are given. Stop the server with `server.stop()`.
  """
  server = reverb.Server(list(tables), port=port)
  return server, f"{host}:{server.port}"


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> reverb.Client:
  """A client of the server at `address`, checked to answer within `timeout_s` seconds.

  Raises ConnectionError naming the address instead of blocking forever (Reverb's own calls
  have no deadline by default).
  """
  client = reverb.Client(address)
  try:
    client.server_info(timeout=max(1, int(np.ceil(timeout_s))))
  except Exception as e:  # DeadlineExceededError, or RuntimeError for unresolvable names
    raise ConnectionError(f"no Reverb server answered at {address} within {timeout_s:g}s "
                          f"({type(e).__name__}); is it running, and is the address right?") from None
  return client


# ---- feeding ---------------------------------------------------------------------------------

Chunks = Iterable[Dict[str, np.ndarray]]


def _chunks_of(source: Union[str, tf.data.Dataset, Chunks], keys: Sequence[str], seed: int) -> Chunks:
  """Numpy chunks (dicts of [n, d] arrays) of `keys` from a relabeled dataset path, a tf.data
  dataset of single examples, or an iterable of chunks."""
  if isinstance(source, str):
    from relay_data import relabeled  # pylint: disable=import-outside-toplevel
    return relabeled.iter_chunks(source, fields=list(keys), shuffle_files=True, seed=seed, cycle_length=16)
  if isinstance(source, tf.data.Dataset):
    return source.map(lambda ex: {k: ex[k] for k in keys}).batch(4096).as_numpy_iterator()
  return source


def shuffled_items(chunks: Chunks, keys: Sequence[str], per_item: int, buffer: int,
                   seed: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Items of exactly `per_item` examples: `buffer` examples are gathered from consecutive
  chunks, permuted, and cut into items (a block shuffle, so an item mixes many episodes).

  The last partial item is completed with the stream's first examples, so every example is
  stored at least once.
  """
  rng = np.random.default_rng(seed)
  block = max(buffer, per_item)
  pending, have, head = [], 0, None

  def flush(parts, final):
    nonlocal head
    data = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    n = len(data[keys[0]])
    order = rng.permutation(n)
    data = {k: v[order] for k, v in data.items()}
    cut = n if final else n - n % per_item
    if head is None and cut:
      head = {k: v[:per_item] for k, v in data.items()}
    for start in range(0, cut, per_item):
      item = {k: v[start:start + per_item] for k, v in data.items()}
      m = len(item[keys[0]])
      if m < per_item:
        item = {k: np.concatenate([item[k], np.resize(head[k], (per_item - m,) + head[k].shape[1:])])
                for k in keys}
      yield item, m
    return {k: v[cut:] for k, v in data.items()}

  for chunk in chunks:
    chunk = {k: np.asarray(chunk[k], np.float32) for k in keys}
    pending.append(chunk)
    have += len(chunk[keys[0]])
    if have >= block:
      rest = yield from flush(pending, final=False)
      pending, have = [rest], len(rest[keys[0]])
  if have:
    yield from flush(pending, final=True)


def feed(address: str, table: str, source: Union[str, tf.data.Dataset, Chunks], keys: Sequence[str],
         per_item: int, limit: Optional[int] = None, progress: bool = True, total: Optional[int] = None,
         shuffle_buffer: int = 262_144, seed: int = 0, flush_every: int = 64,
         timeout_s: float = CONNECT_TIMEOUT_S) -> int:
  """Writes examples into `table` in items of `per_item` examples; returns how many were written.

  `source`: a relabeled dataset directory (read in chunks straight into items, shard files in a
  seeded shuffled order, 16 read interleaved), a tf.data dataset of single examples, or an
  iterable of numpy chunks. Examples are block-shuffled (`shuffle_buffer`, ~100 MB of kitchen
  examples: ~50 episodes) before being cut into items, so even a whole-batch item mixes many
  episodes.
  `limit` caps the examples written (e.g. the table's capacity).
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  keys = list(keys)
  if isinstance(source, str) and limit is not None:
    from relay_data import relabeled  # pylint: disable=import-outside-toplevel
    warn_if_truncated(source, relabeled.num_examples(source), limit)
  client = connect(address, timeout_s)
  written = 0
  bar = tqdm(total=min(x for x in (limit, total, float("inf")) if x is not None), desc=f"feeding {table}",
             unit="ex", disable=not progress, leave=False)
  with client.trajectory_writer(num_keep_alive_refs=1) as writer:
    for i, (item, n) in enumerate(shuffled_items(_limited(_chunks_of(source, keys, seed), keys, limit), keys,
                                                 per_item, shuffle_buffer, seed)):
      writer.append(item)
      writer.create_item(table, priority=1.0, trajectory={k: writer.history[k][-1] for k in keys})
      written += n
      bar.update(n)
      if (i + 1) % flush_every == 0:
        writer.flush()
    writer.flush()
  bar.close()
  return written


def warn_if_truncated(data_dir: str, total: int, capacity: int) -> None:
  """Says on stderr when a relabeled dataset holds more examples than its Reverb table keeps.

  The table is filled once, so the examples beyond its capacity are never seen: training then
  uses a seeded subset. Said rather than refused, since a capped table is a legitimate bound on
  memory; silent, it was a data-loss path (`relay relabel` without `--goals-per-step` emits every
  goal of the window: ~3.5M low-level examples from 400 play episodes, 3.5x the default table)."""
  if total > capacity:
    print(f"warning: {data_dir} holds {total:,} examples but its Reverb table keeps {capacity:,} "
          f"(`relay train-il --max-replay-size`): only {capacity / total:.0%} of them, a seeded subset, are "
          f"used; raise the table size to {total:,} or relabel with fewer --goals-per-step to use them all",
          file=sys.stderr)


def _limited(chunks: Chunks, keys: Sequence[str], limit: Optional[int]) -> Chunks:
  if limit is None:
    yield from chunks
    return
  left = limit
  for chunk in chunks:
    if left <= 0:
      return
    n = len(chunk[keys[0]])
    yield chunk if n <= left else {k: v[:left] for k, v in chunk.items()}
    left -= n


# ---- learner side ----------------------------------------------------------------------------


def example_batches(address: str, table: str, batch_size: int, per_item: int, steps_per_fetch: int = 1,
                    max_in_flight_samples_per_worker: int = 64, num_workers: int = 1,
                    timeout_s: float = CONNECT_TIMEOUT_S) -> tf.data.Dataset:
  """Fetches of `steps_per_fetch` batches: dicts of [batch_size * steps_per_fetch, d] float32.

  A fetch is whole items (sampled uniformly) reshaped in one op when its size is a multiple of
  `per_item`; otherwise examples are unbatched and re-batched (slower, any sizes).
  """
  connect(address, timeout_s)
  fetch = batch_size * steps_per_fetch
  ds = reverb.TrajectoryDataset.from_table_signature(
      server_address=address, table=table, max_in_flight_samples_per_worker=max_in_flight_samples_per_worker,
      num_workers_per_iterator=num_workers)
  items = ds.map(lambda sample: sample.data)
  if fetch % per_item == 0:
    if fetch // per_item > 1:
      items = items.batch(fetch // per_item, drop_remainder=True)
    return items.map(lambda d: {k: tf.reshape(v, [fetch, v.shape[-1]]) for k, v in d.items()})
  return items.unbatch().shuffle(4 * fetch).batch(fetch, drop_remainder=True)


def numpy_iterator(dataset: tf.data.Dataset, prefetch: int = 4) -> Iterator:
  """Numpy elements of `dataset`, fetched and put on the device by a background thread (overlaps
  with SGD)."""
  from relay_agents import acme_compat  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from acme.jax import utils as jax_utils  # pylint: disable=import-outside-toplevel
  return jax_utils.prefetch(dataset.prefetch(2).as_numpy_iterator(), buffer_size=prefetch)


def array_batches(arrays: Dict[str, np.ndarray], batch_size: int, steps_per_fetch: int = 1,
                  seed: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """The same fetches drawn uniformly from in-memory arrays (no Reverb): the benchmark's
  baseline and small in-process training."""
  rng = np.random.default_rng(seed)
  n = len(next(iter(arrays.values())))
  while True:
    idx = rng.integers(0, n, batch_size * steps_per_fetch)
    yield {k: v[idx] for k, v in arrays.items()}


@dataclasses.dataclass
class ExampleDims:
  """The float fields of a relabeled dataset's examples and their widths."""
  dims: Dict[str, int]

  @classmethod
  def of(cls, relabeled_dir: str) -> "ExampleDims":
    from relay_data import relabeled  # pylint: disable=import-outside-toplevel
    return cls(relabeled.dims_of(relabeled_dir))

  @property
  def keys(self) -> List[str]:
    return sorted(self.dims)
