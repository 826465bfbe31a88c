"""Trained-model artifacts: what a model records, how it is saved, loaded and fingerprinted, and its actor.

A model directory (written by `relay_agents.train`):
  agent.json                `ModelRecord`: the agent, W_l (`window`) and W_h, the observation spec
                            and goal space, the environment settings, each source dataset (path and
                            fingerprint, and the episode dataset it was relabeled from), the policy
                            and training configs, the code version and the training summary. Written
                            last: a directory without it is not a (finished) model.
  <level>/policy.pkl        (`save_policy`) parameters, normalization, policy config, example dims,
                            steps and the key of the data + config it was trained from
  <level>/checkpoint.pkl    learner state, to resume (see `relay_agents.train`)
  <level>.<i>/policy.pkl    a policy ensemble's (`relay_agents.ensemble`) further members of a level,
                            listed in the record's `members`; the level acts with their mean

Evaluation and finetuning read the record and refuse, with one line, an environment or dataset
whose goal space, environment or environment settings differ (`check_fits`). The
actor is made through the agent's builder (`relay_agents.gcbc.builder`), with the saved
parameters as its variable source; it takes the environment's observation and maps it to the
layout the model was trained on.
"""
import dataclasses
import functools
import hashlib
import json
import math
import os
import pickle
from typing import Dict, List, Optional, Sequence

from relay_data import atomic, goal_space
from relay_data.errors import DataError

FORMAT = 2
RECORD = "agent.json"
POLICY = "policy.pkl"
RESIDUAL = "residual.pkl"  # a level's finetuned residual (relay_agents.gcbc.residual.FILE), if it has one


@dataclasses.dataclass
class ModelRecord:
  """Everything a model was trained from and how (agent.json)."""
  agent: str
  levels: Dict[str, Dict]              # level -> training summary (steps, losses, examples fed)
  window: Optional[int]                # W_l: relabeling window and the hierarchy's re-plan interval
  window_high: Optional[int]           # W_h (ril)
  spec: Dict                           # goal_space.DataSpec.to_dict()
  env_settings: Optional[Dict]         # kitchen.EnvSettings.to_dict(); None outside the kitchen
  sources: Dict[str, Dict]             # level -> relabeled dataset {path, fingerprint, relabel config, source}
  policy_configs: Dict[str, Dict]      # level -> GoalBCConfig fields
  train_config: Dict                   # seed, steps, ...
  code_version: str
  format: int = FORMAT
  finetuned: Optional[Dict] = None     # RL finetuning: {from: {path, fingerprint}, goal, variant, env_steps, ...}
  members: Optional[Dict[str, List[str]]] = None  # level -> its member dirs (a policy ensemble, `relay ensemble`)

  @property
  def data_spec(self) -> goal_space.DataSpec:
    return goal_space.DataSpec.from_dict(self.spec)

  def to_dict(self) -> Dict:
    return dataclasses.asdict(self)


def _record_error(model_dir: str, message: str) -> DataError:
  return DataError(f"{message} (not a trained relay model; train one with `relay train-il`)",
                   path=os.path.join(model_dir, RECORD))


def read_record(model_dir: str) -> ModelRecord:
  """The model's record; a one-line DataError naming agent.json when it is missing or malformed.

  Records written before FORMAT 2 ({agent, replan_every, levels}) are read with their spec
  inferred from the saved policies' widths and gymnasium's default environment settings.
  """
  path = os.path.join(model_dir, RECORD)
  if not os.path.isfile(path):
    raise _record_error(model_dir, "missing")
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, ValueError) as e:
    raise _record_error(model_dir, f"cannot be read as JSON: {e}") from e
  if not isinstance(d, dict) or not isinstance(d.get("agent"), str) or not isinstance(d.get("levels"), dict) \
      or not d["levels"]:
    raise _record_error(model_dir, "has no 'agent' and 'levels'")
  if d.get("format") != FORMAT:
    return _legacy_record(model_dir, d)
  try:
    record = ModelRecord(**d)
    record.data_spec  # pylint: disable=pointless-statement  (validates the spec)
  except (TypeError, ValueError) as e:
    raise _record_error(model_dir, f"malformed record: {e}") from e
  return record


def _legacy_record(model_dir: str, d: Dict) -> ModelRecord:
  from relay_data import kitchen  # pylint: disable=import-outside-toplevel
  level = sorted(d["levels"])[0]
  dims = load_policy(os.path.join(model_dir, level))["dims"]
  spec = goal_space.infer_legacy(dims["observation"], dims.get("goal", dims.get("subgoal", kitchen.GOAL_DIM)))
  return ModelRecord(agent=d["agent"], levels=d["levels"], window=d.get("replan_every"), window_high=None,
                     spec=spec.to_dict(), env_settings=goal_space.env_settings_of_metadata({}, spec),
                     sources={}, policy_configs={}, train_config={}, code_version="unknown (format 1)", format=1)


