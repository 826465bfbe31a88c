"""Policies and actors: a goal-conditioned policy, and the relay hierarchical actor built from two.

`GoalPolicyFn` is the jitted policy network (networks + config; params passed in), made once per
trained policy by the builder's `make_policy`; `GoalPolicy` binds it to parameters. Actors take
the environment's observation and map it to the layout the policy was trained on
(`observation_fn`, from the model's observation spec), so one actor serves every data layout.

The hierarchical actor re-plans every `window` (= W_l) steps: the high-level policy maps
(s_t, final goal g_h) to a subgoal g_l, then the low-level policy acts toward g_l. Both run in
deterministic (mean / likeliest mode) or sampled mode.
"""
import copy
import dataclasses
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from relay_agents import acme_compat  # noqa: F401
from acme import core  # pylint: disable=g-bad-import-order
from relay_agents.gcbc.config import GoalBCConfig
from relay_agents.gcbc.networks import GoalBCNetworks
from relay_agents.gcbc.networks import policy_inputs


class GoalPolicyFn:
  """(params, s, g, key) -> output, jitted once; numpy in, numpy out. `deterministic` is the
  default mode (evaluation: the mean / likeliest mode; otherwise a sample)."""

  def __init__(self, networks: GoalBCNetworks, config: GoalBCConfig, deterministic: bool = True):
    self.networks, self.config, self.deterministic = networks, config, deterministic
    self.ensemble: Optional[float] = None  # temporal-ensemble decay (`with_execute_steps`); None: off

    def make_act(nets: GoalBCNetworks):
      def act(params, observation, goal, key, deterministic):
        inputs = policy_inputs(observation, goal, config.use_goal, jax.numpy.concatenate)
        output = nets.policy.apply(params, inputs[None])
        sampled = nets.sample(output, key)[0]
        return jax.numpy.where(deterministic, nets.mean(output)[0], sampled)
      return act

    self._make_act = make_act
    self._compile(make_act(networks))

  def _compile(self, act) -> None:
    """Jits `act(params, observation, goal, key, deterministic)` for one state and, vmapped over
    (observation, goal, key), for a batch of states (`batch`). The executed-actions variants
    (`executed_only`) are jitted on first use, into the same table (shared by this policy's
    `with_execute_steps` copies)."""
    self._act = jax.jit(act)
    self._act_batch = jax.jit(jax.vmap(act, in_axes=(None, 0, 0, 0, None)))
    self._executed = {}  # m -> (single, batch, compact): the first m actions of each chunk alone
    self._compacted = []  # [(params, their compact form)], newest last: the last two parameter sets

  def executed_rows(self) -> int:
    """How many of a chunk's actions an output with `executed_only` holds: `execute_steps` when
    the network can compute those alone (`GoalBCNetworks.first_actions`; not while ensembling,
    which needs whole chunks), else the whole chunk."""
    return self._executed_count() or getattr(self.config, "action_chunk", 1)

  def _executed_count(self) -> Optional[int]:
    m, k = getattr(self.config, "execute_steps", 1), getattr(self.config, "action_chunk", 1)
    if self.ensemble is not None or m >= k or getattr(self.networks, "first_actions", None) is None \
        or not hasattr(self, "_make_act"):
      return None
    return m

  def _fns(self, params, executed_only: bool):
    """(single, batch) jitted functions and the params to call them with: the whole chunk, or
    with `executed_only` the first `execute_steps` actions alone when the network can compute them
    (`executed_rows`), from the head's columns for those actions cut once per parameter set
    (`GoalBCNetworks.compact_params`; the last two sets are kept, as lanes may act with two).
    Why cut once: in an actor the environment's steps evict the weights between calls, so a call
    costs what it reads; the cut head is 0.4 MB of the shipped low level's 3.7 MB."""
    m = self._executed_count() if executed_only else None
    if m is None:
      return self._act, self._act_batch, params
    if m not in self._executed:
      view = self.networks.first_actions(m)
      act = self._make_act(view)
      self._executed[m] = (jax.jit(act), jax.jit(jax.vmap(act, in_axes=(None, 0, 0, 0, None))),
                           jax.jit(view.compact_params))
    single, batch, compact = self._executed[m]
    for i, (held, cut) in enumerate(self._compacted):
      if held is params and cut[0] == m:
        self._compacted.append(self._compacted.pop(i))
        return single, batch, cut[1]
    cut = (m, compact(params))
    self._compacted = self._compacted[-1:] + [(params, cut)]
    return single, batch, cut[1]

  def with_execute_steps(self, execute_steps: Optional[int],
                         ensemble: Optional[float] = None) -> "GoalPolicyFn":
    """The same compiled policy serving `execute_steps` actions of each predicted chunk (None:
    as trained). How many of a chunk's k actions run open-loop is a choice at deployment (as in
    Diffusion Policy); the network, and what it was trained on, stay the same.

    `ensemble` = m turns on temporal ensembling (as in ACT, Zhao et al. 2023): the policy predicts
    a chunk at every step and acts with the weighted mean of what each of the last k chunks says
    about this step, weight exp(-m * age), age in steps since that chunk was predicted (m = 0: a
    plain mean; m > 0 trusts fresher chunks more). It re-predicts every step, so it implies
    `execute_steps` 1 and refuses any other count."""
    if ensemble is not None:
      if not np.isfinite(ensemble):
        raise ValueError(f"the temporal-ensemble decay must be a finite number, got {ensemble}")
      if self.config.action_chunk <= 1:
        raise ValueError("temporal ensembling needs a policy that predicts chunks of actions (this one "
                         "predicts 1)")
      if execute_steps not in (None, 1):
        raise ValueError(f"temporal ensembling predicts at every step: execute_steps must be 1, got "
                         f"{execute_steps}")
      execute_steps = 1
    if (execute_steps is None or execute_steps == self.config.execute_steps) and ensemble is None:
      return self
    if not 1 <= execute_steps <= self.config.action_chunk:
      raise ValueError(f"execute_steps must be in 1..{self.config.action_chunk} (the policy predicts chunks of "
                       f"{self.config.action_chunk} actions), got {execute_steps}")
    other = copy.copy(self)
    other.config = dataclasses.replace(self.config, execute_steps=execute_steps)
    other.ensemble = None if ensemble is None else float(ensemble)
    return other

  def __call__(self, params, observation, goal, key, deterministic: Optional[bool] = None,
               executed_only: bool = False) -> np.ndarray:
    """The output for one state: the whole predicted chunk, or with `executed_only` its first
    `executed_rows()` actions (the same values, computed alone: `GoalBCNetworks.first_actions`)."""
    goal = np.zeros(0, np.float32) if goal is None else goal
    mode = self.deterministic if deterministic is None else deterministic
    single, _, params = self._fns(params, executed_only)
    return np.asarray(single(params, np.asarray(observation, np.float32), np.asarray(goal, np.float32), key, mode))

  def batch(self, params, observations, goals, keys, deterministic: Optional[bool] = None,
            size: Optional[int] = None, executed_only: bool = False) -> np.ndarray:
    """The outputs for a batch of states: row i is what `__call__` gives for row i (one network
    call for all, so up to float rounding: a batched matrix product may round differently).
    `goals` None: goal-free rows. `size`: pad the batch to this many rows (repeating the last), so
    a caller whose batch shrinks compiles one shape; the padding's outputs are dropped."""
    return self.batch_async(params, observations, goals, keys, deterministic, size, executed_only)()

  def batch_async(self, params, observations, goals, keys, deterministic: Optional[bool] = None,
                  size: Optional[int] = None, executed_only: bool = False) -> Callable[[], np.ndarray]:
    """`batch` dispatched: returns at once, while the network runs on JAX's own threads; the
    returned function waits for the outputs. Why: a caller with other work (stepping other
    environments, `relay_agents.finetune.acting.run_episodes`) does it meanwhile on another core."""
    observations = np.asarray(observations, np.float32)
    n = len(observations)
    goals = np.zeros((n, 0), np.float32) if goals is None else np.asarray(goals, np.float32)
    keys = np.asarray(keys, np.uint32)
    if size is not None and size > n:
      pad = lambda x: np.concatenate([x, np.repeat(x[-1:], size - n, 0)])
      observations, goals, keys = pad(observations), pad(goals), pad(keys)
    mode = self.deterministic if deterministic is None else deterministic
    _, batch, params = self._fns(params, executed_only)
    out = batch(params, observations, goals, keys, mode)
    return lambda: np.asarray(out)[:n]


