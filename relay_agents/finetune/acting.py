"""Actors of finetuning: the sampling relay hierarchy writing whole episodes to Reverb.

`FinetuneActor` is an Acme actor: the high level samples a subgoal every W_l steps (or every
`replan`), the low level samples an action toward it (both stochastic: on-policy data for the
policy gradient), and an Acme `EpisodeAdder` writes each whole episode (padded to the horizon) into the trajectory table,
with the commanded subgoal and a validity flag as extras. A flat (GCBC) model acts with the
compound goal as its only "subgoal". A policy predicting chunks of k actions executes m of each
and predicts again at every re-plan: the schedule `semi_mdp.decision_starts` the learner scores
its decisions by. The recorded action is the policy's raw sample (the
environment clips it), so the learner's log-likelihoods are those of what was sampled. The
policies see the environment's observation in the model's layout (`Model.observation`); the
trajectory keeps the environment's own, from which rewards and relabeling read goal states.

Parameters come through Acme's `VariableClient`, from the learner itself in-process, or from a
`ReverbVariableSource` in a separate process: the learner publishes its variables into a
one-item Reverb table and their version into another (`publish_variables`), so an actor needs
nothing but the server address, and re-reads the variables only when their version changed.
"""
import json
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import reverb

from relay_agents import acme_compat  # noqa: F401
from acme import core  # pylint: disable=g-bad-import-order
from acme.jax import variable_utils
import jax

from relay_agents.finetune import env as env_lib
from relay_agents.finetune import policy_io


def low_name(model: policy_io.Model) -> str:
  return "low" if model.hierarchical else "policy"


def variable_names(model: policy_io.Model) -> List[str]:
  return ["low", "high"] if model.hierarchical else ["policy"]


class FinetuneActor(core.Actor):
  """Samples the relay hierarchy (or a flat goal-conditioned policy); records with `adder`."""

  def __init__(self, model: policy_io.Model, variable_client: variable_utils.VariableClient,
               adder=None, seed: int = 0):
    self._names = variable_names(model)
    self._policies = {n: model.levels[n].policy() for n in self._names}
    self._replan = model.cadence if model.hierarchical else None
    self._observation = model.observation  # env observation -> the model's layout
    self._client, self._adder = variable_client, adder
    self._rng = np.random.default_rng(seed)
    self._steps, self._subgoal, self._extras = 0, None, None
    self._episode_params: Optional[Dict[str, object]] = None  # what the running episode acts with

  def start_episode(self, seed: int) -> None:
    """Makes this episode's samples a function of `seed` alone (resumable, actor-independent)."""
    self._rng = np.random.default_rng(seed)

  def _key(self) -> np.ndarray:
    return self._rng.integers(0, 2 ** 32, size=2, dtype=np.uint32)

  def _params(self) -> Dict[str, object]:
    params = self._client.params
    params = params if isinstance(params, list) else [params]
    return dict(zip(self._names, params))

  def observe_first(self, timestep) -> None:
    self._steps, self._subgoal = 0, None
    # The episode acts with the parameters it starts with, even when other lanes sharing this
    # actor's variable client fetch newer ones mid-episode (`run_episodes`).
    self._episode_params = self._params()
    for policy in self._policies.values():
      policy.reset()  # a chunked policy's queue belongs to the episode that filled it
    if self._adder is not None:
      self._adder.add_first(timestep)

  def select_action(self, observation):
    return select_actions([self], [observation])[0]

  # select_action in phases, so that `select_actions` can batch the network calls of many actors.
  def _acting_params(self) -> Dict[str, object]:
    return self._episode_params if self._episode_params is not None else self._params()

  def _high_request(self, observation):
    """(model-layout observation, goal, key) when the high level picks a subgoal this step, else
    None; a flat model's "subgoal" is the compound goal itself."""
    self._obs = self._observation(observation["observation"])
    if self._replan is None:
      self._subgoal = observation["goal"]
      return None
    if self._steps % self._replan:
      return None
    return self._obs, observation["goal"], self._key()

  def _set_subgoal(self, subgoal) -> None:
    self._subgoal = np.asarray(subgoal).astype(np.float32)
    self._policies["low"].reset()  # a chunked low level decides anew at every re-plan (semi_mdp)

  def _low_request(self):
    """(observation, subgoal, key) when the acting level needs its network this step, else None
    (a chunk's queued action). A key is drawn at every step either way, so an episode's samples
    do not depend on when its chunks are re-predicted."""
    key = self._key()
    policy = self._policies[self._names[0]]
    return (self._obs, self._subgoal, key) if policy.needs_prediction(self._subgoal) else None

  def _act(self, prediction, rows: Optional[int] = None) -> np.ndarray:
    action = self._policies[self._names[0]].take(prediction, self._subgoal, rows).astype(np.float32)
    self._extras = {"subgoal": np.asarray(self._subgoal, np.float32), "valid": np.float32(1.0)}
    return action

  def observe(self, action, next_timestep) -> None:
    if self._adder is not None:
      self._adder.add(action, next_timestep, extras=self._extras)
    self._steps += 1

  def update(self, wait: bool = False) -> None:
    self._client.update(wait)


