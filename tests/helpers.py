"""Small synthetic RLDS datasets for tests (real TFDS builds into temp dirs)."""
import numpy as np

from relay_data import kitchen, rlds_io, schema


def random_episodes(lengths, state_dim=6, goal_dim=3, action_dim=2, seed=0):
  rng = np.random.default_rng(seed)
  return [{"observation": rng.normal(size=(n, state_dim)).astype(np.float32),
           "goal_state": rng.normal(size=(n, goal_dim)).astype(np.float32),
           "action": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
           "episode_id": f"ep{i}"} for i, n in enumerate(lengths)]


def learnable_kitchen_episodes(n_eps=6, length=40, seed=0, scale=1.0, gain=1.0):
  """Kitchen-shaped episodes (59-d observations) whose action is a fixed function of the state,
  tanh(gain * observation[:9]), so goal-conditioned BC can learn them in a few steps."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n_eps):
    obs = rng.normal(size=(length, kitchen.OBS_DIM)).astype(np.float32) * np.float32(scale)
    out.append({"observation": obs, "action": np.tanh(obs[:, :9] * gain).astype(np.float32), "episode_id": f"e{i}"})
  return out


def write_toy(tmp_path, lengths=(5, 9, 20, 3, 12), name="toy", **kwargs):
  return rlds_io.write_episodes(random_episodes(lengths, **kwargs), name, str(tmp_path), progress=False)


def write_unvalidated(tmp_path, episodes, name="raw", corrupt=None, drop_step_field=None):
  """Writes episodes past relay's validation, to build deliberately bad sources.

  `corrupt(index, normalized_episode)` may edit an episode in place (e.g. insert a NaN);
  `drop_step_field` removes an observation field from the features and records.
  """
  eps = [schema.normalize_episode(e, episode_id=i) for i, e in enumerate(episodes)]
  for i, e in enumerate(eps):
    if corrupt:
      corrupt(i, e)
  features = schema.features_for(eps[0])
  records = [schema.to_rlds_record(e) for e in eps]
  if drop_step_field:
    import tensorflow_datasets as tfds
    steps = dict(features["steps"].feature.items())
    obs = dict(steps["observation"].items())
    obs.pop(drop_step_field)
    steps["observation"] = tfds.features.FeaturesDict(obs)
    features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps),
                                           "episode_metadata": features["episode_metadata"]})
    for r in records:
      r["steps"]["observation"].pop(drop_step_field)
  return rlds_io.write_rlds(records, features, name, str(tmp_path))


WINDOW = 5  # W_l of the tiny relay-IL model (episodes of the tiny play set are ~300 steps)


def train_tiny_ril(play_dir, root, seed=0, relabeled_from=None):
  """A relay-IL model trained in seconds on `play_dir` (relabeled with W_l = WINDOW) under `root`,
  from `seed`. `relabeled_from`: the root of an earlier call on the same play data, whose relabeled
  datasets are reused (another seed of the same data)."""
  from pipelines import relabel as relabel_pipeline  # pylint: disable=import-outside-toplevel
  from relay_agents import train  # pylint: disable=import-outside-toplevel
  from relay_agents.gcbc.config import GoalBCConfig  # pylint: disable=import-outside-toplevel
  from relay_data import relabeled  # pylint: disable=import-outside-toplevel
  data = {}
  for level, cfg in (("low", relabeled.RelabelConfig("low", window=WINDOW, goals_per_step=2)),
                     ("high", relabeled.RelabelConfig("high", window=WINDOW, window_high=40, goals_per_step=2))):
    data[level] = str((relabeled_from or root) / level)
    if relabeled_from is None:
      relabel_pipeline.run_relabel(play_dir, data[level], cfg)
  out = str(root / "ril")
  train.train_agent("ril", data, out, train.TrainConfig(steps=30, seed=seed, progress=False),
                    GoalBCConfig(action_chunk=1, batch_size=32, hidden_sizes=(32,)))
  return out