class PolicyEnsembleFn:
  """Independently trained policies of one level acting as one (`relay ensemble`): the output is
  the mean of the members' outputs, each computed as its own `GoalPolicyFn` would (params: one
  parameter set per member, in order). Not ACT's temporal ensembling (`GoalPolicyFn.ensemble`,
  over one policy's chunks of the last steps), which each member may still apply.

  Why: behaviour-cloned low levels of the same data and options, trained from different seeds,
  differ in how well they follow an imperfect subgoal far more than in how well they fit: the
  1,600-episode RIL low levels of seeds 0 and 2 have the same losses, yet with the same high level
  one does 2.46 elements and the other 1.21 (docs/results.md, session 40). Measured there: the
  mean of those three did 2.57 against 2.02; at the 400-episode table's setting, 2 or 3 members
  did no better (2.05, 1.92 against 2.10). Members must predict the same target and chunk
  (`check_members`)."""

  def __init__(self, members: Sequence[GoalPolicyFn]):
    if not members:
      raise ValueError("a policy ensemble needs at least one member")
    check_members([m.config for m in members])
    self.members = list(members)
    self.deterministic = members[0].deterministic
    self.ensemble = members[0].ensemble  # the members' temporal ensembling (GoalPolicy reads it)

  @property
  def config(self) -> GoalBCConfig:
    return self.members[0].config

  def with_execute_steps(self, execute_steps: Optional[int],
                         ensemble: Optional[float] = None) -> "PolicyEnsembleFn":
    """Every member serving `execute_steps` actions per chunk (`GoalPolicyFn.with_execute_steps`)."""
    return PolicyEnsembleFn([m.with_execute_steps(execute_steps, ensemble) for m in self.members])

  def executed_rows(self) -> int:
    """`GoalPolicyFn.executed_rows`, when every member computes the same rows; else the chunk."""
    rows = {m.executed_rows() for m in self.members}
    return rows.pop() if len(rows) == 1 else self.config.action_chunk

  def __call__(self, params, observation, goal, key, deterministic: Optional[bool] = None,
               executed_only: bool = False) -> np.ndarray:
    if len(params) != len(self.members):
      raise ValueError(f"a policy ensemble of {len(self.members)} members got {len(params)} parameter sets")
    executed_only = executed_only and len({m.executed_rows() for m in self.members}) == 1
    return np.mean([m(p, observation, goal, key, deterministic, executed_only)
                    for m, p in zip(self.members, params)], axis=0)


