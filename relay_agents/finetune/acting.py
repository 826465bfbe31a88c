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
from typing import Dict, List, Optional, Sequence

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
    for policy in self._policies.values():
      policy.reset()  # a chunked policy's queue belongs to the episode that filled it
    if self._adder is not None:
      self._adder.add_first(timestep)

  def select_action(self, observation):
    params = self._params()
    obs, goal = self._observation(observation["observation"]), observation["goal"]
    if self._replan is None:
      self._subgoal = goal
    elif self._steps % self._replan == 0:
      high = self._policies["high"]
      high.params = params["high"]
      self._subgoal = high(obs, goal, self._key(), deterministic=False).astype(np.float32)
      self._policies["low"].reset()  # a chunked low level decides anew at every re-plan (semi_mdp)
    low = self._policies[self._names[0]]
    low.params = params[self._names[0]]
    action = low(obs, self._subgoal, self._key(), deterministic=False).astype(np.float32)
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
  names = variable_names(model)
  return FinetuneActor(model, variable_utils.VariableClient(FixedVariableSource(model), names), adder, seed=seed)


def extras_spec():
  from dm_env import specs  # pylint: disable=import-outside-toplevel
  from relay_data import kitchen  # pylint: disable=import-outside-toplevel
  return {"subgoal": specs.Array((kitchen.GOAL_DIM,), np.float32, "subgoal"),
          "valid": specs.Array((), np.float32, "valid")}


def run_episode(environment, actor: FinetuneActor, episode_index: int, seed: int, record: bool = False) -> Dict:
  """One episode (Acme's actor protocol, as `EnvironmentLoop.run_episode`) with both the env
  and the actor seeded by (seed, episode_index). Returns steps, task reward and elements done
  (and, with `record`, the [steps + 1, 59] observations and [steps, 9] sampled actions)."""
  environment.seed, environment.episode_index = seed, episode_index
  actor.start_episode(env_lib.episode_seed(seed + 1, episode_index))
  actor.update(wait=True)  # on-policy: act with the newest parameters
  timestep = environment.reset()
  actor.observe_first(timestep)
  steps, ret, observations, actions = 0, 0.0, [timestep.observation["observation"]], []
  while not timestep.last():
    action = actor.select_action(timestep.observation)
    timestep = environment.step(action)
    actor.observe(action, timestep)
    steps += 1
    ret += float(timestep.reward)
    if record:
      observations.append(timestep.observation["observation"])
      actions.append(action)
  out = {"steps": steps, "return": ret, "completed": list(environment.completed)}
  if record:
    out["observations"], out["actions"] = np.stack(observations), np.stack(actions)
  return out


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
