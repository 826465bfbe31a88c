"""Distillation: per-goal finetuned policies -> one relay policy for every goal (the paper's last step).

1. Roll out each finetuned run's model (`relay finetune --out RUN`: RUN/model and RUN/run.json
   name the model and the goal), sampling as in finetuning (its exploration, its `--replan`), and
   keep the successful episodes (every element of the goal done by the environment's completion
   test), or, with
   `min_elements`, those that did at least that many of the goal's elements: relay relabeling
   makes any trajectory goal-conditioned data (its own reached states are the goals), as IRIL
   does with on-policy data, so a partial rollout is still a demonstration of what it reached.
   When no rollout qualifies, nothing is written: the result would be the play data's RIL again.
2. Write the play episodes and those successes as one RLDS dataset (observation, goal-space
   state, action: the fields relabeling reads), the successes' observations mapped to the play
   data's layout and the dataset recording the play data's spec and environment settings.
3. Relabel it with the same relay functions and windows (W_l, W_h from the model's record) the
   original model was trained with (`pipelines.relabel`, low and high levels), and train one RIL
   agent on it (`train.train_agent`).
The play data must fit the models (`models.check_goal_source`: goal space and environment settings).
Evaluate the result on all goals with `relay eval --model OUT/model`.
"""
import collections
import dataclasses
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from relay_agents import models
from relay_agents.finetune import acting, env as env_lib, policy_io
from relay_data import goal_space, kitchen, relabeled, rlds_io
from relay_data.errors import RelayError


class NothingToDistill(RelayError):
  """No rollout of any finetuned run qualified: a failed operation a user can cause (exit 1)."""


def _run_record(run_dir: str) -> Dict:
  try:
    with open(os.path.join(run_dir, "run.json")) as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise ValueError(f"{run_dir}: not a finetune run directory (no run.json; `relay finetune --out` "
                     "makes one)") from e


def run_model(run_dir: str, record: Optional[Dict] = None) -> policy_io.Model:
  """RUN/model as the run's actors acted with it: its exploration settings, re-plan cadence and
  actions executed per chunk."""
  config = (record or _run_record(run_dir))["config"]
  return policy_io.load_model(os.path.join(run_dir, "model"), config.get("explore_std", 1.0),
                              config.get("explore_temperature", 1.0), config.get("replan"),
                              config.get("execute_steps"))


def run_rollouts(run_dir: str, rollouts: int, seed: int = 0, progress: bool = False) -> List[Dict]:
  """`rollouts` sampled episodes of RUN/model toward RUN's goal, each as {"observation" [L, 59]
  (the env's own), "action" [L, 9] (what was executed; the last row zero, as RLDS has no action
  there), "elements_done": how many of the goal's elements the environment's test saw done}."""
  record = _run_record(run_dir)
  model = run_model(run_dir, record)
  elements = record["run"]["elements"]
  environment = env_lib.GoalKitchenEnv(elements, np.asarray(record["goal_state"], np.float32),
                                       record["config"]["max_episode_steps"], seed=seed, settings=model.env_settings)
  actor = acting.fixed_actor(model, seed)
  out = []
  for i in tqdm(range(rollouts), desc=f"rollouts {os.path.basename(os.path.normpath(run_dir))}", unit="ep",
                disable=not progress):
    result = acting.run_episode(environment, actor, i, seed, record=True)
    act = np.clip(result["actions"], -1.0, 1.0)  # what the environment executed
    out.append({"observation": result["observations"].astype(np.float32),
                "action": np.concatenate([act, np.zeros((1, act.shape[1]), np.float32)]),
                "elements_done": len(set(result["completed"]) & set(elements))})
  return out


def _as_episode(observation, goal_state, action, episode_id: str) -> Dict:
  return {"observation": np.asarray(observation, np.float32), "goal_state": np.asarray(goal_state, np.float32),
          "action": np.asarray(action, np.float32), "episode_id": episode_id}