def check_members(configs: Sequence[GoalBCConfig]) -> None:
  """Refuses (ValueError) policies that cannot act as one ensemble: they must predict the same
  field (action or subgoal), take the goal alike and serve the same chunk the same way. Widths,
  heads and the other options may differ."""
  keys = ("target_field", "use_goal", "action_chunk", "execute_steps")
  first = {k: getattr(configs[0], k) for k in keys}
  for i, config in enumerate(configs[1:], 1):
    other = {k: getattr(config, k) for k in keys}
    if other != first:
      diff = ", ".join(f"{k} {first[k]!r} vs {other[k]!r}" for k in keys if first[k] != other[k])
      raise ValueError(f"member {i} cannot act with member 0 ({diff})")


class GoalPolicy:
  """A trained goal-conditioned policy: a `GoalPolicyFn` bound to its parameters.

  A policy that predicts chunks of k actions (`config.action_chunk`) returns them one per call:
  it predicts, then serves the first `config.execute_steps` actions of the chunk from a queue,
  and predicts again when the queue is empty, when the goal changes (a new subgoal must act at
  once) or after `reset()` (a new episode). With temporal ensembling (`fn.ensemble`) it predicts
  at every step and averages what the chunks of the last k steps say about this step; a goal
  change or `reset()` forgets them. One instance per actor: the queue is its state.
  """

  def __init__(self, fn: GoalPolicyFn, params):
    self.fn, self.params = fn, params
    self._queue, self._goal = [], None
    self._chunks = []  # temporal ensembling: (chunk [k, A], age in steps), newest last

  @property
  def config(self) -> GoalBCConfig:
    return self.fn.config

  def reset(self) -> None:
    """Drops the queued actions of a chunk (call at an episode's start)."""
    self._queue, self._goal, self._chunks = [], None, []

  def __call__(self, observation, goal, key, deterministic: Optional[bool] = None) -> np.ndarray:
    prediction = self.fn(self.params, observation, goal, key, deterministic) if self.needs_prediction(goal) else None
    return self.take(prediction, goal)

  def _same_goal(self, goal) -> bool:
    return (goal is None and self._goal is None) or (
        goal is not None and self._goal is not None and np.array_equal(np.asarray(goal, np.float32), self._goal))

  def needs_prediction(self, goal) -> bool:
    """Whether the next action toward `goal` needs the network's output for this step: always for
    a one-action or ensembling policy; for a chunked one, when its queue is empty or the goal
    changed. `__call__` is `take(fn(...) if needs_prediction(goal) else None, goal)`; batched
    actors (`relay_agents.finetune.acting.select_actions`) call the network for every lane that
    needs it at once, then `take`."""
    if getattr(self.config, "action_chunk", 1) <= 1 or getattr(self.fn, "ensemble", None) is not None:
      return True
    return not self._queue or not self._same_goal(goal)

  def take(self, prediction: Optional[np.ndarray], goal, rows: Optional[int] = None) -> np.ndarray:
    """The next action toward `goal`, given the network's output for this step when
    `needs_prediction(goal)` said so (None otherwise: the action comes from the queued chunk).
    `rows`: how many of the chunk's actions the output holds (None: the whole chunk; the policy's
    `executed_rows()` for an output computed with `executed_only`)."""
    chunk = getattr(self.config, "action_chunk", 1)
    if chunk <= 1:
      return prediction
    goal_now = None if goal is None else np.asarray(goal, np.float32)
    if getattr(self.fn, "ensemble", None) is not None:
      return self._ensembled(prediction, chunk, goal_now, self._same_goal(goal))
    if prediction is not None:
      self._queue = list(prediction.reshape(rows or chunk, -1)[:self.config.execute_steps])
      self._goal = goal_now
    return self._queue.pop(0)

  def _ensembled(self, prediction, chunk, goal_now, same_goal) -> np.ndarray:
    out = prediction.reshape(chunk, -1)
    kept = [(c, age + 1) for c, age in self._chunks if age + 1 < chunk] if same_goal else []
    self._chunks, self._goal = kept + [(out, 0)], goal_now
    ages = np.array([age for _, age in self._chunks], np.float64)
    weights = ensemble_weights(ages, self.fn.ensemble)
    actions = np.stack([c[age] for c, age in self._chunks]).astype(np.float64)
    return (weights @ actions).astype(out.dtype)