class FixedVariableSource:
  """A variable source that always returns one model's parameters (no learner: pure rollouts),
  put on the device once (numpy leaves would be copied in by every policy call)."""

  def __init__(self, model: policy_io.Model):
    self._params = {n: jax.device_put(level.params) for n, level in model.levels.items()}

  def get_variables(self, names):
    return [self._params[n] for n in names]


def fixed_actor(model: policy_io.Model, seed: int = 0, adder=None) -> FinetuneActor:
  """An actor sampling `model` as it is (evaluation, distillation, benchmarks, `relay diagnose
  gradient`), recording with `adder` if one is given."""
  return fixed_actors(model, 1, seed, [adder])[0]


def fixed_actors(model: policy_io.Model, count: int, seed: int = 0, adders=None) -> List[FinetuneActor]:
  """`count` lanes for `run_episodes` sampling `model` as it is, sharing one variable client (so
  their policy calls batch together), lane i recording with `adders[i]` if given."""
  client = variable_utils.VariableClient(FixedVariableSource(model), variable_names(model))
  adders = adders or [None] * count
  return [FinetuneActor(model, client, adders[i], seed=seed) for i in range(count)]


def _dispatch_outputs(actors, level: str, requests,
                      size: int) -> Callable[[], Dict[int, Tuple[np.ndarray, Optional[int]]]]:
  """Dispatches the network calls for the lanes with a request and returns a function that waits
  for their outputs ({lane: (output, the chunk actions it holds, None: all)}): one call per group
  of lanes acting with the same parameters (all of them, unless an episode began before the newest
  fetch), padded to `size` rows so that a shrinking batch compiles no new shape. Batched calls
  compute only the actions a chunk executes (`GoalPolicyFn.batch_async(executed_only=True)`: the
  same values as the whole chunk's first ones, at a fraction of the head's cost, the part of an
  actor's step that is not the environment's). With `size` 1 (a lone actor) the policy is called
  unbatched, exactly as `GoalPolicy` calls it. Lanes are grouped by the identity of their
  parameters: lanes sharing a variable client hold the same objects until their source's
  parameters change (the learner's, `FixedVariableSource`'s and `ReverbVariableSource`'s do),
  while lanes with clients of their own are called one by one."""
  pending, groups = [], {}
  params = {lane: actors[lane]._acting_params()[level] for lane in requests}  # pylint: disable=protected-access
  for lane in requests:
    groups.setdefault(id(params[lane]), []).append(lane)
  for lanes in groups.values():
    fn = actors[lanes[0]]._policies[level].fn  # pylint: disable=protected-access
    if size == 1:
      obs, goal, key = requests[lanes[0]]
      single = fn(params[lanes[0]], obs, goal, key, deterministic=False)  # waited for: nothing to overlap
      pending.append((lanes, None, lambda single=single: single[None]))
      continue
    rows = [requests[lane] for lane in lanes]
    goals = None if rows[0][1] is None else np.stack([r[1] for r in rows])
    pending.append((lanes, fn.executed_rows(), fn.batch_async(
        params[lanes[0]], np.stack([r[0] for r in rows]), goals, np.stack([r[2] for r in rows]), deterministic=False,
        size=size, executed_only=True)))

  def outputs() -> Dict[int, Tuple[np.ndarray, Optional[int]]]:
    out = {}
    for lanes, held, wait in pending:
      out.update((lane, (output, held)) for lane, output in zip(lanes, wait()))
    return out
  return outputs


def request_actions(actors: Sequence[FinetuneActor], observations: Sequence,
                    size: Optional[int] = None) -> Callable[[], List[np.ndarray]]:
  """`select_actions` in two halves: this call draws the lanes' keys, runs the high level for the
  lanes that re-plan (waiting for it: the acting level needs its subgoal) and dispatches the acting
  level; the returned function waits for that and gives the actions. Between the two the caller
  is free to step other environments while the network runs on another core (`run_episodes`)."""
  size = size or len(actors)
  high = {}
  for lane, (actor, observation) in enumerate(zip(actors, observations)):
    request = actor._high_request(observation)  # pylint: disable=protected-access
    if request is not None:
      high[lane] = request
  for lane, (subgoal, _) in _dispatch_outputs(actors, "high", high, size)().items():
    actors[lane]._set_subgoal(subgoal)  # pylint: disable=protected-access
  low = {}
  for lane, actor in enumerate(actors):
    request = actor._low_request()  # pylint: disable=protected-access
    if request is not None:
      low[lane] = request
  predictions = _dispatch_outputs(actors, actors[0]._names[0], low, size)  # pylint: disable=protected-access

  def actions() -> List[np.ndarray]:
    ready = predictions()
    return [actor._act(*ready.get(lane, (None, None))) for lane, actor in enumerate(actors)]  # pylint: disable=protected-access
  return actions


