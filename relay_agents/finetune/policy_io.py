"""The one place finetuning reads and writes trained models, through `relay_agents.models`.

`load_model` reads a model's record (`models.read_record`: W_l as `window`, the observation spec
and goal space, the environment settings, the relabeled data each level was trained on) and each
level's saved networks (`models.load_networks`), and refuses, with one line, a model that cannot
act in the finetuning environment (`models.check_fits`) or whose policies disagree with its
record. `Model.observation` maps the environment's 59-d observation to the layout the model was
trained on (e.g. the 30-d D4RL positions), and `Model.env_settings` is the kitchen the model's
data was recorded in: finetuning acts in that environment.

`save_model` writes the finetuned model as a format-2 model (the source record, with a
`finetuned` entry naming the source model's path and fingerprint, the goal, variant and env
steps), atomically, so `relay eval --model OUT/model` evaluates it.
"""
import dataclasses
import hashlib
import json
import os
from typing import Callable, Dict, Optional

import jax
import numpy as np

from relay_agents import models
from relay_agents.gcbc import acting, builder as gcbc_builder, networks as gcbc_networks, residual as residual_lib
from relay_data import atomic, goal_space, kitchen, relabeled
from relay_data.errors import DataError

# The finetuning environment: FrankaKitchen-v1's own observation, the kitchen goal space.
ENV_SPEC = goal_space.kitchen_spec(kitchen.OBS_DIM)
ENV_NAME = "the finetuning environment (FrankaKitchen-v1)"


@dataclasses.dataclass
class Level:
  """One goal-conditioned policy of a model: networks, parameters, config, example dims, and the
  relabeled dataset it was trained on (the record's `sources` entry; {} when not recorded)."""
  networks: gcbc_networks.GoalBCNetworks
  params: object
  config: object          # GoalBCConfig
  dims: Dict[str, int]    # relabeled example fields and widths (observation, goal, action|subgoal)
  saved: Dict             # the rest of its policy.pkl (normalization, input_dim, train_key, steps)
  data: Dict              # {path, fingerprint, relabel, source, spec, env_settings}
  fn: acting.GoalPolicyFn = None
  residual: Optional[residual_lib.ResidualConfig] = None  # set: params are {"base", "residual"}

  def __post_init__(self):
    if self.fn is None:  # sampling by default: finetuning acts on-policy
      self.fn = gcbc_builder.GoalBCBuilder(self.config, self.dims).make_policy(self.networks, evaluation=False)
      if self.residual is not None:  # the base acts with its mode, the residual samples
        self.fn = residual_lib.ResidualPolicyFn(self.fn, residual_lib.make_networks(self.fn, self.saved,
                                                                                    self.residual))

  @property
  def residual_networks(self) -> Optional[residual_lib.ResidualNetworks]:
    """What finetuning trains when the level has a residual (None: the level's own networks)."""
    return self.fn.residual if isinstance(self.fn, residual_lib.ResidualPolicyFn) else None

  @property
  def source(self) -> Optional[str]:
    """The recorded path of the relabeled dataset it was trained on (its demos for DAPG/IRIL)."""
    return self.data.get("path")

  def policy(self, params=None) -> acting.GoalPolicy:
    return acting.GoalPolicy(self.fn, self.params if params is None else params)


@dataclasses.dataclass
class Model:
  """A trained model as finetuning uses it: its record, its levels and where it came from."""
  record: models.ModelRecord
  levels: Dict[str, Level]
  path: str
  fingerprint: str
  replan: Optional[int] = None  # acting cadence instead of W_l (`FinetuneConfig.replan`)

  @property
  def agent(self) -> str:
    return self.record.agent

  @property
  def window(self) -> Optional[int]:
    """W_l: the relabeling window (IRIL's and distillation's)."""
    return self.record.window

  @property
  def cadence(self) -> Optional[int]:
    """The high level's re-plan interval and the low level's segment: `replan`, else W_l."""
    return self.replan or self.record.window

  @property
  def hierarchical(self) -> bool:
    return "high" in self.levels

  @property
  def spec(self) -> goal_space.DataSpec:
    return self.record.data_spec

  @property
  def env_settings(self) -> kitchen.EnvSettings:
    """The kitchen settings the model's data was recorded with: finetuning acts in that env."""
    return models.env_settings(self.record)

  @property
  def observation_fn(self) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    return models.observation_fn(self.record)

  def observation(self, env_observation: np.ndarray) -> np.ndarray:
    """The environment's observation [..., 59] -> the model's layout [..., d_obs] (float32)."""
    fn = self.observation_fn
    return np.asarray(env_observation if fn is None else fn(env_observation), np.float32)