def ensemble_weights(ages: np.ndarray, decay: float) -> np.ndarray:
  """Temporal-ensemble weights exp(-decay * age), normalized to sum to 1 (pure; ages >= 0).
  Shifted by the youngest age so a large decay cannot underflow every weight to zero."""
  ages = np.asarray(ages, np.float64)
  logits = -decay * (ages - ages.min())
  w = np.exp(logits - logits.max())
  return w / w.sum()


class _GoalActor(core.Actor):
  """Shared bookkeeping: the episode goal, an RNG key, and no learning (pure evaluation)."""

  def __init__(self, seed: int, deterministic: bool,
               observation_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    # Keys are drawn with numpy (a raw uint32[2] key per step): an eager jax.random.split per
    # env step costs about as much as the policy's own forward pass.
    self._rng = np.random.default_rng(seed)
    self.deterministic = deterministic
    self.observation_fn = observation_fn  # env observation -> the policy's layout (None: as is)
    self.goal: Optional[np.ndarray] = None

  def _observation(self, observation) -> np.ndarray:
    return observation if self.observation_fn is None else self.observation_fn(observation)

  def set_goal(self, goal: np.ndarray) -> None:
    self.goal = np.asarray(goal, np.float32)

  def _next_key(self) -> np.ndarray:
    return self._rng.integers(0, 2 ** 32, size=2, dtype=np.uint32)

  def observe_first(self, timestep) -> None:
    del timestep

  def observe(self, action, next_timestep) -> None:
    del action, next_timestep

  def update(self, wait: bool = False) -> None:
    del wait


class FlatActor(_GoalActor):
  """One goal-conditioned (or goal-free) policy acting directly: GCBC and BC baselines.

  With a `variable_source`, `update()` re-reads the policy's parameters from it (a learner)."""

  def __init__(self, policy: GoalPolicy, action_low=-1.0, action_high=1.0, seed: int = 0,
               deterministic: bool = True, observation_fn=None,
               variable_source: Optional[core.VariableSource] = None):
    super().__init__(seed, deterministic, observation_fn)
    self.policy, self.low, self.high = policy, action_low, action_high
    self._variable_source = variable_source

  def observe_first(self, timestep) -> None:
    del timestep
    self.policy.reset()

  def select_action(self, observation):
    action = self.policy(self._observation(observation), self.goal, self._next_key(), self.deterministic)
    return np.clip(action, self.low, self.high).astype(np.float32)

  def update(self, wait: bool = False) -> None:
    del wait
    if self._variable_source is not None:
      self.policy = GoalPolicy(self.policy.fn, self._variable_source.get_variables(["policy"])[0])


class HierarchicalActor(_GoalActor):
  """Relay policy: π_h picks a subgoal every `window` (W_l) steps, π_l acts toward it.

  `deterministic` is the low level's mode; `high_deterministic` the high level's (None: the
  same). Why apart: the paper's high level samples its subgoal while a low level acting on
  its likeliest mode is the measured best, so the two modes can be chosen per level."""

  def __init__(self, high: GoalPolicy, low: GoalPolicy, window: int, action_low=-1.0,
               action_high=1.0, seed: int = 0, deterministic: bool = True, observation_fn=None,
               high_deterministic: Optional[bool] = None):
    super().__init__(seed, deterministic, observation_fn)
    self.high_deterministic = deterministic if high_deterministic is None else high_deterministic
    if window <= 0:
      raise ValueError(f"window (W_l) must be positive, got {window}")
    self.high, self.low_policy, self.window = high, low, window
    self.action_low, self.action_high = action_low, action_high
    self.subgoal: Optional[np.ndarray] = None
    self.steps = 0
    self.replans = []  # step indices at which a new subgoal was chosen (for tests and videos)

  def observe_first(self, timestep) -> None:
    del timestep
    self.steps = 0
    self.subgoal = None
    self.replans = []
    self.low_policy.reset()

  def select_action(self, observation):
    observation = self._observation(observation)
    if self.steps % self.window == 0:
      self.subgoal = self.high(observation, self.goal, self._next_key(), self.high_deterministic)
      self.replans.append(self.steps)
    action = self.low_policy(observation, self.subgoal, self._next_key(), self.deterministic)
    return np.clip(action, self.action_low, self.action_high).astype(np.float32)

  def observe(self, action, next_timestep) -> None:
    del action, next_timestep
    self.steps += 1