def merged_episodes(play_dir: str, successes: Sequence[Dict]) -> Iterator[Dict]:
  """The play episodes as they are, then the successes (env observations) in the play data's layout."""
  layout = goal_space.of_episode_dataset(play_dir).observation
  for i, ep in enumerate(rlds_io.iter_episodes(play_dir)):
    yield _as_episode(ep["observation"], ep["goal_state"], ep["action"], f"play{i}")
  for i, ep in enumerate(successes):
    yield _as_episode(layout.from_env(ep["observation"]), kitchen.goal_state_from_observation(ep["observation"]),
                      ep["action"], f"finetuned{i}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  rollouts: int = 20           # per finetuned run
  min_elements: Optional[int] = None  # keep rollouts doing >= this many goal elements; None: all (success)
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
  records = {run_dir: _run_record(run_dir) for run_dir in run_dirs}  # first: is each a run at all?
  base = policy_io.load_model(os.path.join(run_dirs[0], "model"))
  if not base.hierarchical:
    raise ValueError(f"{run_dirs[0]}: distillation trains a relay (ril) policy; that run finetuned '{base.agent}'")
  need = {}  # run -> goal elements a kept rollout must have done
  for run_dir in run_dirs:  # before any rollout: every model must fit the play data
    model = base if run_dir == run_dirs[0] else policy_io.load_model(os.path.join(run_dir, "model"))
    models.check_goal_source(model.record, model.path, play_dir)
    goal_size = len(records[run_dir]["run"]["elements"])
    if config.min_elements is not None and not 0 <= config.min_elements <= goal_size:
      raise ValueError(f"min_elements must be in 0..{goal_size} (the goal of {run_dir} has {goal_size} "
                       f"elements), got {config.min_elements}")
    need[run_dir] = goal_size if config.min_elements is None else config.min_elements
  successes, per_run, done_counts = [], {}, collections.Counter()
  for run_dir in run_dirs:
    rollouts = run_rollouts(run_dir, config.rollouts, config.seed, config.progress)
    done_counts.update(r["elements_done"] for r in rollouts)
    kept = [r for r in rollouts if r["elements_done"] >= need[run_dir]]
    per_run[run_dir] = len(kept)
    successes += kept
  if not successes:
    wanted = "succeeded" if config.min_elements is None else f"did >= {config.min_elements} of its goal's elements"
    seen = ", ".join(f"{n}: {done_counts[n]}" for n in sorted(done_counts))
    raise NothingToDistill(f"no rollout of {', '.join(run_dirs)} {wanted} in {config.rollouts} rollouts each "
                           f"(rollouts by goal elements done: {seen}): nothing to distill (the result would "
                           "be the play data's RIL again); finetune longer or keep partial rollouts with "
                           "--min-elements N")
  window, window_high = base.window, base.record.window_high or 10 * base.window
  os.makedirs(out_dir, exist_ok=True)
  data = rlds_io.write_episodes(merged_episodes(play_dir, successes), "distill", os.path.join(out_dir, "data"),
                                metadata={"source": os.path.abspath(play_dir),
                                          **goal_space.provenance_of_episode_dataset(play_dir)},
                                overwrite=True, progress=config.progress, source=play_dir)
  gc_config = base.levels["low"].config
  relabeled_dirs = {}
  for level in ("low", "high"):
    # The low level's examples carry the chunk the model predicts (its relabeled data did).
    extra = {"window_high": window_high} if level == "high" else {"action_chunk": gc_config.action_chunk}
    cfg = relabeled.RelabelConfig(level, window=window, goals_per_step=config.goals_per_step, seed=config.seed,
                                  **extra)
    relabeled_dirs[level] = os.path.join(out_dir, f"relabeled_{level}")
    relabel_pipeline.run_relabel(data, relabeled_dirs[level], cfg, overwrite=True, show_progress=config.progress)
  model_dir = os.path.join(out_dir, "model")
  # One config trains both levels (train.py sets each level's own overrides); the high level
  # keeps the base model's goal input (its goal as elements or as the state).
  high_goal = base.levels["high"].config.goal_elements
  train.train_agent("ril", relabeled_dirs, model_dir,
                    train.TrainConfig(steps=config.train_steps, seed=config.seed, progress=config.progress),
                    dataclasses.replace(gc_config, target="action", goal_elements=high_goal))
  return {"successes": per_run, "episodes_added": len(successes), "model": model_dir, "data": data}
