"""The one place finetuning touches the project's Reverb plumbing for relabeled examples
(`relay_agents.replay` as of today), so it can be re-pointed when that module changes.

- `start_server` / `connect`: a server addressed through loopback, and a client that checks the
  address answers (Reverb's own calls would block forever on a wrong one).
- the demo table: `demo_table`, `feed_demos` (a relabeled dataset), `insert_examples` (IRIL's
  relabeled on-policy examples, numpy arrays) and `demo_batches` ({"inputs": [B, d_in],
  "actions": [B, d_out]} for the DAPG term, read from the table by Reverb datasets).
"""
import dataclasses
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import reverb

LOOPBACK = "127.0.0.1"


def start_server(tables: Sequence[reverb.Table]) -> Tuple[reverb.Server, str]:
  """A Reverb server and the loopback address to reach it by. Reverb 0.14's C++ server binds
  [::]:port and has no bind-address option: firewall the port on an exposed machine."""
  server = reverb.Server(list(tables))
  return server, f"{LOOPBACK}:{server.port}"


def connect(address: str, timeout_s: int = 10) -> reverb.Client:
  client = reverb.Client(address)
  try:
    client.server_info(timeout=timeout_s)
  except Exception as e:  # pylint: disable=broad-except  (DeadlineExceeded, or unresolvable names)
    raise ConnectionError(f"no Reverb server answered at {address} within {timeout_s}s "
                          f"({type(e).__name__}); is the finetune run up, and the address right?") from None
  return client


def demo_table(name: str, dims: Dict[str, int], max_examples: int, per_item: int) -> reverb.Table:
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  return replay.make_table(name, dims, max_examples, per_item)


def feed_demos(address: str, table: str, data_dir: str, keys: Sequence[str], per_item: int, limit: int,
               progress: bool, seed: int) -> int:
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  from relay_data import relabeled  # pylint: disable=import-outside-toplevel
  return replay.feed(address, table, relabeled.load(data_dir), keys, per_item, limit=limit, progress=progress,
                     seed=seed)


def insert_examples(address: str, table: str, examples: Dict[str, np.ndarray], keys: Sequence[str],
                    per_item: int) -> int:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  ds = tf.data.Dataset.from_tensor_slices({k: examples[k] for k in keys})
  return replay.feed(address, table, ds, keys, per_item, progress=False)


def demo_batches(address: str, table: str, level_config, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of the level's (policy input, target) from `table`, prefetched on a thread."""
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(level_config, batch_size=batch_size, table_name=table)
  for batch in replay.numpy_iterator(replay.learner_dataset(address, table, config)):
    yield {"inputs": np.asarray(batch.observation), "actions": np.asarray(batch.action)}
