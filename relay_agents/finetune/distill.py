"""Distillation: per-goal finetuned policies -> one relay policy for every goal (the paper's last step).

1. Roll out each finetuned run's model (`relay finetune --out RUN`: RUN/model and RUN/run.json
   name the model and the goal), sampling as in finetuning, and keep the successful episodes
   (every element of the goal done by the environment's completion test).
2. Write the play episodes and those successes as one RLDS dataset (observation, goal-space
   state, action: the fields relabeling reads).
3. Relabel it with the same relay functions and windows the original model was trained with
   (`pipelines.relabel`, low and high levels), and train one RIL agent on it (`train.train_agent`).
Evaluate the result on all goals with `relay eval --model OUT/model`.
"""
import dataclasses
import json
import os
from typing import Dict, Iterator, List, Sequence

import numpy as np

from relay_agents.finetune import acting, env as env_lib, policy_io
from relay_data import kitchen, relabeled, rlds_io


class _FixedParams:
  """A variable source that always returns one model's parameters (no learner: pure rollouts)."""

  def __init__(self, model: policy_io.Model):
    self._params = {n: level.params for n, level in model.levels.items()}

  def get_variables(self, names):
    return [self._params[n] for n in names]


def successful_rollouts(run_dir: str, rollouts: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
  """`rollouts` sampled episodes of RUN/model toward RUN's goal; the successful ones as
  {"observation" [L, 59], "action" [L, 9] (the last row zero, as RLDS has no action there)}."""
  from relay_agents import acme_compat  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from acme.jax import variable_utils  # pylint: disable=import-outside-toplevel
  try:
    with open(os.path.join(run_dir, "run.json")) as f:
      record = json.load(f)
  except FileNotFoundError as e:
    raise ValueError(f"{run_dir}: not a finetune run directory (no run.json)") from e
  model = policy_io.load_model(os.path.join(run_dir, "model"))
  elements = record["run"]["elements"]
  environment = env_lib.GoalKitchenEnv(elements, np.asarray(record["goal_state"], np.float32),
                                       record["config"]["max_episode_steps"], seed=seed, settings=model.env_settings)
  names = acting.variable_names(model)
  actor = acting.FinetuneActor(model, variable_utils.VariableClient(_FixedParams(model), names), seed=seed)
  kept = []
  for i in range(rollouts):
    result = acting.run_episode(environment, actor, i, seed, record=True)
    if set(result["completed"]) >= set(elements):
      act = np.clip(result["actions"], -1.0, 1.0)  # what the environment executed
      kept.append({"observation": result["observations"].astype(np.float32),
                   "action": np.concatenate([act, np.zeros((1, act.shape[1]), np.float32)])})
  return kept


def _as_episode(observation, action, episode_id: str) -> Dict:
  return {"observation": np.asarray(observation, np.float32),
          "goal_state": kitchen.goal_state_from_observation(observation), "action": np.asarray(action, np.float32),
          "episode_id": episode_id}


def merged_episodes(play_dir: str, successes: Sequence[Dict]) -> Iterator[Dict]:
  for i, ep in enumerate(rlds_io.iter_episodes(play_dir)):
    yield _as_episode(ep["observation"], ep["action"], f"play{i}")
  for i, ep in enumerate(successes):
    yield _as_episode(ep["observation"], ep["action"], f"finetuned{i}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  rollouts: int = 20           # per finetuned run
  goals_per_step: int = 8
  train_steps: int = 5000
  seed: int = 0
  progress: bool = True


def distill(run_dirs: Sequence[str], play_dir: str, out_dir: str, config: DistillConfig = DistillConfig()) -> Dict:
  """Runs the three steps above; returns counts and the trained model's directory."""
  from pipelines import relabel as relabel_pipeline  # pylint: disable=import-outside-toplevel
  from relay_agents import train  # pylint: disable=import-outside-toplevel
  if not run_dirs:
    raise ValueError("distill needs at least one finetune run directory")
  successes, per_run = [], {}
  for run_dir in run_dirs:
    kept = successful_rollouts(run_dir, config.rollouts, config.seed)
    per_run[run_dir] = len(kept)
    successes += kept
  base = policy_io.load_model(os.path.join(run_dirs[0], "model"))
  if not base.hierarchical:
    raise ValueError(f"{run_dirs[0]}: distillation trains a relay (ril) policy; that run finetuned '{base.agent}'")
  windows = {}
  for level in ("low", "high"):
    source = base.levels[level].source
    lineage = relabeled.read_lineage(source).get("config", {}) if source else {}
    windows[level] = (lineage.get("window", base.replan_every), lineage.get("window_high"))
  os.makedirs(out_dir, exist_ok=True)
  data = rlds_io.write_episodes(merged_episodes(play_dir, successes), "distill", os.path.join(out_dir, "data"),
                                overwrite=True, progress=config.progress, source=play_dir)
  relabeled_dirs = {}
  for level, (window, window_high) in windows.items():
    cfg = relabeled.RelabelConfig(level, window=window, goals_per_step=config.goals_per_step, seed=config.seed,
                                  **({"window_high": window_high or 10 * window} if level == "high" else {}))
    relabeled_dirs[level] = os.path.join(out_dir, f"relabeled_{level}")
    relabel_pipeline.run_relabel(data, relabeled_dirs[level], cfg, overwrite=True, show_progress=config.progress)
  model_dir = os.path.join(out_dir, "model")
  gc_config = base.levels["low"].config
  train.train_agent("ril", relabeled_dirs, model_dir,
                    train.TrainConfig(steps=config.train_steps, seed=config.seed, progress=config.progress),
                    dataclasses.replace(gc_config, target="action"), replan_every=base.replan_every)
  return {"successes": per_run, "episodes_added": len(successes), "model": model_dir, "data": data}