def _strict(value):
  """Non-finite floats (e.g. a diverged loss) as null: the record is strict JSON."""
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_record(model_dir: str, record: ModelRecord) -> str:
  """Writes agent.json atomically (strict JSON)."""
  return atomic.write_json(os.path.join(model_dir, RECORD), _strict(record.to_dict()), allow_nan=False)


def save_pickle(path: str, value) -> None:
  """Pickles `value` to `path` via a temp file: a crash never leaves a torn file under `path`."""
  with atomic.atomic_file(path) as tmp, open(tmp, "wb") as f:
    pickle.dump(value, f)


def load_pickle(path: str, what: str):
  """Unpickles `path`; a missing, truncated or corrupt file is a one-line DataError naming it."""
  if not os.path.isfile(path):
    raise DataError(f"missing ({what})", path=path)
  try:
    with open(path, "rb") as f:
      return pickle.load(f)
  except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, ValueError) as e:
    raise DataError(f"cannot be read ({what}; truncated or corrupt?): {e}", path=path) from e


def save_policy(level_dir: str, params, normalization, config, dims: Dict[str, int], input_dim: int,
                train_key: str, steps: int) -> str:
  path = os.path.join(level_dir, POLICY)
  save_pickle(path, {"format": FORMAT, "params": params, "normalization": normalization, "config": config,
                     "dims": dims, "input_dim": input_dim, "train_key": train_key, "steps": steps})
  return path


def load_policy(level_dir: str) -> Dict:
  """The saved policy of one level (dict: params, normalization, config, dims, input_dim, ...)."""
  saved = load_pickle(os.path.join(level_dir, POLICY), "trained policy")
  missing = [k for k in ("params", "normalization", "config", "dims", "input_dim") if k not in saved] \
      if isinstance(saved, dict) else ["params"]
  if missing:
    raise DataError(f"not a saved relay policy (no {', '.join(missing)})", path=os.path.join(level_dir, POLICY))
  return saved


# (std scale, component temperature) of a sampled policy (`gcbc.networks.with_exploration`):
# (1, 1) samples the behaviour-cloned distribution itself.
PLAIN = (1.0, 1.0)


def load_networks(level_dir: str, exploration=PLAIN):
  """(GoalBCNetworks, params, GoalBCConfig, example dims) of one level's saved policy: what a
  learner needs to continue from it (e.g. finetuning) and what `make_policy` needs to act.
  `exploration`: (std scale, temperature) its samples are drawn with."""
  from relay_agents.gcbc import networks as gcbc_networks  # pylint: disable=import-outside-toplevel
  saved = load_policy(level_dir)
  config = saved["config"]
  networks = gcbc_networks.make_networks(saved["input_dim"], saved["dims"][config.target_field], config,
                                         saved["normalization"], observation_dim=saved["dims"]["observation"])
  return gcbc_networks.with_exploration(networks, *exploration), saved["params"], config, saved["dims"]


@functools.lru_cache(maxsize=32)
def _policy_fn(path: str, version, deterministic: bool, exploration):  # pylint: disable=unused-argument
  """(jitted GoalPolicyFn, params) of a policy file version: built and compiled once per process,
  so an evaluation that makes an actor per rollout does not re-compile. The params are put on the
  device once: numpy leaves would be copied in by every policy call (4 MB for the shipped low
  level). A level with a residual (a finetuned one, `gcbc.residual`) is composed with it."""
  import jax  # pylint: disable=import-outside-toplevel
  from relay_agents.gcbc import builder as gcbc_builder, residual  # pylint: disable=import-outside-toplevel
  level_dir = os.path.dirname(path)
  networks, params, config, dims = load_networks(level_dir, exploration)
  fn = gcbc_builder.GoalBCBuilder(config, dims).make_policy(networks, evaluation=deterministic)
  extra = residual.load(level_dir)
  if extra is not None:
    fn, params = residual.compose(fn, load_policy(level_dir), params, extra)
  return fn, jax.device_put(params)


def _version(path: str):
  stat = os.stat(path)
  return stat.st_mtime_ns, stat.st_size


def policy_fn(level_dir: str, deterministic: bool = True, exploration=PLAIN):
  from relay_agents.gcbc import residual  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.path.join(level_dir, POLICY))
  if not os.path.isfile(path):
    raise DataError("missing (trained policy)", path=path)
  extra = os.path.join(os.path.dirname(path), residual.FILE)
  version = (_version(path), _version(extra) if os.path.exists(extra) else None)
  return _policy_fn(path, version, deterministic, tuple(map(float, exploration)))


