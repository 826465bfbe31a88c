"""Train relay IL agents and the baselines from relabeled datasets, through Reverb.

    relay train-il --agent ril --low out/low --high out/high --out models/ril
    relay train-il --agent gcbc --data out/flat --out models/gcbc

A policy is trained per level: its relabeled dataset is streamed into a Reverb table (a local
server, or `reverb_address` for a server elsewhere), Acme's BC learner (made by the GCBC builder)
reads batches from it, scalars go to TensorBoard (`<out>/tensorboard`), checkpoints to
`<out>/<level>/checkpoint.pkl` every `checkpoint_every` steps (the one before is kept as
`checkpoint.prev.pkl`: a damaged latest checkpoint falls back to it), and the final policy to
`<out>/<level>/policy.pkl`. The model's record (`relay_agents.models`) is written last.

A rerun into the same directory resumes (or finds the policy already trained) only when the data
(fingerprint) and the config match what is there; anything else is refused unless `overwrite`,
which retrains from scratch: old weights are never returned for new data.
"""
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Dict, Optional

import jax
import numpy as np
import reverb
import tensorflow as tf

from relay_agents import acme_compat  # noqa: F401
from acme.utils import loggers  # pylint: disable=g-bad-import-order
from relay_agents import models, replay
from relay_agents.gcbc import builder as gcbc_builder, learning, networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import goal_space, relabeled, rlds_io, version
from relay_data.errors import DataError

AGENTS = {
    # agent -> {level: (relabel level expected, GoalBCConfig overrides)}
    "ril": {"low": ("low", {"subgoal_residual": False, "goal_elements": False}),
            "high": ("high", {"target": "subgoal", "action_chunk": 1, "execute_steps": 1, "gripper_head": False,
                              "goal_noise": 0.0})},
    "gcbc": {"policy": ("flat", {})},
    "gcbc-norelabel": {"policy": ("final-goal", {})},
    "bc": {"policy": ("bc", {"use_goal": False})},
}
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pkl", "checkpoint.prev.pkl"


LR_DECAYS = ("cosine", "none")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 5000
  seed: int = 0
  log_every: int = 100
  checkpoint_every: int = 1000
  reverb_address: Optional[str] = None   # host:port of a running server; None starts one here
  progress: bool = True
  # "cosine": `train_agent` decays each level's Adam rate to 0 over `steps` (a policy config's own
  # `lr_decay_steps` wins); "none": constant. See `GoalBCConfig.lr_decay_steps` for why.
  lr_decay: str = "cosine"

  def __post_init__(self):
    if self.steps <= 0 or self.checkpoint_every <= 0 or self.log_every <= 0:
      raise ValueError("steps, checkpoint_every and log_every must be positive")
    if self.lr_decay not in LR_DECAYS:
      raise ValueError(f"lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")


class _TensorBoardLogger(loggers.Logger):
  def __init__(self, logdir: str, prefix: str, every: int):
    self._writer = tf.summary.create_file_writer(logdir)
    self._prefix, self._every, self._n = prefix, every, 0
    self.last: Dict[str, float] = {}

  def write(self, data):
    self._n += 1
    self.last = {k: float(np.asarray(v)) for k, v in data.items() if np.asarray(v).shape == ()}
    if self._n % self._every == 0:
      with self._writer.as_default():
        for k, v in self.last.items():
          tf.summary.scalar(f"{self._prefix}/{k}", v, step=self._n)

  def close(self):
    self._writer.flush()


def _load_examples(path: str, max_examples: int) -> Dict[str, np.ndarray]:
  return relabeled.read_arrays(path, max_examples)


def train_key(data_dir: str, config: GoalBCConfig, train: TrainConfig) -> str:
  """What a level's weights depend on: the data (its fingerprint and its lineage: relabel config,
  seed and source; the fingerprint covers the bytes), the policy config and the seed (not
  the step count: more steps resume the same training)."""
  lineage = {k: v for k, v in relabeled.read_lineage(data_dir).items() if k not in ("code_version", "beam_options")}
  ident = {"data": relabeled.fingerprint(data_dir), "lineage": lineage, "config": _config_identity(config),
           "seed": train.seed}
  return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Policy options added after models were first trained: left out of the key at their defaults, so
# a model trained before they existed still resumes (its weights depend on none of them).
_LATER_OPTIONS = {"end_effector": False, "action_chunk": 1, "gripper_head": False, "goal_delta": False,
                  "subgoal_residual": False, "goal_noise": 0.0, "goal_elements": False, "lr_decay_steps": None,
                  "velocities": True, "weight_decay": 0.0}


def _config_identity(config: GoalBCConfig) -> Dict:
  ident = dataclasses.asdict(config)
  if ident["action_chunk"] == 1:
    ident.pop("execute_steps")
  for name, default in _LATER_OPTIONS.items():
    if ident[name] == default:
      ident.pop(name)
  return ident


