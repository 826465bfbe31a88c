"""The one place finetuning touches the project's Reverb plumbing for relabeled examples
(`relay_agents.replay`, agent-neutral), so it is re-pointed in one place when that module changes.

- `start_server` / `connect`: a server addressed through loopback, and a client that checks the
  address answers (Reverb's own calls would block forever on a wrong one).
- the demo table: `demo_table`, `feed_demos` (a relabeled dataset), `insert_examples` (IRIL's
  relabeled on-policy examples, numpy arrays) and `demo_batches` ({"inputs": [B, d_in],
  "actions": [B, d_out]} for the DAPG term, read from the table by Reverb datasets).
"""
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import reverb


def start_server(tables: Sequence[reverb.Table]) -> Tuple[reverb.Server, str]:
  """A Reverb server and the loopback address to reach it by (`relay_agents.replay.start_server`)."""
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  return replay.start_server(tables)


def connect(address: str, timeout_s: int = 10) -> reverb.Client:
  """A client that checked the address answers (`relay_agents.replay.connect`)."""
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  return replay.connect(address, timeout_s)


def demo_table(name: str, dims: Dict[str, int], max_examples: int, per_item: int) -> reverb.Table:
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  return replay.make_table(name, dims, max_examples, per_item)


def feed_demos(address: str, table: str, data_dir: str, keys: Sequence[str], per_item: int, limit: int,
               progress: bool, seed: int) -> int:
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  return replay.feed(address, table, data_dir, keys, per_item, limit=limit, progress=progress, seed=seed)


def insert_examples(address: str, table: str, examples: Dict[str, np.ndarray], keys: Sequence[str],
                    per_item: int) -> int:
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  return replay.feed(address, table, [{k: np.asarray(examples[k]) for k in keys}], keys, per_item, progress=False)


def demo_batches(address: str, table: str, level_config, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of the level's (policy input, target) from `table`, prefetched on a thread."""
  from relay_agents import replay  # pylint: disable=import-outside-toplevel
  from relay_agents.gcbc import data as gcbc_data  # pylint: disable=import-outside-toplevel
  signature = connect(address).server_info()[table].signature
  per_item = int(next(iter(signature.values())).shape[0])  # items are [per_item, d] per field
  batches = replay.example_batches(address, table, batch_size, per_item)
  for batch in replay.numpy_iterator(batches):
    transition = gcbc_data.to_transition(batch, level_config)
    yield {"inputs": np.asarray(transition.observation), "actions": np.asarray(transition.action)}
