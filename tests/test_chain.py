"""ingest -> relabel -> train -> eval for every ingest format, on files written in that exact format.

The files hold real kitchen play (the 2-episode generated dataset) in each format's own layout:
D4RL hdf5 with 60-d observations (robot + object positions, task goal appended), Minari with the
59-d FrankaKitchen-v1 observation (T+1 rows), npz with the 30-d D4RL positions. The chains train
every agent (ril, gcbc, bc, gcbc-norelabel) for a few hundred steps and evaluate it in the real kitchen on
one goal of the ingested data, one rollout, through `relay eval` (in process): the model maps the
environment's 59-d observation to the layout it was trained on.
"""
import json
import os

import h5py
import numpy as np
import pytest

from pipelines import relabel as relabel_pipeline
from relay import cli as relay_cli
from relay_agents import models, train
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import converters, kitchen, relabeled, rlds_io


@pytest.fixture(scope="module")
def play_episodes(kitchen_play_tiny):
  return list(rlds_io.iter_episodes(kitchen_play_tiny))


def _goal_positions(obs59):
  return kitchen.goal_state_from_observation(obs59)


def write_d4rl(path, episodes):
  """D4RL kitchen layout: flat arrays, 60-d observations = positions (30) + task goal (30)."""
  obs = np.concatenate([np.concatenate([_goal_positions(e["observation"]),
                                        np.repeat(e["goal_state"][-1:], len(e["observation"]), 0)], 1)
                        for e in episodes])
  terminals = np.concatenate([np.r_[np.zeros(len(e["observation"]) - 1, bool), True] for e in episodes])
  with h5py.File(path, "w") as f:
    f["observations"] = obs.astype(np.float32)
    f["actions"] = np.concatenate([e["action"] for e in episodes]).astype(np.float32)
    f["rewards"] = np.concatenate([e["reward"] for e in episodes]).astype(np.float32)
    f["terminals"] = terminals
    f.create_group("infos")
  return str(path)


def write_minari(root, episodes):
  """Minari layout: data/main_data.hdf5, a group per episode, T+1 dict observations, T actions."""
  os.makedirs(os.path.join(root, "data"))
  with h5py.File(os.path.join(root, "data", "main_data.hdf5"), "w") as f:
    for i, e in enumerate(episodes):
      g = f.create_group(f"episode_{i}")
      g.create_group("observations")["observation"] = e["observation"].astype(np.float64)
      t = len(e["observation"]) - 1
      g["actions"] = e["action"][:t].astype(np.float64)
      g["rewards"] = e["reward"][:t].astype(np.float64)
      g["terminations"] = np.r_[np.zeros(t - 1, bool), True]
      g["truncations"] = np.zeros(t, bool)
      g.create_group("infos")
  return str(root)


def write_npz(root, episodes):
  """npz layout: one file per episode, 30-d positions, L-1 actions, scalar terminal."""
  os.makedirs(root)
  for i, e in enumerate(episodes):
    np.savez(os.path.join(root, f"ep{i}.npz"), observations=_goal_positions(e["observation"]),
             actions=e["action"][:-1], terminal=np.bool_(True))
  return str(root)


CHAINS = {  # format -> (writer, agents trained on it, the layout the models must be trained on)
    "d4rl-hdf5": (write_d4rl, ("ril",), "d4rl"),
    "minari": (write_minari, ("gcbc",), "franka-kitchen-v1"),
    "npz": (write_npz, ("bc", "gcbc-norelabel"), "d4rl"),
}
LEVELS = {"ril": {"low": "low", "high": "high"}, "gcbc": {"policy": "flat"}, "bc": {"policy": "bc"},
          "gcbc-norelabel": {"policy": "final-goal"}}


@pytest.mark.parametrize("fmt", sorted(CHAINS))
def test_ingest_relabel_train_eval(fmt, play_episodes, tmp_path, capsys):
  writer, agents, layout = CHAINS[fmt]
  source = writer(tmp_path / f"demos.{'hdf5' if fmt == 'd4rl-hdf5' else 'd'}", play_episodes)
  data = converters.ingest(fmt, source, "demos", str(tmp_path / "data"), progress=False)
  assert rlds_io.read_metadata(data)["spec"]["observation"]["layout"] == layout
  for agent in agents:
    _train_and_evaluate(agent, data, layout, tmp_path / agent, capsys)


def _train_and_evaluate(agent, data, layout, root, capsys):
  relabeled_dirs = {}
  for level, relabel_level in LEVELS[agent].items():
    relabeled_dirs[level] = str(root / level)
    relabel_pipeline.run_relabel(data, relabeled_dirs[level], relabeled.RelabelConfig(
        relabel_level, window=10, window_high=40, goals_per_step=2), show_progress=False)
  model = str(root / "model")
  train.train_agent(agent, relabeled_dirs, model, train.TrainConfig(steps=200, progress=False),
                    GoalBCConfig(hidden_sizes=(32, 32), batch_size=32))
  record = models.read_record(model)
  assert record.agent == agent and record.data_spec.observation.layout == layout
  assert record.window == (10 if agent in ("ril", "gcbc") else None)
  assert all(s["source"]["fingerprint"] == relabeled.fingerprint(data) for s in record.sources.values())

  out = str(root / "eval.json")
  code = relay_cli.main(["eval", "--model", model, "--play", data, "--goals", "1", "--no-heldout",
                         "--rollouts", "1", "--max-steps", "290", "--json", out])
  printed = capsys.readouterr().out
  assert code == 0 and "success@280" in printed and "success@290" in printed
  with open(out) as f:
    text = f.read()
  result = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))["model"]
  (goal,) = result["per_goal"]
  assert len(goal["completions"]) == 1 and set(goal["completions_at"]) == {"280", "290"}
  assert goal["completions_at"]["280"][0] <= goal["completions"][0] == len(goal["first_done"][0])
  assert result["heldout"]["success_rate"] is None and set(result["horizons"]) == {"280", "290"}