def _stale_files(out_dir: str, key: str):
  """Files in a level dir that come from another key (other data or config), or that cannot tell."""
  stale = []
  for name, what, field in ((models.POLICY, "trained policy", "train_key"),
                            (CHECKPOINT, "training checkpoint", "key"),
                            (PREVIOUS_CHECKPOINT, "training checkpoint", "key")):
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
      continue
    try:
      saved = models.load_pickle(path, what)
    except DataError:
      continue  # a damaged file is handled where it is read (fallback or a clear error)
    if not isinstance(saved, dict) or saved.get(field) != key:
      stale.append(path)
  return stale


def check_level_dir(out_dir: str, key: str, overwrite: bool) -> None:
  """Refuses to resume weights trained from other data or config; `overwrite` deletes them."""
  stale = _stale_files(out_dir, key)
  if stale and not overwrite:
    raise DataError(f"{out_dir} holds weights trained from other data or another config ({os.path.basename(stale[0])}); "
                    "pass --overwrite to retrain from scratch, or choose another --out")
  if overwrite:
    for name in (models.POLICY, CHECKPOINT, PREVIOUS_CHECKPOINT):
      if os.path.exists(os.path.join(out_dir, name)):
        os.remove(os.path.join(out_dir, name))


def _load_checkpoint(out_dir: str) -> Optional[Dict]:
  """The latest readable checkpoint; a damaged latest one falls back to the previous (said on
  stderr); none readable is a one-line error naming the file."""
  errors = []
  for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
      continue
    try:
      saved = models.load_pickle(path, "training checkpoint")
      if not isinstance(saved, dict) or not {"state", "step", "key"} <= set(saved):
        raise DataError("not a relay training checkpoint", path=path)
    except DataError as e:
      errors.append(e)
      continue
    for e in errors:
      print(f"warning: {e}; resuming from {path} (step {saved['step']})", file=sys.stderr)
    return saved
  if errors:
    raise DataError(f"{errors[0]}; no earlier checkpoint to fall back to (pass --overwrite to retrain)")
  return None


def _save_checkpoint(out_dir: str, state: Dict) -> None:
  path = os.path.join(out_dir, CHECKPOINT)
  if os.path.exists(path):
    os.replace(path, os.path.join(out_dir, PREVIOUS_CHECKPOINT))
  models.save_pickle(path, state)


def train_policy(data_dir: str, config: GoalBCConfig, train: TrainConfig, out_dir: str,
                 overwrite: bool = False) -> Dict:
  """Trains one goal-conditioned policy; returns a summary (losses, steps, timings).

  `first_loss` is None when the policy in `out_dir` was already trained from this data and
  config for `train.steps` steps (nothing is retrained)."""
  os.makedirs(out_dir, exist_ok=True)
  key = train_key(data_dir, config, train)
  check_level_dir(out_dir, key, overwrite)
  if os.path.exists(os.path.join(out_dir, models.POLICY)):
    saved = models.load_policy(out_dir)
    if saved.get("steps") == train.steps:
      return {"examples_fed": 0, "steps": train.steps, "resumed_from": train.steps, "first_loss": None,
              "last_loss": None, "steps_per_s": 0.0, "train_key": key}
  checkpoint = _load_checkpoint(out_dir)
  if checkpoint is not None and checkpoint["step"] > train.steps:
    raise DataError(f"checkpoint is at step {checkpoint['step']}, beyond --steps {train.steps} (pass a larger "
                    "--steps, or --overwrite to retrain)", path=os.path.join(out_dir, CHECKPOINT))
  dims = replay.ExampleDims.of(data_dir).dims
  check_target(data_dir, dims, config)
  sample = _load_examples(data_dir, 100_000)
  norm = gcbc_networks.stats_from_examples([sample], config)
  input_dim = dims["observation"] + (dims["goal"] if config.use_goal else 0)
  networks = gcbc_networks.make_networks(input_dim, dims[config.target_field], config, norm,
                                         observation_dim=dims["observation"])
  builder = gcbc_builder.GoalBCBuilder(config, dims)

  server = None
  address = train.reverb_address
  if address is None:
    server, address = replay.start_server(builder.make_replay_tables())
  try:
    fed = replay.feed(address, config.table_name, data_dir, sorted(dims),
                      config.examples_per_item, limit=config.max_replay_size, progress=train.progress,
                      seed=train.seed,
                      total=relabeled.num_examples(data_dir))
    client = replay.connect(address)
    logger = _TensorBoardLogger(os.path.join(os.path.dirname(out_dir), "tensorboard"),
                                os.path.basename(out_dir), train.log_every)
    learner = builder.make_learner(jax.random.PRNGKey(train.seed), networks,
                                   builder.make_dataset_iterator(client), logger=logger)
    start = 0
    if checkpoint is not None:
      learner.restore(checkpoint["state"])
      start = checkpoint["step"]
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    losses = []
    t0 = time.time()
    for step in tqdm(range(start, train.steps), desc=f"training {os.path.basename(out_dir)}",
                     disable=not train.progress, leave=False):
      learner.step()
      losses.append(logger.last["loss"])
      if (step + 1) % train.checkpoint_every == 0 or step + 1 == train.steps:
        _save_checkpoint(out_dir, {"state": jax.device_get(learner.save()), "step": step + 1, "key": key})
    logger.close()
    models.save_policy(out_dir, learning.params_of(learner), norm, config, dims, input_dim, key, train.steps)
    return {"examples_fed": fed, "steps": train.steps, "resumed_from": start,
            "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-50:])) if losses else None,
            "steps_per_s": (train.steps - start) / max(time.time() - t0, 1e-9), "train_key": key}
  finally:
    if server is not None:
      server.stop()


