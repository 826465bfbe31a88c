"""The RLDS episode schema of relay, and validation of in-memory episodes against it.

An in-memory episode is a dict of numpy arrays with one row per RLDS step (L = T+1 rows; the
action of the last row is not used):

  observation [L, d_s] float   policy input (59-d env observation for our kitchen play data)
  goal_state  [L, d_g] float   goal-space state (kitchen: robot qpos 9 + object qpos 21 = 30)
  action      [L, d_a] float   the demonstrator's intended action (the label policies imitate)
  executed_action [L, d_a] float  what was sent to the env, when it differs (perturbed play) (optional)
  policy_driven [L] bool        the executed action came from a trained policy, not the expert
                                (DAgger play); relabeling takes no goal from such steps (optional)
  reward      [L] float, discount [L] float, is_terminal [L] bool      (optional, defaulted)
  completed_tasks [L, 7] bool  per-step kitchen completion mask         (optional, derived; None = none)
  episode_id (str), subtask_order (str, comma-separated), seed (int)     (optional metadata)

On disk each episode is an RLDS record: `steps` (observation = {state, goal_state}, action,
reward, discount, is_first, is_last, is_terminal[, executed_action][, completed_tasks]
[, policy_driven]) and `episode_metadata`. `policy_driven` is stored as float32 [1] (1.0 = driven),
since the relabel pipeline's record reader parses float lists only. RLDS alignment: step t's reward is the result of step t's action.
"""
from typing import Any, Dict, Optional

import numpy as np

from relay_data import kitchen
from relay_data.errors import DataError

Episode = Dict[str, Any]
REQUIRED = ("observation", "action")
MIN_STEPS = 2  # One transition: a state, its action, and the state it led to.


def _float_array(value, name, path, episode_id) -> np.ndarray:
  arr = np.asarray(value)
  if arr.dtype.kind not in "fiub":
    raise DataError(f"dtype {arr.dtype} is not numeric", path=path, episode=episode_id, field=name)
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    bad = int(np.argwhere(~np.isfinite(arr))[0][0])
    raise DataError(f"contains NaN or inf (first at step {bad})", path=path, episode=episode_id,
                    field=name)
  return arr


def normalize_episode(raw: Episode, path: Optional[str] = None, episode_id: Any = None,
                      terminal: bool = False) -> Episode:
  """Validates `raw` and fills defaults; raises DataError naming file, episode and field.

  `terminal` says whether the episode ended in a terminal state (vs. truncation) when the raw
  data has no `is_terminal`.
  """
  episode_id = raw.get("episode_id", episode_id)
  for key in REQUIRED:
    if key not in raw:
      raise DataError("missing", path=path, episode=episode_id, field=key)
  ep: Episode = {}
  for key in ("observation", "goal_state", "action", "executed_action"):
    if key not in raw:
      continue
    arr = _float_array(raw[key], key, path, episode_id)
    if arr.ndim != 2:
      raise DataError(f"expected rank 2 [steps, dim], got shape {arr.shape}", path=path,
                      episode=episode_id, field=key)
    ep[key] = arr
  length = ep["observation"].shape[0]
  if length < MIN_STEPS:
    raise DataError(f"episode has {length} steps; at least {MIN_STEPS} are needed", path=path,
                    episode=episode_id, field="observation")
  if "goal_state" not in ep:
    ep["goal_state"] = (kitchen.goal_state_from_observation(ep["observation"])
                        if ep["observation"].shape[1] == kitchen.OBS_DIM else ep["observation"].copy())
  for key, default in (("reward", np.zeros(length, np.float32)),
                       ("discount", np.ones(length, np.float32))):
    arr = _float_array(raw.get(key, default), key, path, episode_id)
    ep[key] = arr
  if "is_terminal" in raw:
    ep["is_terminal"] = np.asarray(raw["is_terminal"]).astype(bool)
  else:
    ep["is_terminal"] = np.zeros(length, bool)
    ep["is_terminal"][-1] = terminal
  if "executed_action" in ep and ep["executed_action"].shape[1] != ep["action"].shape[1]:
    raise DataError(f"has width {ep['executed_action'].shape[1]} but action has {ep['action'].shape[1]}",
                    path=path, episode=episode_id, field="executed_action")
  for key in ("goal_state", "action", "executed_action", "reward", "discount", "is_terminal"):
    if key not in ep:
      continue
    if ep[key].shape[0] != length:
      raise DataError(f"has {ep[key].shape[0]} steps but observation has {length}", path=path,
                      episode=episode_id, field=key)
    if key in ("reward", "discount", "is_terminal") and ep[key].ndim != 1:
      raise DataError(f"expected rank 1 [steps], got shape {ep[key].shape}", path=path,
                      episode=episode_id, field=key)
  if raw.get("policy_driven") is not None:
    driven = np.asarray(raw["policy_driven"])
    if driven.shape not in ((length,), (length, 1)):
      raise DataError(f"expected [steps] flags for {length} steps, got shape {driven.shape}", path=path,
                      episode=episode_id, field="policy_driven")
    ep["policy_driven"] = driven.reshape(length).astype(bool)
  if raw.get("completed_tasks") is not None:
    ep["completed_tasks"] = np.asarray(raw["completed_tasks"]).astype(bool)
  elif "completed_tasks" not in raw and ep["goal_state"].shape[1] == kitchen.GOAL_DIM:  # None: no test
    ep["completed_tasks"] = kitchen.completion_mask(ep["goal_state"])
  ep["episode_id"] = str(episode_id if episode_id is not None else "")
  ep["subtask_order"] = str(raw.get("subtask_order", ""))
  ep["seed"] = int(raw.get("seed", -1))
  return ep


