"""Small synthetic RLDS datasets for tests (real TFDS builds into temp dirs)."""
import numpy as np

from relay_data import rlds_io, schema


def random_episodes(lengths, state_dim=6, goal_dim=3, action_dim=2, seed=0):
  rng = np.random.default_rng(seed)
  return [{"observation": rng.normal(size=(n, state_dim)).astype(np.float32),
           "goal_state": rng.normal(size=(n, goal_dim)).astype(np.float32),
           "action": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
           "episode_id": f"ep{i}"} for i, n in enumerate(lengths)]


def write_toy(tmp_path, lengths=(5, 9, 20, 3, 12), name="toy", **kwargs):
  return rlds_io.write_episodes(random_episodes(lengths, **kwargs), name, str(tmp_path), progress=False)


def write_unvalidated(tmp_path, episodes, name="raw", drop_step_field=None):
  """Writes episodes without relay's validation (to build deliberately bad sources)."""
  eps = [dict(schema.normalize_episode(e, episode_id=i), **{k: e[k] for k in ("observation",) if k in e})
         for i, e in enumerate(episodes)]
  features = schema.features_for(eps[0])
  records = [schema.to_rlds_record(e) for e in eps]
  if drop_step_field:
    import tensorflow_datasets as tfds
    steps = dict(features["steps"].feature.items())
    obs = dict(steps["observation"].items())
    obs.pop(drop_step_field, None)
    steps["observation"] = tfds.features.FeaturesDict(obs)
    features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps),
                                           "episode_metadata": features["episode_metadata"]})
    for r in records:
      r["steps"]["observation"].pop(drop_step_field, None)
  return rlds_io.write_rlds(records, features, name, str(tmp_path))
