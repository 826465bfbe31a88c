"""Readers of other people's demonstration files, yielding relay episodes (see `schema`).

Formats (no downloads; these only read local files):
  d4rl-hdf5  flat arrays `observations [N, d]`, `actions [N, a]`, `terminals [N]` (and `timeouts`,
             `rewards` when present), split into episodes after each terminal/timeout step. D4RL
             kitchen observations are 60-d (robot qpos 9 + object qpos 21 + task goal 30): in the
             kitchen the appended task goal is dropped, leaving the 30-d `d4rl` layout.
  minari     `main_data.hdf5` (or its directory) with one group `episode_<id>` per episode:
             `observations` (T+1 rows; a dataset, or a group of dict entries of which `observation`
             is used), `actions` (T), `rewards`, `terminations`, `truncations`.
  npz        one `.npz` per episode (a file, or a directory of them, in name order) with
             `observations [L, d]`, `actions [L or L-1, a]`, optional `rewards [L or L-1]`,
             `goal_states`, `terminal` (scalar).

The environment is declared (`env`, default "kitchen"; see `relay_data.goal_space`), not guessed:
in the kitchen the observation width names the layout (59: FrankaKitchen-v1's own observation,
30: D4RL robot + object positions), the goal is the 30-d kitchen goal-space state and every step
gets the env's completion mask; `env="none"` keeps observations as they are, takes the goal from
the file (npz `goal_states`) or the observation, and records no completion test. The dataset's
metadata records the resulting spec (`spec`) and the environment settings (`env_settings`:
unknown for other people's files, so gymnasium's defaults).

Step alignment (RLDS): a step's `reward` is the result of that step's `action`, and the last
step (the final observation, no action) has reward 0 and a zero action. D4RL and Minari files
already pair rewards[t] with actions[t], so both keep their rewards on the step of the action
(Minari's T+1 observations give the extra last step); npz rewards are read the same way
(rewards[t] follows actions[t]; L-1 rewards get a 0 appended for the last step).
Every reader raises DataError naming the file, the episode and the field at fault.
"""
import os
import zipfile
from typing import Callable, Dict, Iterator

import numpy as np

from relay_data import goal_space, kitchen
from relay_data.errors import DataError

D4RL_KITCHEN_OBS_DIM = 60


def _open_hdf5(path: str):
  import h5py  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise DataError("no such file", path=path)
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise DataError(f"cannot be read as HDF5 (truncated or not HDF5): {e}", path=path) from e


def _dataset(group, key: str, path: str, episode=None) -> np.ndarray:
  if key not in group:
    raise DataError("missing", path=path, episode=episode, field=key)
  try:
    return np.asarray(group[key][()])
  except (OSError, KeyError, TypeError) as e:
    raise DataError(f"cannot be read (truncated file?): {e}", path=path, episode=episode, field=key) from e


def read_d4rl_hdf5(path: str) -> Iterator[Dict]:
  with _open_hdf5(path) as f:
    obs = _dataset(f, "observations", path)
    actions = _dataset(f, "actions", path)
    terminals = _dataset(f, "terminals", path).astype(bool)
    timeouts = _dataset(f, "timeouts", path).astype(bool) if "timeouts" in f else np.zeros_like(terminals)
    rewards = _dataset(f, "rewards", path).astype(np.float32) if "rewards" in f else None
  if obs.ndim != 2:
    raise DataError(f"expected rank 2 [N, dim], got shape {obs.shape}", path=path, field="observations")
  n = obs.shape[0]
  for key, arr in (("actions", actions), ("terminals", terminals), ("timeouts", timeouts)) + \
      ((("rewards", rewards),) if rewards is not None else ()):
    if arr.shape[0] != n:
      raise DataError(f"has {arr.shape[0]} rows but observations has {n}", path=path, field=key)
  if n == 0:
    raise DataError("no steps", path=path, field="observations")
  ends = np.flatnonzero(terminals | timeouts)
  if not len(ends) or ends[-1] != n - 1:
    ends = np.append(ends, n - 1)  # Trailing steps form a last (truncated) episode.
  start = 0
  for i, end in enumerate(ends):
    sl = slice(start, end + 1)
    ep = {"observation": obs[sl], "action": actions[sl],
          "is_terminal": np.r_[np.zeros(end - start, bool), terminals[end]],
          "episode_id": f"{os.path.basename(path)}:{i}"}
    if rewards is not None:
      ep["reward"] = rewards[sl]
    yield ep
    start = end + 1