def check_target(data_dir: str, dims: Dict[str, int], config: GoalBCConfig) -> None:
  """The dataset must hold what the policy predicts: with action chunking, chunks of exactly k."""
  if config.target_field == "action_chunk":
    want = config.action_chunk * dims.get("action", 0)
    if dims.get("action_chunk") != want:
      have = (f"chunks of {dims['action_chunk'] // max(dims.get('action', 1), 1)} actions" if "action_chunk" in dims
              else "no action chunks")
      raise DataError(f"the policy predicts chunks of {config.action_chunk} actions (--action-chunk) but the "
                      f"dataset has {have}; relabel it with --action-chunk {config.action_chunk}", path=data_dir)
  elif config.target_field not in dims:
    raise DataError(f"the dataset has no '{config.target_field}' field (fields: {', '.join(sorted(dims))})",
                    path=data_dir)


def _is_kitchen(source: Dict) -> bool:
  spec = goal_space.DataSpec.from_dict(source["spec"])
  return spec.observation.env == "kitchen" and spec.goal_space == goal_space.KITCHEN_GOAL_SPACE


def resolve_end_effector(sources: Dict[str, Dict], config: GoalBCConfig) -> GoalBCConfig:
  """`end_effector=None` (auto) becomes on for kitchen data, off otherwise; on needs kitchen data
  (the robot joints first in observation and goal)."""
  kitchen_data = all(_is_kitchen(source) for source in sources.values())
  if config.end_effector is None:
    return dataclasses.replace(config, end_effector=kitchen_data)
  if config.end_effector:
    for level, source in sorted(sources.items()):
      if not _is_kitchen(source):
        spec = goal_space.DataSpec.from_dict(source["spec"])
        raise DataError(f"--end-effector needs kitchen data (robot joints first in observation and goal), but the "
                        f"{level} dataset has {spec.describe()}", path=source["path"])
  return config


def resolve_goal_elements(agent: str, level: str, sources: Dict[str, Dict], config: GoalBCConfig) -> GoalBCConfig:
  """`goal_elements=None` (auto) becomes on for the RIL high level on kitchen data, off otherwise
  (GCBC measured worse with it: docs/results.md, "The goal as its elements") and off with
  `goal_delta`, which needs the goal's raw dims."""
  if config.goal_elements is not None:
    return config
  on = (agent == "ril" and level == "high" and not config.goal_delta
        and all(_is_kitchen(source) for source in sources.values()))
  return dataclasses.replace(config, goal_elements=on)


def check_kitchen_options(sources: Dict[str, Dict], config: GoalBCConfig) -> None:
  """The gripper head reads the fingers at the kitchen's observation columns 7-8; the goal delta
  and the subgoal residual use the observation's kitchen goal-space dims (so does leaving the
  velocities out: it keeps those dims alone); goal noise perturbs the goal's kitchen arm joints."""
  options = [flag for flag, on in (("--gripper-head", config.gripper_head), ("--goal-delta", config.goal_delta),
                                   ("--subgoal-residual", config.subgoal_residual),
                                   ("--goal-noise", config.goal_noise > 0),
                                   ("--goal-elements", config.goal_elements),
                                   ("--velocities off", not config.velocities)) if on]
  for level, source in sorted(sources.items()):
    if options and not _is_kitchen(source):
      spec = goal_space.DataSpec.from_dict(source["spec"])
      verb = "needs" if len(options) == 1 else "need"
      raise DataError(f"{' and '.join(options)} {verb} kitchen data (robot joints and fingers first, the goal-space "
                      f"dims in the observation), but the {level} dataset has {spec.describe()}", path=source["path"])