def _load_level(model_dir: str, record: models.ModelRecord, name: str, explore_std: float = 1.0,
                explore_temperature: float = 1.0, execute_steps: Optional[int] = None,
                residual: Optional[residual_lib.ResidualConfig] = None) -> Level:
  level_dir = os.path.join(model_dir, name)
  networks, params, config, dims = models.load_networks(level_dir, (explore_std, explore_temperature))
  saved_residual = residual_lib.load(level_dir)
  if saved_residual is not None or residual is not None:
    if config.action_chunk > 1 and execute_steps not in (None, 1):
      raise ValueError(f"{level_dir}: a residual corrects every executed action, so its base re-predicts at every "
                       f"step: execute_steps must be 1, got {execute_steps}")
    execute_steps = 1
    if saved_residual is not None:
      if residual is not None and residual.hidden != saved_residual[1].hidden:
        raise ValueError(f"{level_dir}: has a residual of hidden sizes {list(saved_residual[1].hidden)}, "
                         f"not {list(residual.hidden)}")
      residual = saved_residual[1]
  if execute_steps is not None and config.action_chunk > 1:  # a level predicting one action ignores it
    if not 1 <= execute_steps <= config.action_chunk:
      raise DataError(f"cannot execute {execute_steps} actions per chunk: the policy predicts chunks of "
                      f"{config.action_chunk} actions (use 1..{config.action_chunk})",
                      path=os.path.join(level_dir, models.POLICY))
    config = dataclasses.replace(config, execute_steps=execute_steps)
  if getattr(config, "gripper_head", False):
    raise ValueError(f"{level_dir}: finetuning a policy with a gripper head is not supported (its policy "
                     "gradient would need the finger class's probability of each executed action)")
  saved = {k: v for k, v in models.load_policy(level_dir).items() if k != "params"}
  width = record.data_spec.observation.dim
  if dims.get("observation") != width:
    raise DataError(f"policy takes {dims.get('observation')}-d observations but the model's record says "
                    f"{record.data_spec.describe()}", path=os.path.join(level_dir, models.POLICY))
  level = Level(networks, params, config, dict(dims), saved, dict(record.sources.get(name) or {}), residual=residual)
  if residual is not None:  # a new residual starts at zero: the level acts as its base's mode
    level.params = {"base": params, "residual": saved_residual[0] if saved_residual is not None else
                    residual_lib.init_params(level.residual_networks, jax.random.PRNGKey(0))}
  return level


def load_model(model_dir: str, explore_std: float = 1.0, explore_temperature: float = 1.0,
               replan: Optional[int] = None, execute_steps: Optional[int] = None,
               residual: Optional[residual_lib.ResidualConfig] = None) -> Model:
  """The model in `model_dir`; a one-line DataError for a broken directory or a model that cannot
  act in the finetuning environment, a ValueError for one that cannot be finetuned toward a goal.
  Its levels' networks act and score with the exploration settings (`FinetuneConfig.explore_std`,
  `explore_temperature`; `gcbc.networks.with_exploration`). A relay model's high level re-plans
  every `replan` steps (None: W_l); a flat model has no high level and ignores it. A level that
  predicts chunks executes `execute_steps` of each (None: as trained; out of 1..k: a one-line
  DataError naming its policy.pkl), and a finetuned model saved from it keeps that count.
  `residual`: the acting level (the low level, or a flat policy) gets a new residual of these
  settings over its frozen mode (`gcbc.residual`), what finetuning then trains; a level saved with
  a residual always has it (a finetuned one, which then continues from it)."""
  if replan is not None and not replan > 0:
    raise ValueError(f"replan must be positive, got {replan}")
  record = models.read_record(model_dir)
  models.check_fits(record, model_dir, ENV_SPEC, record.env_settings, ENV_NAME)
  names = ("low", "high") if record.agent == "ril" else ("policy",)
  if sorted(record.levels) != sorted(names):
    raise DataError(f"a {record.agent} model needs levels {list(names)}, the record has {sorted(record.levels)}",
                    path=os.path.join(model_dir, models.RECORD))
  if record.agent == "ril" and not record.window:
    raise DataError("ril model without a window (W_l)", path=os.path.join(model_dir, models.RECORD))
  if record.members:
    level = sorted(record.members)[0]
    raise ValueError(f"{model_dir} is a policy ensemble (its {level} level acts with the mean of "
                     f"{len(record.members[level])} members, `relay ensemble`); a policy gradient needs one "
                     "network: finetune one member's model instead")
  levels = {n: _load_level(model_dir, record, n, explore_std, explore_temperature, execute_steps,
                           residual if n == names[0] else None) for n in names}
  if "policy" in levels and not levels["policy"].config.use_goal:
    raise ValueError(f"{model_dir}: a goal-free BC policy cannot be finetuned toward a goal")
  return Model(record, levels, os.path.abspath(model_dir), models.fingerprint(model_dir),
               replan if record.agent == "ril" else None)