def read_minari(path: str) -> Iterator[Dict]:
  if os.path.isdir(path):
    path = os.path.join(path, "data", "main_data.hdf5") if os.path.isdir(os.path.join(path, "data")) \
        else os.path.join(path, "main_data.hdf5")
  with _open_hdf5(path) as f:
    bad = [k for k in f.keys() if k.startswith("episode_") and not k[len("episode_"):].isdigit()]
    if bad:
      raise DataError(f"group {bad[0]!r} is not named episode_<integer id>", path=path, episode=bad[0])
    names = sorted((k for k in f.keys() if k.startswith("episode_")), key=lambda k: int(k.split("_")[-1]))
    if not names:
      raise DataError("no 'episode_<id>' groups", path=path)
    for name in names:
      group = f[name]
      if "observations" not in group:
        raise DataError("missing", path=path, episode=name, field="observations")
      obs_node = group["observations"]
      if hasattr(obs_node, "keys"):  # dict observation space
        obs = _dataset(obs_node, "observation", path, name)
      else:
        obs = _dataset(group, "observations", path, name)
      actions = _dataset(group, "actions", path, name)
      if obs.ndim != 2 or actions.ndim != 2:
        raise DataError(f"expected rank-2 observations/actions, got {obs.shape} / {actions.shape}",
                        path=path, episode=name, field="observations" if obs.ndim != 2 else "actions")
      if obs.shape[0] != actions.shape[0] + 1:
        raise DataError(f"Minari stores T+1 observations for T actions; got {obs.shape[0]} and "
                        f"{actions.shape[0]}", path=path, episode=name, field="observations")
      t = actions.shape[0]
      terminations = _dataset(group, "terminations", path, name).astype(bool)
      rewards = _dataset(group, "rewards", path, name).astype(np.float32)
      for key, arr in (("terminations", terminations), ("rewards", rewards)):
        if arr.shape[0] != t:
          raise DataError(f"has {arr.shape[0]} rows, actions has {t}", path=path, episode=name, field=key)
      yield {"observation": obs,
             "action": np.concatenate([actions, np.zeros((1, actions.shape[1]), actions.dtype)]),
             "reward": np.r_[rewards, np.float32(0.0)],  # rewards[t] follows actions[t] (RLDS)
             "is_terminal": np.r_[np.zeros(t, bool), terminations[-1] if t else False],
             "episode_id": name}