def select_actions(actors: Sequence[FinetuneActor], observations: Sequence,
                   size: Optional[int] = None) -> List[np.ndarray]:
  """`select_action` of each actor (lane) for its observation, the network calls of all lanes made
  at once per level: the high level for the lanes that re-plan this step, then the acting level
  for the lanes that need a prediction. Each lane draws its keys from its own generator in the
  order a lone actor does, so its episode is the one it would act alone up to the float rounding
  of a batched matrix product. The actors must act one model (the same networks). `size`: the
  batch shape to pad to (default: the number of actors)."""
  return request_actions(actors, observations, size)()


def extras_spec():
  from dm_env import specs  # pylint: disable=import-outside-toplevel
  from relay_data import kitchen  # pylint: disable=import-outside-toplevel
  return {"subgoal": specs.Array((kitchen.GOAL_DIM,), np.float32, "subgoal"),
          "valid": specs.Array((), np.float32, "valid")}


# Lane groups whose network calls overlap the other groups' environment steps (`run_episodes`).
# Why 2: the network then runs on the core the environments leave free; with 16 lanes one actor
# process does 0.90-0.92x of raw env steps against 0.87-0.88x unpipelined (`python -m benchmarks
# finetune`, session 39). With no core to spare (as many actor processes as cores) the overlap has
# nothing to run on and halving the batch costs more calls: `pipeline_groups` then gives 1.
PIPELINE_GROUPS = 2


