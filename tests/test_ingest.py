"""relay ingest: D4RL hdf5, Minari and npz files written here in those exact formats."""
import os

import h5py
import numpy as np
import pytest

from relay_data import converters, kitchen, rlds_io
from relay_data.errors import DataError


def _d4rl_file(path, lengths=(5, 7, 4), obs_dim=60, timeouts=False):
  rng = np.random.default_rng(0)
  n = sum(lengths)
  obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
  actions = rng.uniform(-1, 1, size=(n, 9)).astype(np.float32)
  rewards = rng.integers(0, 4, size=n).astype(np.float32)
  terminals = np.zeros(n, bool)
  terminals[np.cumsum(lengths) - 1] = True
  with h5py.File(path, "w") as f:
    f["observations"], f["actions"], f["rewards"] = obs, actions, rewards
    f["terminals"] = terminals
    f.create_group("infos")
    if timeouts:
      f["timeouts"] = np.zeros(n, bool)
  return obs, actions, rewards, lengths


def test_d4rl_round_trip_is_exact(tmp_path):
  obs, actions, rewards, lengths = _d4rl_file(tmp_path / "kitchen.hdf5")
  out = converters.ingest("d4rl-hdf5", str(tmp_path / "kitchen.hdf5"), "d4rl", str(tmp_path / "data"),
                          progress=False)
  eps = list(rlds_io.iter_episodes(out))
  assert [len(e["observation"]) for e in eps] == list(lengths)
  starts = np.r_[0, np.cumsum(lengths)[:-1]]
  for ep, start, n in zip(eps, starts, lengths):
    np.testing.assert_array_equal(ep["observation"], obs[start:start + n, :30])  # qpos + object qpos
    np.testing.assert_array_equal(ep["goal_state"], obs[start:start + n, :30])
    np.testing.assert_array_equal(ep["action"], actions[start:start + n])
    np.testing.assert_array_equal(ep["reward"], rewards[start:start + n])
    assert ep["is_terminal"][-1] and not ep["is_terminal"][:-1].any()
    np.testing.assert_array_equal(ep["completed_tasks"], kitchen.completion_mask(obs[start:start + n, :30]))
  meta = rlds_io.read_metadata(out)
  assert meta["format"] == "d4rl-hdf5" and meta["env_settings"] == {"env_id": "FrankaKitchen-v1",
                                                                     "robot_noise_ratio": 0.01,
                                                                     "object_noise_ratio": 0.0005}
  assert meta["spec"]["observation"] == {"env": "kitchen", "layout": "d4rl", "dim": 30}


def test_environment_is_declared_not_guessed(tmp_path):
  """A 59-d file is the kitchen's own observation only when the kitchen is declared; with
  --env none it keeps its observation as the goal and records no completion test."""
  rng = np.random.default_rng(3)
  np.savez(tmp_path / "e.npz", observations=rng.normal(size=(6, 59)), actions=rng.normal(size=(6, 9)))
  kitchen_dir = converters.ingest("npz", str(tmp_path / "e.npz"), "k", str(tmp_path / "data"), progress=False)
  other_dir = converters.ingest("npz", str(tmp_path / "e.npz"), "o", str(tmp_path / "data"), progress=False,
                                env="none")
  k_ep, o_ep = next(rlds_io.iter_episodes(kitchen_dir)), next(rlds_io.iter_episodes(other_dir))
  assert k_ep["goal_state"].shape == (6, 30) and "completed_tasks" in k_ep
  assert o_ep["goal_state"].shape == (6, 59) and "completed_tasks" not in o_ep
  assert rlds_io.read_metadata(other_dir)["spec"] == {
      "observation": {"env": "none", "layout": "custom", "dim": 59}, "goal_space": {"name": "custom", "dim": 59}}
  np.savez(tmp_path / "w.npz", observations=rng.normal(size=(6, 12)), actions=rng.normal(size=(6, 2)))
  with pytest.raises(DataError, match="observations are 12-d; the kitchen's are 59-d .*--env none"):
    converters.ingest("npz", str(tmp_path / "w.npz"), "w", str(tmp_path / "data"), progress=False)
  assert _leaves_nothing(str(tmp_path / "data"), "w")


def _minari_file(path, lengths=(4, 6)):
  rng = np.random.default_rng(1)
  episodes = []
  with h5py.File(path, "w") as f:
    for i, t in enumerate(lengths):
      g = f.create_group(f"episode_{i}")
      obs = g.create_group("observations")
      o = rng.normal(size=(t + 1, 59)).astype(np.float64)
      obs["observation"] = o
      obs.create_group("achieved_goal")["microwave"] = rng.normal(size=(t + 1, 1))
      a = rng.uniform(-1, 1, size=(t, 9))
      r = rng.normal(size=t)
      g["actions"], g["rewards"] = a, r
      g["terminations"] = np.r_[np.zeros(t - 1, bool), True]
      g["truncations"] = np.zeros(t, bool)
      g.create_group("infos")
      episodes.append((o, a, r))
  return episodes