def features_for(ep: Episode):
  """TFDS features of an RLDS dataset whose episodes look like `ep` (normalized)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  steps = {
      "observation": tfds.features.FeaturesDict({
          "state": tfds.features.Tensor(shape=(ep["observation"].shape[1],), dtype=np.float32),
          "goal_state": tfds.features.Tensor(shape=(ep["goal_state"].shape[1],), dtype=np.float32),
      }),
      "action": tfds.features.Tensor(shape=(ep["action"].shape[1],), dtype=np.float32),
      "reward": tfds.features.Scalar(dtype=np.float32),
      "discount": tfds.features.Scalar(dtype=np.float32),
      "is_first": np.bool_,
      "is_last": np.bool_,
      "is_terminal": np.bool_,
  }
  if "executed_action" in ep:
    steps["executed_action"] = tfds.features.Tensor(shape=(ep["action"].shape[1],), dtype=np.float32)
  if "completed_tasks" in ep:
    steps["completed_tasks"] = tfds.features.Tensor(shape=(ep["completed_tasks"].shape[1],),
                                                    dtype=np.bool_)
  if "policy_driven" in ep:
    steps["policy_driven"] = tfds.features.Tensor(shape=(1,), dtype=np.float32)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset(steps),
      "episode_metadata": tfds.features.FeaturesDict({
          "episode_id": tfds.features.Text(),
          "subtask_order": tfds.features.Text(),
          "seed": np.int64,
      }),
  })


def to_rlds_record(ep: Episode) -> Dict[str, Any]:
  """Normalized episode -> the nested dict TFDS encodes (steps as a dict of stacked arrays)."""
  length = ep["observation"].shape[0]
  is_first = np.zeros(length, bool)
  is_first[0] = True
  is_last = np.zeros(length, bool)
  is_last[-1] = True
  steps = {
      "observation": {"state": ep["observation"], "goal_state": ep["goal_state"]},
      "action": ep["action"], "reward": ep["reward"], "discount": ep["discount"],
      "is_first": is_first, "is_last": is_last, "is_terminal": ep["is_terminal"],
  }
  if "executed_action" in ep:
    steps["executed_action"] = ep["executed_action"]
  if "completed_tasks" in ep:
    steps["completed_tasks"] = ep["completed_tasks"]
  if "policy_driven" in ep:
    steps["policy_driven"] = ep["policy_driven"].astype(np.float32)[:, None]
  return {"steps": steps, "episode_metadata": {
      "episode_id": ep["episode_id"], "subtask_order": ep["subtask_order"], "seed": ep["seed"]}}


def from_rlds_record(record: Dict[str, Any]) -> Episode:
  """Inverse of `to_rlds_record` on numpy data (steps already stacked)."""
  steps, meta = record["steps"], record["episode_metadata"]
  decode = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  ep = {
      "observation": np.asarray(steps["observation"]["state"]),
      "goal_state": np.asarray(steps["observation"]["goal_state"]),
      "action": np.asarray(steps["action"]), "reward": np.asarray(steps["reward"]),
      "discount": np.asarray(steps["discount"]), "is_terminal": np.asarray(steps["is_terminal"]),
      "episode_id": decode(meta["episode_id"]), "subtask_order": decode(meta["subtask_order"]),
      "seed": int(meta["seed"]),
  }
  if "executed_action" in steps:
    ep["executed_action"] = np.asarray(steps["executed_action"])
  if "completed_tasks" in steps:
    ep["completed_tasks"] = np.asarray(steps["completed_tasks"])
  if "policy_driven" in steps:
    ep["policy_driven"] = np.asarray(steps["policy_driven"]).reshape(-1) > 0.5
  return ep