def pipeline_groups(processes: int = 1) -> int:
  """The lane groups each of `processes` actor processes on this machine should pipeline
  (`run_episodes`): `PIPELINE_GROUPS` when the machine has a core beyond those processes' own, else 1."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  return PIPELINE_GROUPS if cores > processes else 1


def run_episode(environment, actor: FinetuneActor, episode_index: int, seed: int, record: bool = False) -> Dict:
  """One episode (Acme's actor protocol, as `EnvironmentLoop.run_episode`) with both the env
  and the actor seeded by (seed, episode_index). Returns steps, task reward and elements done
  (and, with `record`, the [steps + 1, 59] observations and [steps, 9] sampled actions)."""
  return next(run_episodes([environment], [actor], [episode_index], seed, record))[1]


def run_episodes(environments: Sequence, actors: Sequence[FinetuneActor], episode_indices: Iterable[int], seed: int,
                 record: bool = False, groups: Optional[int] = None) -> Iterator[Tuple[int, Dict]]:
  """Acts the episodes `episode_indices` in lanes (lane i: `environments[i]` and `actors[i]`,
  stepped in lockstep, their network calls batched by `select_actions`), yielding (episode
  index, `run_episode`'s result) as each ends; a lane whose episode ended starts the next index.
  Each episode is seeded by (seed, its index) as `run_episode` seeds it, so which lane acts it
  does not change it (beyond a batched product's float rounding). Why lanes: a policy call costs
  about as much for 8 states as for 1, so one process stepping N environments pays the network
  once per N env steps (the actor fleet's throughput, `benchmarks/bench_finetune.py`).

  Each lane fetches the newest parameters when its episode starts (`update`), and the episode
  acts with them to its end; lanes sharing a variable client may act with two versions at once,
  and are then batched per version. `episode_indices` may be endless (an actor process).

  `groups` (None: `PIPELINE_GROUPS`, at most one per lane) splits the lanes into that many groups
  whose network calls overlap the other groups' environment steps: a group's actions are
  dispatched (`request_actions`), the next group's environments step while the network runs on
  JAX's threads, then the group waits for its actions. Each lane still acts on its own newest
  observation, so an episode does not depend on the grouping either."""
  if len(environments) != len(actors) or not actors:
    raise ValueError(f"need one environment per actor, got {len(environments)} and {len(actors)}")
  pending = iter(episode_indices)
  lanes = [None] * len(actors)  # per lane: the running episode's state, or None when idle

  def start(lane: int) -> None:
    index = next(pending, None)
    if index is None:
      lanes[lane] = None
      return
    environment, actor = environments[lane], actors[lane]
    environment.seed, environment.episode_index = seed, index
    actor.start_episode(env_lib.episode_seed(seed + 1, index))
    actor.update(wait=True)  # on-policy: act with the newest parameters
    timestep = environment.reset()
    actor.observe_first(timestep)
    lanes[lane] = {"index": index, "timestep": timestep, "steps": 0, "return": 0.0,
                   "observations": [timestep.observation["observation"]], "actions": []}

  count = min(PIPELINE_GROUPS if groups is None else groups, len(actors))
  if count < 1:
    raise ValueError(f"groups must be >= 1, got {groups}")
  members = [list(range(len(actors)))[g::count] for g in range(count)]
  size = len(members[0])

  def dispatch(group: List[int]):
    """(the group's active lanes, a function waiting for their actions)."""
    active = [lane for lane in group if lanes[lane] is not None]
    if not active:
      return active, list
    return active, request_actions([actors[lane] for lane in active],
                                   [lanes[lane]["timestep"].observation for lane in active], size=size)

  for lane in range(len(actors)):
    start(lane)
  dispatched = [dispatch(group) for group in members]
  while any(lanes):
    for g, group in enumerate(members):
      active, wait = dispatched[g]
      for lane, action in zip(active, wait()):
        state = lanes[lane]
        timestep = environments[lane].step(action)
        actors[lane].observe(action, timestep)
        state["timestep"], state["steps"], state["return"] = timestep, state["steps"] + 1, state["return"] + float(
            timestep.reward)
        if record:
          state["observations"].append(timestep.observation["observation"])
          state["actions"].append(action)
        if timestep.last():
          out = {"steps": state["steps"], "return": state["return"], "completed": list(environments[lane].completed)}
          if record:
            out["observations"], out["actions"] = np.stack(state["observations"]), np.stack(state["actions"])
          start(lane)
          yield state["index"], out
      dispatched[g] = dispatch(group)  # its network runs while the next group's environments step


# --- variables and the run's spec through Reverb (for actors in other processes) ----------------

def version_table(table: str) -> str:
  """The one-item table beside the variables `table` that holds only their version."""
  return f"{table}_version"


def publish_variables(client: reverb.Client, table: str, version: int, params: Sequence) -> None:
  """Writes the newest variables (a list of param trees) as the single item of `table`, then
  their version into `version_table(table)`: a reader that sees version v there finds variables
  at least as new as v in `table`."""
  leaves = jax.tree_util.tree_leaves(jax.device_get(list(params)))
  client.insert([np.int64(version)] + [np.asarray(x) for x in leaves], {table: 1.0})
  client.insert([np.int64(version)], {version_table(table): 1.0})


class ReverbVariableSource(core.VariableSource):
  """An Acme variable source reading what `publish_variables` wrote (blocks until it exists).

  Each call first reads the published version (one integer, ~0.4 ms across processes) and fetches
  the variables themselves (~7 MB for the shipped hierarchy: 10-60 ms, a quarter of an 80-step
  episode when fetched before every episode) only when that version is newer than the one held."""

  def __init__(self, address: str, table: str, template: Sequence):
    self._client, self._table = reverb.Client(address), table
    self._treedef = jax.tree_util.tree_structure(list(template))
    self._names: Optional[List[str]] = None
    self._params: Optional[List] = None
    self.version = -1

  def bind_names(self, names: Sequence[str]) -> None:
    self._names = list(names)

  def _sample(self, table: str) -> List[np.ndarray]:
    sample = next(self._client.sample(table, 1, emit_timesteps=False))
    return [np.asarray(x)[0] for x in sample.data]

  def get_variables(self, names: Sequence[str]) -> List:
    if self._params is None or int(self._sample(version_table(self._table))[0]) != self.version:
      data = self._sample(self._table)
      self.version = int(data[0])
      # On the device once per fetch: numpy leaves would be copied in by every policy call
      # (~1.8M floats each time), which made a separate actor process 20 % slower than an in-process one.
      self._params = jax.device_put(jax.tree_util.tree_unflatten(self._treedef, data[1:]))
    by_name = dict(zip(self._names or names, self._params))
    return [by_name[n] for n in names]


def publish_spec(client: reverb.Client, table: str, spec: Dict) -> None:
  client.insert([np.array(json.dumps(spec), dtype=object)], {table: 1.0})


def read_spec(address: str, table: str) -> Dict:
  sample = next(reverb.Client(address).sample(table, 1, emit_timesteps=False))
  value = np.asarray(sample.data[0])[0]
  return json.loads(value.decode() if isinstance(value, bytes) else value)