def check_demos(model: Model, level: str, demo_dir: Optional[str] = None) -> str:
  """The relabeled dataset DAPG/IRIL (and eps calibration) draw `level`'s demos from.

  Default: the one the level was trained on, as the record names it (path and fingerprint); a
  one-line DataError when it is gone or has changed since. A dataset given instead (`demo_dir`)
  must have the model's observation spec, goal space and environment settings.
  """
  if demo_dir is None:
    data = model.levels[level].data
    path = data.get("path")
    if not path:
      raise DataError(f"the record does not name the relabeled data the {level} level was trained on (a model "
                      "from before records); pass --demos", path=os.path.join(model.path, models.RECORD))
    if not os.path.isdir(path):
      raise DataError(f"the relabeled data the model's {level} level was trained on is gone (recorded in "
                      f"{os.path.join(model.path, models.RECORD)}); relabel it again there or pass --demos", path=path)
    found = relabeled.fingerprint(path)
    if data.get("fingerprint") and found != data["fingerprint"]:
      raise DataError(f"the relabeled data changed since the model's {level} level was trained on it (fingerprint "
                      f"{found}, recorded {data['fingerprint']}); pass --demos to use it anyway", path=path)
    return path
  if not os.path.isdir(demo_dir):
    raise DataError("no such relabeled dataset (--demos)", path=demo_dir)
  provenance = goal_space.provenance_of_relabeled_dataset(demo_dir)
  model.spec.require_same(goal_space.DataSpec.from_dict(provenance[goal_space.METADATA_KEY]),
                          f"model {model.path}", f"the demo data {demo_dir}")
  if goal_space.normalize_env_settings(provenance["env_settings"]) != \
      goal_space.normalize_env_settings(model.record.env_settings):
    raise DataError(f"model {model.path} was trained under environment settings {model.record.env_settings} but "
                    f"the demo data {demo_dir} was recorded under {provenance['env_settings']}")
  return os.path.abspath(demo_dir)


def _key(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_model(model: Model, params: Dict[str, object], out_dir: str, finetuned: Dict) -> str:
  """Writes `model` with `params` (per level; the others keep theirs) as a format-2 model, atomically.

  The record is the source model's with `finetuned` = {"from": {path, fingerprint}, **finetuned}
  (goal, variant, levels, env steps, ...): its fingerprint differs from the source's, and a
  finetuned level's `train_key` names the source's key and the finetuning, so `relay train-il`
  never mistakes it for its own weights.
  """
  info = {"from": {"path": model.path, "fingerprint": model.fingerprint}, **finetuned}
  record = dataclasses.replace(model.record, finetuned=json.loads(json.dumps(info)))
  with atomic.atomic_directory(out_dir, overwrite=True) as tmp:
    for name, level in model.levels.items():
      changed = name in params
      saved = level.saved
      level_params = params[name] if changed else level.params
      base = level_params["base"] if level.residual is not None else level_params
      models.save_policy(os.path.join(tmp, name), jax.device_get(base),
                         saved["normalization"], level.config, level.dims, saved["input_dim"],
                         _key(saved.get("train_key"), info) if changed else saved.get("train_key"),
                         saved.get("steps"))
      if level.residual is not None:  # the base as it was, its residual beside it
        residual_lib.save(os.path.join(tmp, name), level_params["residual"], level.residual)
    models.write_record(tmp, record)  # last, as train-il does: marks the model complete
  return out_dir