def test_minari_round_trip_is_exact(tmp_path):
  (tmp_path / "ds" / "data").mkdir(parents=True)
  episodes = _minari_file(tmp_path / "ds" / "data" / "main_data.hdf5")
  out = converters.ingest("minari", str(tmp_path / "ds"), "minari", str(tmp_path / "data"), progress=False)
  eps = list(rlds_io.iter_episodes(out))
  assert len(eps) == 2
  for ep, (o, a, r) in zip(eps, episodes):
    np.testing.assert_array_equal(ep["observation"], o.astype(np.float32))
    np.testing.assert_array_equal(ep["goal_state"], kitchen.goal_state_from_observation(o))
    np.testing.assert_array_equal(ep["action"][:-1], a.astype(np.float32))
    np.testing.assert_array_equal(ep["action"][-1], 0.0)
    # RLDS alignment: reward t is the result of action t; the last step (no action) has reward 0.
    np.testing.assert_array_equal(ep["reward"][:-1], r.astype(np.float32))
    assert ep["reward"][-1] == 0.0
    assert ep["is_terminal"][-1]
  spec = rlds_io.read_metadata(out)["spec"]
  assert spec["observation"] == {"env": "kitchen", "layout": "franka-kitchen-v1", "dim": 59}
  assert spec["goal_space"] == {"name": "kitchen-qpos", "dim": 30}


def test_ingested_steps_read_with_plain_rlds_pair_reward_with_its_action(tmp_path):
  """RLDS alignment: step t holds observation t, action t and the reward action t earned; the last
  step (the final observation) has no action and reward 0. Read with tfds + rlds, not relay."""
  import rlds
  import tensorflow_datasets as tfds
  (tmp_path / "ds" / "data").mkdir(parents=True)
  episodes = _minari_file(tmp_path / "ds" / "data" / "main_data.hdf5")
  out = converters.ingest("minari", str(tmp_path / "ds"), "minari", str(tmp_path / "data"), progress=False)
  for episode, (o, a, r) in zip(tfds.builder_from_directory(out).as_dataset(split="train"), episodes):
    steps = list(episode[rlds.STEPS].as_numpy_iterator())
    assert len(steps) == len(a) + 1 and steps[0][rlds.IS_FIRST] and steps[-1][rlds.IS_LAST]
    for t, step in enumerate(steps[:-1]):
      np.testing.assert_allclose(step[rlds.OBSERVATION]["state"], o[t], rtol=1e-6)
      np.testing.assert_allclose(step[rlds.ACTION], a[t], rtol=1e-6)
      assert step[rlds.REWARD] == np.float32(r[t]) and not step[rlds.IS_LAST]
    assert steps[-1][rlds.REWARD] == 0.0 and steps[-1][rlds.IS_TERMINAL]
    np.testing.assert_allclose(steps[-1][rlds.OBSERVATION]["state"], o[-1], rtol=1e-6)


def test_npz_directory_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  src = tmp_path / "npz"
  src.mkdir()
  saved = []
  for i, n in enumerate((3, 8)):
    o, a, g = rng.normal(size=(n, 4)), rng.normal(size=(n - 1, 2)), rng.normal(size=(n, 3))
    np.savez(src / f"ep{i}.npz", observations=o, actions=a, goal_states=g, terminal=np.bool_(i == 1))
    saved.append((o, a, g))
  out = converters.ingest("npz", str(src), "npz_demos", str(tmp_path / "data"), progress=False, env="none")
  eps = list(rlds_io.iter_episodes(out))
  for ep, (o, a, g) in zip(eps, saved):
    np.testing.assert_array_equal(ep["observation"], o.astype(np.float32))
    np.testing.assert_array_equal(ep["goal_state"], g.astype(np.float32))
    np.testing.assert_array_equal(ep["action"][:-1], a.astype(np.float32))
  assert [e["episode_id"] for e in eps] == ["ep0", "ep1"]
  assert [bool(e["is_terminal"][-1]) for e in eps] == [False, True]


def _leaves_nothing(data_dir, name):
  return not os.path.exists(os.path.join(data_dir, name)) and not [
      e for e in (os.listdir(data_dir) if os.path.exists(data_dir) else []) if e.startswith(f".{name}")]


