"""The one place finetuning reads and writes trained models (today's `relay train-il` layout).

A model directory holds `agent.json` ({"agent": "ril"|"gcbc"|..., "replan_every": W_l}) and one
`<level>/policy.pkl` per policy ({"params", "normalization", "config", "dims", "input_dim",
"source"}). This adapter turns that into `Model` (networks + params per level) and writes a
finetuned model back in the same layout, so `relay eval --model OUT/model` evaluates it. When
the model API changes, only this module changes.
"""
import dataclasses
import json
import os
import pickle
from typing import Dict, Optional

import jax

from relay_agents.gcbc import acting, networks as gcbc_networks
from relay_data import atomic


@dataclasses.dataclass
class Level:
  """One goal-conditioned policy of a model: networks, parameters, config, training data."""
  networks: gcbc_networks.GoalBCNetworks
  params: object
  config: object          # GoalBCConfig
  saved: Dict             # the rest of its policy.pkl (dims, input_dim, source, normalization)

  @property
  def source(self) -> Optional[str]:
    """The relabeled dataset it was trained on (its demos for DAPG/IRIL), if it can be found."""
    return self.saved.get("resolved_source")

  def policy(self, params=None) -> acting.GoalPolicy:
    return acting.GoalPolicy(self.networks, self.params if params is None else params, self.config)


@dataclasses.dataclass
class Model:
  agent: str
  replan_every: Optional[int]
  levels: Dict[str, Level]
  path: str
  # The environment settings the model's data was recorded with (kitchen.EnvSettings); today's
  # model layout does not record them, so None (make_env's default). The new models API does.
  env_settings: Optional[object] = None

  @property
  def hierarchical(self) -> bool:
    return "high" in self.levels


def _load_level(level_dir: str) -> Level:
  path = os.path.join(level_dir, "policy.pkl")
  try:
    with open(path, "rb") as f:
      saved = pickle.load(f)
  except FileNotFoundError as e:
    raise ValueError(f"{path}: no trained policy there (train one with `relay train-il`)") from e
  except (pickle.UnpicklingError, EOFError) as e:
    raise ValueError(f"{path}: truncated or corrupt policy file ({e})") from e
  config = saved["config"]
  networks = gcbc_networks.make_networks(saved["input_dim"], saved["dims"][config.target], config,
                                         saved["normalization"])
  return Level(networks, saved["params"], config, {k: v for k, v in saved.items() if k != "params"})


def _resolve_source(source: Optional[str], model_dir: str) -> Optional[str]:
  """train-il records the data path as given (maybe relative to where it ran): try the current
  directory, then the directories above the model."""
  if not source:
    return None
  model_dir = os.path.abspath(model_dir)
  for base in (os.getcwd(), os.path.dirname(model_dir), os.path.dirname(os.path.dirname(model_dir))):
    path = os.path.join(base, source)
    if os.path.isdir(path):
      return os.path.abspath(path)
  return None


def load_model(model_dir: str) -> Model:
  meta_path = os.path.join(model_dir, "agent.json")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError as e:
    raise ValueError(f"{meta_path}: not a trained model directory (no agent.json)") from e
  except ValueError as e:
    raise ValueError(f"{meta_path}: unreadable ({e})") from e
  names = ("low", "high") if meta.get("agent") == "ril" else ("policy",)
  levels = {n: _load_level(os.path.join(model_dir, n)) for n in names}
  for level in levels.values():
    level.saved["resolved_source"] = _resolve_source(level.saved.get("source"), model_dir)
  if "policy" in levels and not levels["policy"].config.use_goal:
    raise ValueError(f"{model_dir}: a goal-free BC policy cannot be finetuned toward a goal")
  return Model(meta["agent"], meta.get("replan_every"), levels, os.path.abspath(model_dir))


def save_model(model: Model, params: Dict[str, object], out_dir: str, extra: Optional[Dict] = None) -> str:
  """Writes `model` with `params` (per level; others unchanged) in the train-il layout, atomically."""
  with atomic.atomic_directory(out_dir, overwrite=True) as tmp:
    for name, level in model.levels.items():
      os.makedirs(os.path.join(tmp, name))
      saved = dict(level.saved, params=jax.device_get(params.get(name, level.params)))
      with open(os.path.join(tmp, name, "policy.pkl"), "wb") as f:
        pickle.dump(saved, f)
    meta = {"agent": model.agent, "replan_every": model.replan_every, "finetuned_from": model.path}
    meta.update(extra or {})
    with open(os.path.join(tmp, "agent.json"), "w") as f:
      json.dump(meta, f, indent=1)
  return out_dir