def level_dirs(model_dir: str, record: ModelRecord, level: str) -> List[str]:
  """The policy dirs a model's `level` acts with: its own, or its ensemble members' (in order)."""
  names = (record.members or {}).get(level) or [level]
  for name in names:
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
      raise _record_error(model_dir, f"malformed record: member {name!r} of level {level!r} is not a directory name")
  return [os.path.join(model_dir, name) for name in names]


def level_policy_fn(model_dir: str, record: ModelRecord, level: str, deterministic: bool = True,
                    exploration=PLAIN):
  """(policy fn, params) of one level: `policy_fn` of its dir, or for an ensemble level a
  `PolicyEnsembleFn` of its members' with their parameter sets as a tuple."""
  dirs = level_dirs(model_dir, record, level)
  if len(dirs) == 1:
    return policy_fn(dirs[0], deterministic, exploration)
  from relay_agents.gcbc import acting  # pylint: disable=import-outside-toplevel
  pairs = [policy_fn(d, deterministic, exploration) for d in dirs]
  try:
    return acting.PolicyEnsembleFn([fn for fn, _ in pairs]), tuple(params for _, params in pairs)
  except ValueError as e:
    raise _record_error(model_dir, f"level {level!r}: {e}") from e


def load_level_policy(model_dir: str, level: str, deterministic: bool = True, execute_steps: Optional[int] = None,
                      ensemble: Optional[float] = None):
  """`load_goal_policy` for a model's `level`, an ensemble level included (its members' mean)."""
  from relay_agents.gcbc import acting  # pylint: disable=import-outside-toplevel
  fn, params = level_policy_fn(model_dir, read_record(model_dir), level, deterministic)
  return acting.GoalPolicy(_executing(fn, execute_steps, os.path.join(model_dir, level), ensemble), params)


def load_goal_policy(level_dir: str, deterministic: bool = True, execute_steps: Optional[int] = None,
                     ensemble: Optional[float] = None):
  """One level's trained policy, bound to its parameters (`acting.GoalPolicy`); `execute_steps`:
  actions run per predicted chunk (None: as trained), `ensemble`: temporal-ensemble decay (None:
  off); both as `GoalPolicyFn.with_execute_steps`."""
  from relay_agents.gcbc import acting  # pylint: disable=import-outside-toplevel
  fn, params = policy_fn(level_dir, deterministic)
  return acting.GoalPolicy(_executing(fn, execute_steps, level_dir, ensemble), params)


def _executing(fn, execute_steps: Optional[int], level_dir: str, ensemble: Optional[float] = None):
  """`fn` serving `execute_steps` actions per chunk, or temporally ensembled; a level predicting
  one action (the RIL high level, a plain policy) is left as it is. A count outside 1..k is a
  one-line error naming the policy."""
  if (execute_steps is None and ensemble is None) or fn.config.action_chunk <= 1:
    return fn
  try:
    return fn.with_execute_steps(execute_steps, ensemble)
  except ValueError as e:
    what = f"{execute_steps} actions per chunk" if ensemble is None else "a temporal ensemble"
    raise DataError(f"cannot execute {what}: {e}", path=os.path.join(level_dir, POLICY)) from e


def fingerprint(model_dir: str) -> str:
  """Content hash of a trained model (agent.json and every policy.pkl): names it in eval logs."""
  read_record(model_dir)
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(model_dir)):
    for name in sorted(files):
      if name in (RECORD, POLICY, RESIDUAL):
        with open(os.path.join(root, name), "rb") as f:
          h.update(os.path.relpath(os.path.join(root, name), model_dir).encode() + f.read())
  return h.hexdigest()[:16]


class SavedVariables:
  """A `core.VariableSource` serving a saved policy's parameters (as a learner serves live ones)."""

  def __init__(self, params):
    self._variables = {"policy": params}

  def get_variables(self, names: List[str]):
    return [self._variables[n] for n in names]


def observation_fn(record: ModelRecord):
  """Env observation -> the model's layout (None when the model takes the env's own observation)."""
  spec = record.data_spec.observation
  return None if spec.layout == "franka-kitchen-v1" else spec.from_env


