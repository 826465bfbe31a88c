"""Compound goals handed to an agent one element at a time (beyond the paper).

The paper conditions relay IL on the whole compound goal: a goal state with all four elements
done, from which the high level must pick, and keep to, the next element itself. On our play
data it does not (docs/results.md, "One element at a time"): the same RIL models given the goal
one element at a time, with the high level re-planning every step (`relay eval --replan 1`), do
1.39 instead of 0.82 elements of 4 (three seeds). This module is that option:

* `ElementOrder` says in which order to ask for a goal's elements, learned from the play data
  only: the most frequent order among the demos that did exactly those elements, else (an unseen
  combination, e.g. a held-out set) the elements ranked by how often each came before the others
  in the demos that did both (ties: kitchen order).
* `SequentialGoalActor` wraps any acting policy (flat or hierarchical). Given the compound goal,
  it gives the policy the *current* observed goal-space state with the elements done so far plus
  the next one set to their goal values, and moves on when the observation shows that element
  done (the env's completion test on observed states; done stays done, as the env counts it).
  Each new goal restarts the policy, so a hierarchical one re-plans at once.

Nothing privileged is used: the goal's elements are read off the goal state, and completion off
the policy's own observations.
"""
import collections
import dataclasses
import itertools
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from relay_data import kitchen, rlds_io


def goal_elements(goal_state: np.ndarray) -> List[str]:
  """The elements a goal state asks for: those at their goal values (kitchen order)."""
  mask = kitchen.completion_mask(np.asarray(goal_state, np.float32))
  return [e for e, done in zip(kitchen.ELEMENTS, mask) if done]


@dataclasses.dataclass(frozen=True)
class ElementOrder:
  """Which element to ask for first, learned from demo orders (picklable: plain dicts)."""
  exact: Dict[FrozenSet[str], Tuple[str, ...]]      # element set -> its most frequent demo order
  before: Dict[Tuple[str, str], int]                 # (a, b) -> demos that did a before b

  @classmethod
  def from_orders(cls, orders: Iterable[Sequence[str]]) -> "ElementOrder":
    """From the order in which each demo completed its elements."""
    counts: Dict[FrozenSet[str], collections.Counter] = collections.defaultdict(collections.Counter)
    before: collections.Counter = collections.Counter()
    for order in orders:
      order = tuple(order)
      if not order:
        continue
      counts[frozenset(order)][order] += 1
      before.update(itertools.combinations(order, 2))  # pairs in order: a came before b
    # Ties between equally frequent orders go to the first in kitchen order (deterministic).
    rank = lambda o: tuple(kitchen.ELEMENTS.index(e) for e in o)
    exact = {s: min(c, key=lambda o: (-c[o], rank(o))) for s, c in counts.items()}
    return cls(exact=exact, before=dict(before))

  def __call__(self, elements: Sequence[str]) -> List[str]:
    """`elements` in the order to ask for them."""
    elements = list(dict.fromkeys(elements))
    if frozenset(elements) in self.exact:
      return list(self.exact[frozenset(elements)])
    # Copeland ranking: how many of the others each element came before more often than after.
    def wins(a):
      return sum(self.before.get((a, b), 0) > self.before.get((b, a), 0) for b in elements if b != a)
    return sorted(elements, key=lambda e: (-wins(e), kitchen.ELEMENTS.index(e)))


def element_order(play_dir: str) -> ElementOrder:
  """The `ElementOrder` of a play dataset (each demo's `subtask_order`, or completion mask order)."""
  return ElementOrder.from_orders(kitchen.episode_elements(ep) for ep in rlds_io.iter_episodes(play_dir))


class SequentialGoalActor:
  """An Acme-style actor that asks `actor` for a compound goal's elements one at a time."""

  def __init__(self, actor, order: ElementOrder):
    self.actor, self.order = actor, order
    self.goal: Optional[np.ndarray] = None
    self.plan: List[str] = []
    self.done: List[str] = []
    self.subgoals: List[Tuple[str, ...]] = []  # the elements asked for at each switch (for tests, logs)

  def set_goal(self, goal: np.ndarray) -> None:
    self.goal = np.asarray(goal, np.float32)
    self.plan = self.order(goal_elements(self.goal))

  def _ask(self, observation) -> None:
    state = kitchen.goal_state_from_observation(observation)
    rest = [e for e in self.plan if e not in self.done]
    asked = self.done + rest[:1]
    self.subgoals.append(tuple(asked))
    self.actor.set_goal(kitchen.set_goal_state(state, asked))

  def _newly_done(self, observation) -> List[str]:
    mask = kitchen.completion_mask(kitchen.goal_state_from_observation(observation))
    return [e for e in self.plan if e not in self.done and mask[kitchen.ELEMENTS.index(e)]]

  def observe_first(self, timestep) -> None:
    if self.goal is None:
      raise ValueError("set_goal before the first observation")
    self.done, self.subgoals = self._newly_done(timestep.observation), []
    self._ask(timestep.observation)
    self.actor.observe_first(timestep)

  def select_action(self, observation):
    new = self._newly_done(observation)
    if new and len(self.done) < len(self.plan):
      self.done += new
      if len(self.done) < len(self.plan):
        import dm_env  # pylint: disable=import-outside-toplevel
        self._ask(observation)
        self.actor.observe_first(dm_env.restart(observation))  # a hierarchical policy re-plans now
    return self.actor.select_action(observation)

  def observe(self, action, next_timestep) -> None:
    self.actor.observe(action, next_timestep)

  def update(self, wait: bool = False) -> None:
    self.actor.update(wait)
