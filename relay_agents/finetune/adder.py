"""The actors' adder: whole episodes into the trajectory table, written once per episode.

`EpisodeWriter` is an Acme adder (`add_first` / `add` / `reset`) that writes exactly the item
Acme's `EpisodeAdder(padding_fn=np.zeros)` writes (an `acme.adders.reverb.base.Trajectory` of
[max_sequence_length, ...] columns: the episode's observations, the action / reward / discount /
extras that followed each (zeros after the last observation), `start_of_episode`, zero-padded to
the horizon), so the table's signature and the learner stay Acme's.

Why not `EpisodeAdder` itself: it appends two rows to a Reverb `TrajectoryWriter` at every env
step, and that Python-side bookkeeping (nest flattening, partial steps, per-step spec checks)
cost ~0.15 ms per step, 6-7 % of a kitchen env step, in a `relay actor` process (profile, session
22). This writer keeps the step's arrays in lists and hands Reverb one row of whole-episode
columns at the episode's end (`history[col][-1]`: a squeezed single-row column, so the item's
columns are [max_sequence_length, ...] as the signature says).
"""
from typing import Dict, List, Optional

import dm_env
import numpy as np
import reverb
import tree

from relay_agents import acme_compat  # noqa: F401
from acme.adders import base as adders_base  # pylint: disable=g-bad-import-order
from acme.adders.reverb import base as reverb_base


class EpisodeWriter(adders_base.Adder):
  """Writes each whole episode, padded with zeros to `max_sequence_length` observations, as one
  item of priority `priority` in `table`.

  It holds the arrays it is given until the episode ends, without copying them (copies cost ~2 %
  of an actor's step): callers must not modify an action, observation or extras array in place
  after passing it. `GoalKitchenEnv` and `FinetuneActor` make new arrays at every step."""

  def __init__(self, client: reverb.Client, table: str, max_sequence_length: int, priority: float = 1.0,
               flush_timeout_ms: Optional[int] = None):
    self._client, self._table, self._length = client, table, max_sequence_length
    self._priority, self._timeout_ms = priority, flush_timeout_ms
    self._writer: Optional[reverb.TrajectoryWriter] = None
    self._observations: List = []
    self._steps: List[Dict] = []

  def add_first(self, timestep: dm_env.TimeStep) -> None:
    if not timestep.first():
      raise ValueError("add_first needs an episode's first timestep")
    self._observations, self._steps = [timestep.observation], []

  def add(self, action, next_timestep: dm_env.TimeStep, extras=()) -> None:
    if not self._observations:
      raise ValueError("add_first must be called before add")
    if len(self._observations) >= self._length:
      raise ValueError(f"the episode has more than {self._length} observations (max_sequence_length)")
    self._steps.append({"action": action, "reward": next_timestep.reward, "discount": next_timestep.discount,
                        "extras": extras})
    self._observations.append(next_timestep.observation)
    if next_timestep.last():
      self._write()
      self.reset()

  def reset(self, timeout_ms: Optional[int] = None) -> None:
    del timeout_ms
    self._observations, self._steps = [], []

  def _columns(self) -> reverb_base.Trajectory:
    """The episode as [max_sequence_length, ...] columns, laid out as `EpisodeAdder` lays them."""
    def padded(rows):
      rows = [np.asarray(r) for r in rows]
      out = np.zeros((self._length,) + rows[0].shape, rows[0].dtype)
      out[:len(rows)] = rows
      return out

    stacked = lambda rows: tree.map_structure(lambda *xs: padded(xs), *rows)
    start = np.zeros(self._length, bool)
    start[0] = True
    steps = stacked(self._steps)  # one row fewer than observations: the last observation's stays zero
    return reverb_base.Trajectory(observation=stacked(self._observations), action=steps["action"],
                                  reward=steps["reward"], discount=steps["discount"],
                                  start_of_episode=start, extras=steps["extras"])

  def _write(self) -> None:
    if self._writer is None:
      self._writer = self._client.trajectory_writer(num_keep_alive_refs=1)
    self._writer.append(self._columns())
    item = tree.map_structure(lambda column: column[-1], self._writer.history)
    self._writer.create_item(self._table, self._priority, item)
    self._writer.end_episode(clear_buffers=True, timeout_ms=self._timeout_ms)

  def __del__(self):
    if self._writer is not None:
      try:
        self._writer.close()
      except Exception:  # pylint: disable=broad-except  (server gone or interpreter exiting: nothing to keep)
        pass