def check_dataset_level(agent: str, level: str, data_dir: str) -> None:
  expected = AGENTS[agent][level][0]
  lineage = relabeled.read_lineage(data_dir)
  got = lineage.get("config", {}).get("level")
  if got != expected:
    raise ValueError(f"{agent} {level} policy needs a '{expected}' relabeled dataset; {data_dir} is "
                     f"'{got}' (make one with: relay relabel --level {expected} ...)")


def _sources(agent: str, data: Dict[str, str]) -> Dict[str, Dict]:
  """Per level: the relabeled dataset's path, fingerprint, relabel config, spec and settings."""
  out = {}
  for level, path in data.items():
    check_dataset_level(agent, level, path)
    lineage = relabeled.read_lineage(path)
    out[level] = {"path": os.path.abspath(path), "fingerprint": relabeled.fingerprint(path),
                  "relabel": lineage.get("config", {}), "source": {
                      k: lineage.get("source", {}).get(k) for k in ("path", "name", "version", "fingerprint")},
                  **goal_space.provenance_of_relabeled_dataset(path)}
  return out


def check_sources_agree(sources: Dict[str, Dict]) -> None:
  """Levels of one agent must share W_l, observation spec, goal space and environment settings."""
  levels = sorted(sources)
  first = sources[levels[0]]
  if "low" in sources and "high" in sources:
    w_low, w_high = sources["low"]["relabel"].get("window"), sources["high"]["relabel"].get("window")
    if w_low != w_high:
      raise ValueError(f"the low-level dataset {sources['low']['path']} was relabeled with W_l = {w_low} but the "
                       f"high-level dataset {sources['high']['path']} with W_l = {w_high}; relabel both with the "
                       "same --window")
  for level in levels[1:]:
    other = sources[level]
    goal_space.DataSpec.from_dict(first["spec"]).require_same(
        goal_space.DataSpec.from_dict(other["spec"]), f"the {levels[0]} dataset {first['path']}",
        f"the {level} dataset {other['path']}")
    if first["env_settings"] != other["env_settings"]:
      raise DataError(f"the {levels[0]} dataset {first['path']} was recorded under environment settings "
                      f"{first['env_settings']} but the {level} dataset {other['path']} under {other['env_settings']}")


def train_agent(agent: str, data: Dict[str, str], out_dir: str, train: TrainConfig,
                config: GoalBCConfig = GoalBCConfig(), overwrite: bool = False) -> Dict:
  """Trains every policy of `agent` (see AGENTS) and writes the model record (`models.ModelRecord`)."""
  if agent not in AGENTS:
    raise ValueError(f"unknown agent {agent!r}; known: {', '.join(AGENTS)}")
  if set(data) != set(AGENTS[agent]):
    raise ValueError(f"{agent} needs datasets for {sorted(AGENTS[agent])}, got {sorted(data)}")
  if config.subgoal_residual and agent != "ril":
    raise ValueError(f"subgoal_residual applies to the ril high level (it predicts subgoals), not to {agent}")
  if config.goal_noise and agent == "bc":
    raise ValueError("goal_noise applies to goal-conditioned policies; bc has no goal")
  if config.goal_elements and agent == "bc":
    raise ValueError("goal_elements applies to goal-conditioned policies; bc has no goal")
  sources = _sources(agent, data)
  check_sources_agree(sources)
  config = resolve_end_effector(sources, config)
  if train.lr_decay == "cosine" and config.lr_decay_steps is None:
    config = dataclasses.replace(config, lr_decay_steps=train.steps)
  check_kitchen_options(sources, config)
  level_configs = {level: resolve_goal_elements(agent, level, sources,
                                                dataclasses.replace(config, **AGENTS[agent][level][1]))
                   for level in data}
  if not overwrite:  # refuse before anything in out_dir changes
    for level, path in data.items():
      check_level_dir(os.path.join(out_dir, level), train_key(path, level_configs[level], train), overwrite=False)
  record_path = os.path.join(out_dir, models.RECORD)
  if os.path.exists(record_path):
    os.remove(record_path)  # the record marks a finished model: not while its policies change
  first = sources[sorted(sources)[0]]
  window_source = sources.get("low", first)["relabel"]
  summary = {"agent": agent, "window": window_source.get("window") if agent in ("ril", "gcbc") else None,
             "levels": {}}
  for level, path in data.items():
    summary["levels"][level] = train_policy(path, level_configs[level], train, os.path.join(out_dir, level),
                                            overwrite=overwrite)
  record = models.ModelRecord(
      agent=agent, levels=summary["levels"], window=summary["window"],
      window_high=sources["high"]["relabel"].get("window_high") if "high" in sources else None,
      spec=first["spec"], env_settings=first["env_settings"], sources=sources,
      policy_configs={level: dataclasses.asdict(c) for level, c in level_configs.items()},
      train_config=dataclasses.asdict(train), code_version=version.code_version())
  models.write_record(out_dir, record)  # last: marks the model complete
  return summary