def make_actor(model_dir: str, seed: int = 0, deterministic: bool = True, replan: Optional[int] = None,
               sequential=None, exploration=PLAIN, execute_steps: Optional[int] = None,
               ensemble: Optional[float] = None, sampled_levels: Optional[Sequence[str]] = None):
  """The acting policy of a model, made by its builder: hierarchical for ril, flat otherwise.

  It takes the environment's observation (mapped to the model's layout inside the actor).
  `replan`: a ril model's high level picks a new subgoal every `replan` steps instead of every W_l
  (the paper's, and the default); the low level still acts toward one subgoal at a time. Beyond
  the paper: re-planning more often keeps the subgoal W_l steps ahead of where the low level is.
  `sequential`: a `sequencing.ElementOrder`; the policy is then given a compound goal one element
  at a time, in that order (`sequencing.SequentialGoalActor`; beyond the paper).
  `exploration`: (std scale, temperature) a sampling actor (not `deterministic`) draws with, as
  finetuning's `--explore-std`/`--explore-temperature` do.
  `execute_steps`: actions executed per predicted chunk by the levels that predict chunks (None:
  as trained). 1 re-predicts at every step (closed loop); the subgoal cadence is `replan`'s.
  `ensemble`: those levels predict at every step and act with a temporal ensemble of their last k
  chunks, weight exp(-ensemble * age) (`GoalPolicyFn.with_execute_steps`; None: off).
  `sampled_levels`: with `deterministic` False, the levels that sample (None: every level); the
  others act with their mean / likeliest mode. E.g. ("high",) samples a ril model's subgoals, as
  the paper's high level does, while its low level acts on its likeliest mode.
  """
  if sampled_levels is not None:
    levels = read_record(model_dir).levels
    unknown = sorted(set(sampled_levels) - set(levels))
    if unknown:
      raise ValueError(f"{model_dir} has no level {', '.join(unknown)} to sample (levels: {', '.join(levels)})")
  if sequential is not None:
    from relay_agents import sequencing  # pylint: disable=import-outside-toplevel
    return sequencing.SequentialGoalActor(make_actor(model_dir, seed, deterministic, replan, exploration=exploration,
                                                     execute_steps=execute_steps, ensemble=ensemble,
                                                     sampled_levels=sampled_levels), sequential)
  from relay_agents.gcbc import builder as gcbc_builder  # pylint: disable=import-outside-toplevel
  record = read_record(model_dir)
  obs_fn = observation_fn(record)
  key = (0, seed)  # an Acme random_key stand-in: the actor seeds its numpy stream with the last entry
  builders, policies, sources = {}, {}, {}
  for level in record.levels:
    level_deterministic = deterministic or (sampled_levels is not None and level not in sampled_levels)
    fn, params = level_policy_fn(model_dir, record, level, level_deterministic, exploration)
    fn = _executing(fn, execute_steps, os.path.join(model_dir, level), ensemble)
    builders[level] = gcbc_builder.GoalBCBuilder(fn.config, observation_fn=obs_fn)
    policies[level], sources[level] = fn, SavedVariables(params)
  if record.agent == "ril":
    if not record.window:
      raise _record_error(model_dir, "ril model without a window (W_l)")
    if replan is not None and replan <= 0:
      raise ValueError(f"replan must be positive, got {replan}")
    relay = gcbc_builder.RelayBuilder(builders["high"], builders["low"], window=replan or record.window)
    return relay.make_actor(key, policies, variable_source=sources)
  (level,) = record.levels
  return builders[level].make_actor(key, policies[level], variable_source=sources[level])


def check_fits(record: ModelRecord, model_dir: str, spec: goal_space.DataSpec, env_settings: Optional[Dict],
               what: str) -> None:
  """Refuses (one-line DataError) an environment or dataset (`what`, with its `spec` and kitchen
  settings) the model does not fit: the model must act in the kitchen, and the goal space,
  environment and settings must be the model's. Observation layouts may differ: the actor maps
  the environment's observation to the model's. Evaluation and finetuning both apply this."""
  mine = record.data_spec
  where = f"model {model_dir}"
  if not mine.observation.evaluable:
    raise DataError(f"{where} was trained on env '{mine.env}' data ({mine.describe()}); only kitchen models "
                    "can act in FrankaKitchen-v1")
  if spec.goal_space != mine.goal_space or spec.env != mine.env:
    raise DataError(f"{where} has a {mine.goal_space.dim}-d {mine.goal_space.name} goal space (env {mine.env}) but "
                    f"{what} has {spec.describe()}")
  if goal_space.normalize_env_settings(env_settings) != goal_space.normalize_env_settings(record.env_settings):
    raise DataError(f"{where} was trained under environment settings {record.env_settings} but {what} "
                    f"was recorded under {env_settings}")


def check_goal_source(record: ModelRecord, model_dir: str, play_dir: str) -> None:
  """`check_fits` against the play dataset evaluation goals come from."""
  play = goal_space.provenance_of_episode_dataset(play_dir)
  check_fits(record, model_dir, goal_space.DataSpec.from_dict(play[goal_space.METADATA_KEY]), play["env_settings"],
             f"the goals' dataset {play_dir}")


def env_settings(record: ModelRecord):
  """The `kitchen.EnvSettings` the model's data was recorded under (evaluation builds this env)."""
  from relay_data import kitchen  # pylint: disable=import-outside-toplevel
  return kitchen.EnvSettings.from_dict(goal_space.normalize_env_settings(record.env_settings))