def read_npz(path: str) -> Iterator[Dict]:
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npz"))
    if not files:
      raise DataError("no .npz files", path=path)
  elif os.path.exists(path):
    files = [path]
  else:
    raise DataError("no such file", path=path)
  for file in files:
    try:
      with np.load(file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
      raise DataError(f"cannot be read as .npz: {_what_file(file)}", path=file) from e
    episode = os.path.splitext(os.path.basename(file))[0]
    for key in ("observations", "actions"):
      if key not in arrays:
        raise DataError("missing", path=file, episode=episode, field=key)
    obs, actions = arrays["observations"], arrays["actions"]
    if actions.ndim == 2 and obs.ndim == 2 and actions.shape[0] == obs.shape[0] - 1:
      actions = np.concatenate([actions, np.zeros((1, actions.shape[1]), actions.dtype)])
    ep = {"observation": obs, "action": actions, "episode_id": episode}
    if "goal_states" in arrays:
      ep["goal_state"] = arrays["goal_states"]
    if "rewards" in arrays:
      rewards = arrays["rewards"]
      ep["reward"] = np.r_[rewards, 0.0] if rewards.ndim == 1 and len(rewards) == len(obs) - 1 else rewards
    if "terminal" in arrays:
      if np.ndim(arrays["terminal"]) != 0:
        raise DataError(f"must be a scalar (1 if the episode ended in a terminal state), got shape "
                        f"{np.shape(arrays['terminal'])}", path=file, episode=episode, field="terminal")
      ep["is_terminal"] = np.r_[np.zeros(len(obs) - 1, bool), bool(arrays["terminal"])]
    yield ep


def _what_file(path: str) -> str:
  """What a file that failed to parse actually is, by its first bytes (for the error message)."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as e:
    return e.strerror or str(e)
  if head.startswith(b"\x89HDF\r\n\x1a\n"):
    return "it is an HDF5 file (use --format d4rl-hdf5 or --format minari)"
  if head.startswith(b"PK"):
    return "a zip archive that is truncated or damaged"
  if head.startswith(b"\x93NUMPY"):
    return "it is a single .npy array, not an .npz archive of named arrays"
  return "not a numpy .npz archive" if head else "the file is empty"


READERS: Dict[str, Callable[[str], Iterator[Dict]]] = {
    "d4rl-hdf5": read_d4rl_hdf5,
    "minari": read_minari,
    "npz": read_npz,
}


def read(fmt: str, path: str) -> Iterator[Dict]:
  if fmt not in READERS:
    raise DataError(f"unknown format {fmt!r}; known: {', '.join(READERS)}", path=path)
  return READERS[fmt](path)


def apply_env(episode: Dict, spec: "goal_space.DataSpec", path: str) -> Dict:
  """Puts a raw episode in `spec`'s form: kitchen layout, goal-space states, completion mask."""
  ep = dict(episode)
  obs = np.asarray(ep["observation"])
  if spec.env == "kitchen":
    if obs.ndim == 2 and obs.shape[1] == D4RL_KITCHEN_OBS_DIM:
      obs = obs[:, :kitchen.GOAL_DIM]  # D4RL appends the 30-d task goal: not part of the state
    if obs.ndim == 2 and obs.shape[1] != spec.observation.dim:
      raise DataError(f"is {obs.shape[1]}-d, earlier episodes are {spec.observation.dim}-d", path=path,
                      episode=ep.get("episode_id"), field="observation")
    ep["observation"] = obs
    if "goal_state" not in ep and obs.ndim == 2:
      ep["goal_state"] = spec.goal_state(obs)
    goal = np.asarray(ep.get("goal_state"))
    if goal.ndim == 2 and goal.shape[1] != spec.goal_space.dim:
      raise DataError(f"is {goal.shape[1]}-d; the kitchen goal space is {spec.goal_space.dim}-d", path=path,
                      episode=ep.get("episode_id"), field="goal_states")
    if goal.ndim == 2 and np.all(np.isfinite(goal)):
      ep["completed_tasks"] = spec.goal_space.completion_mask(goal)
  else:
    ep.setdefault("goal_state", obs)
    ep["completed_tasks"] = None  # no completion test outside the kitchen
  return ep


def spec_of_first(fmt: str, env: str, episode: Dict, path: str) -> "goal_space.DataSpec":
  """The dataset's spec, from the declared env and the first episode's widths."""
  if env not in goal_space.ENVS:
    raise DataError(f"unknown environment {env!r}; known: {', '.join(goal_space.ENVS)}", path=path)
  obs = np.asarray(episode["observation"])
  if obs.ndim != 2:
    raise DataError(f"expected rank 2 [steps, dim], got shape {obs.shape}", path=path,
                    episode=episode.get("episode_id"), field="observation")
  width = obs.shape[1]
  if env == "kitchen":
    if fmt == "d4rl-hdf5" and width == D4RL_KITCHEN_OBS_DIM:
      width = kitchen.GOAL_DIM
    return goal_space.kitchen_spec(width, path)
  goal = np.asarray(episode.get("goal_state", obs))
  return goal_space.custom_spec(width, goal.shape[1] if goal.ndim == 2 else width)


def ingest(fmt: str, path: str, name: str, data_dir: str, overwrite: bool = False,
           progress: bool = True, env: str = "kitchen") -> str:
  """Converts `path` into an RLDS dataset `data_dir/name/1.0.0` of environment `env`; returns its directory."""
  import itertools  # pylint: disable=import-outside-toplevel
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  episodes = read(fmt, path)
  try:
    first = next(episodes)
  except StopIteration:
    raise DataError("no episodes", path=path) from None
  spec = spec_of_first(fmt, env, first, path)
  from relay_data.kitchen import GYMNASIUM_DEFAULTS  # pylint: disable=import-outside-toplevel
  # Ingested files rarely say how their environment was configured: gymnasium's defaults are
  # the declared assumption (evaluation rebuilds that environment).
  metadata = {"format": fmt, "source": os.path.abspath(path), goal_space.METADATA_KEY: spec.to_dict(),
              "env_settings": GYMNASIUM_DEFAULTS.to_dict() if env == "kitchen" else None,
              "step_alignment": "rlds: reward[t] follows action[t]"}
  converted = (apply_env(ep, spec, path) for ep in itertools.chain([first], episodes))
  return rlds_io.write_episodes(converted, name=name, data_dir=data_dir, overwrite=overwrite,
                                progress=progress, source=path, metadata=metadata,
                                description=f"relay RLDS episodes ingested from {fmt} ({path}), {spec.describe()}")