@pytest.mark.parametrize("make_bad,match", [
    (lambda p: h5py.File(p, "w").close(), "field 'observations': missing"),
    (lambda p: p.write_bytes(b"\x89HDF\r\n" + b"\0" * 100), "cannot be read as HDF5"),
])
def test_d4rl_bad_files(tmp_path, make_bad, match):
  path = tmp_path / "bad.hdf5"
  make_bad(path)
  data_dir = str(tmp_path / "data")
  with pytest.raises(DataError, match=match):
    converters.ingest("d4rl-hdf5", str(path), "bad", data_dir, progress=False)
  assert _leaves_nothing(data_dir, "bad")


def test_truncated_hdf5_is_reported(tmp_path):
  path = tmp_path / "full.hdf5"
  _d4rl_file(path)
  data = path.read_bytes()
  cut = tmp_path / "cut.hdf5"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match=f"file {cut}"):
    converters.ingest("d4rl-hdf5", str(cut), "cut", str(tmp_path / "data"), progress=False)
  assert _leaves_nothing(str(tmp_path / "data"), "cut")


def test_nan_in_a_later_episode_names_it_and_leaves_nothing(tmp_path):
  path = tmp_path / "nan.hdf5"
  obs, *_ = _d4rl_file(path, lengths=(5, 7, 4))
  with h5py.File(path, "r+") as f:
    o = f["observations"][()]
    o[5 + 3, 2] = np.nan  # episode 1, step 3
    f["observations"][...] = o
  data_dir = str(tmp_path / "data")
  with pytest.raises(DataError) as err:
    converters.ingest("d4rl-hdf5", str(path), "nan", data_dir, progress=False)
  assert "nan.hdf5:1" in str(err.value) and "'observation'" in str(err.value) and "step 3" in str(err.value)
  assert _leaves_nothing(data_dir, "nan")


def test_shape_and_length_errors(tmp_path):
  bad = tmp_path / "len.hdf5"
  with h5py.File(bad, "w") as f:
    f["observations"] = np.zeros((5, 60), np.float32)
    f["actions"] = np.zeros((4, 9), np.float32)
    f["terminals"] = np.zeros(5, bool)
  with pytest.raises(DataError, match="field 'actions': has 4 rows but observations has 5"):
    list(converters.read_d4rl_hdf5(str(bad)))
  npz = tmp_path / "one.npz"
  np.savez(npz, observations=np.zeros((1, 3)), actions=np.zeros((1, 2)))
  with pytest.raises(DataError, match="episode 0: .*at least 2 are needed|at least 2 are needed"):
    converters.ingest("npz", str(npz), "short", str(tmp_path / "data"), progress=False, env="none")
  np.savez(npz, observations=np.zeros((4, 3)))
  with pytest.raises(DataError, match="field 'actions': missing"):
    list(converters.read_npz(str(npz)))
  trunc = tmp_path / "trunc.npz"
  np.savez(tmp_path / "full.npz", observations=np.zeros((40, 3)), actions=np.zeros((40, 2)))
  trunc.write_bytes((tmp_path / "full.npz").read_bytes()[:300])
  with pytest.raises(DataError, match="cannot be read as .npz"):
    list(converters.read_npz(str(trunc)))
  with pytest.raises(DataError, match="Minari stores T\\+1 observations"):
    with h5py.File(tmp_path / "m.hdf5", "w") as f:
      g = f.create_group("episode_0")
      g["observations"], g["actions"] = np.zeros((3, 4)), np.zeros((3, 2))
    list(converters.read_minari(str(tmp_path / "m.hdf5")))


def test_cli_ingest_and_bad_flags(tmp_path, cli):
  _d4rl_file(tmp_path / "k.hdf5")
  proc = cli("ingest", "--format", "d4rl-hdf5", str(tmp_path / "k.hdf5"), "--name", "k", "--data-dir",
             str(tmp_path / "data"), check=True)
  assert "ingested 3 episodes" in proc.stdout
  proc = cli("ingest", "--format", "d4rl-hdf5", str(tmp_path / "k.hdf5"), "--name", "k", "--data-dir",
             str(tmp_path / "data"))
  assert proc.returncode == 2 and "already exists" in proc.stderr
  proc = cli("ingest", "--format", "csv", "x", "--name", "k", "--data-dir", str(tmp_path))
  assert proc.returncode == 2 and "invalid choice: 'csv'" in proc.stderr
  proc = cli("ingest", "--format", "npz", str(tmp_path / "missing"), "--name", "m", "--data-dir", str(tmp_path))
  assert proc.returncode == 1 and "missing: no such file" in proc.stderr
  proc = cli("data", "info", str(tmp_path / "data" / "k"), check=True)
  assert "3 episodes, 16 steps" in proc.stdout and (tmp_path / "data" / "k_info.png").exists()
