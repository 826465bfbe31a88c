"""Scripted play in the real FrankaKitchen-v1: generator, TFDS builder, holdout, determinism."""
import collections
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from relay_data import kitchen, rlds_io
from relay_data.play import generator


def test_sample_order_never_picks_a_heldout_set():
  holdout = generator.default_holdout()
  assert len(holdout) == 3 and all(len(s) == 4 for s in holdout)
  rng = np.random.default_rng(0)
  seen = collections.Counter()
  for _ in range(3000):
    order = generator.sample_order(rng, 4, holdout)
    assert len(set(order)) == 4 and frozenset(order) not in holdout
    seen[frozenset(order)] += 1
  assert len(seen) == 35 - 3  # every other set appears


def test_parse_holdout():
  assert generator.parse_holdout("none") == []
  assert generator.parse_holdout("default") == generator.default_holdout()
  got = generator.parse_holdout("kettle+microwave+light switch+top burner")
  assert got == [frozenset({"kettle", "microwave", "light switch", "top burner"})]
  with pytest.raises(ValueError, match="unknown: \\['toaster'\\]"):
    generator.parse_holdout("kettle+microwave+light switch+toaster")
  with pytest.raises(ValueError, match="need 4 distinct"):
    generator.parse_holdout("kettle+microwave")


def test_episode_is_deterministic_and_completes_its_subtasks():
  config = generator.GeneratorConfig(seed=3)
  # About 1 episode in 10 is dropped (a subtask failing 3 tries): take the first kept one.
  results = [generator.generate_episode(config, i) for i in range(2)]
  while not results[-1].ok and len(results) < 6:
    results.append(generator.generate_episode(config, len(results)))
  a = next(r for r in results if r.ok)
  for dropped in (r for r in results if not r.ok):  # a dropped episode says why and carries no data
    assert dropped.episode is None and ("not completed" in dropped.reason or "step limit" in dropped.reason)
  b = generator.generate_episode(config, a.index)
  np.testing.assert_array_equal(a.episode["observation"], b.episode["observation"])
  np.testing.assert_array_equal(a.episode["action"], b.episode["action"])
  ep = a.episode
  assert ep["observation"].shape[1] == kitchen.OBS_DIM and ep["action"].shape[1] == kitchen.ACTION_DIM
  assert len(ep["observation"]) == len(ep["action"]) == len(ep["completed_tasks"])
  assert np.abs(ep["action"]).max() <= 1.0
  order = ep["subtask_order"].split(",")
  # The env's completion test says all four were done; the per-step mask (true state) agrees.
  assert set(order) == set(a.completed)
  ever = {kitchen.ELEMENTS[i] for i in np.flatnonzero(ep["completed_tasks"].any(axis=0))}
  assert set(order) <= ever


def test_tfds_builder_builds_and_loads(kitchen_play_tiny):
  path = kitchen_play_tiny
  builder = tfds.builder_from_directory(path)
  assert builder.info.splits["train"].num_examples == 2
  steps = builder.info.features["steps"]
  assert steps["observation"]["state"].shape == (59,) and steps["observation"]["goal_state"].shape == (30,)
  meta = json.load(open(os.path.join(path, "metadata.json")))
  assert meta["generator_version"] == generator.GENERATOR_VERSION
  assert meta["holdout"] == [generator.format_set(s) for s in generator.default_holdout()]
  assert meta["subtask_success"]["completed"] >= 8
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(path)))
  loaded = tfds.load("kitchen_play/" + os.path.basename(os.path.dirname(path)), data_dir=data_dir, split="train")
  episodes = list(loaded)
  assert len(episodes) == 2
  for ep in rlds_io.iter_episodes(path):
    order = ep["subtask_order"].split(",")
    assert len(order) == 4
    ever = set(kitchen.ELEMENTS[i] for i in np.flatnonzero(ep["completed_tasks"].any(axis=0)))
    assert set(order) <= ever
    np.testing.assert_allclose(ep["goal_state"], kitchen.goal_state_from_observation(ep["observation"]))
    assert not any(s <= ever for s in generator.default_holdout())


def test_cli_generate_rejects_bad_flags(cli, tmp_path):
  proc = cli("generate", "--data-dir", str(tmp_path), "--episodes", "0")
  assert proc.returncode == 2 and "--episodes must be positive" in proc.stderr
  proc = cli("generate", "--data-dir", str(tmp_path), "--holdout", "kettle+toaster")
  assert proc.returncode == 2 and "--holdout" in proc.stderr
  assert not list(tmp_path.iterdir())


def test_parallel_workers_give_the_same_episodes():
  config = generator.GeneratorConfig(seed=5)
  parallel = [r for r in generator.generate(config, 2, workers=2, progress=False) if r.ok]
  assert len(parallel) == 2 and parallel[0].index < parallel[1].index  # results come in index order
  for r in parallel:
    serial = generator.generate_episode(config, r.index)
    assert serial.order == r.order
    np.testing.assert_array_equal(serial.episode["observation"], r.episode["observation"])
    np.testing.assert_array_equal(serial.episode["action"], r.episode["action"])


def test_markovian_controller_has_no_hidden_state():
  """Behaviour cloning needs the demonstrator's action to be a function of what the policy sees:
  a controller with a long history and a fresh one act the same from the same state."""
  from relay_data.play import controller as ctl
  env = kitchen.make_env(max_episode_steps=100)
  obs, _ = env.reset(seed=0)
  u = env.unwrapped
  old = ctl.ArmController(u.model, u.data)
  target = old.position + np.array([0.1, 0.05, -0.1])
  for _ in range(15):  # history: a motion toward the target
    obs, *_ = env.step(old.action(obs["observation"], target))
  fresh = ctl.ArmController(u.model, u.data)
  fresh.home, fresh.home_rotation = old.home, old.home_rotation  # the episode's fixed reference
  for pos in (target, None):  # a task-space move and a re-home
    np.testing.assert_allclose(old.action(obs["observation"], pos), fresh.action(obs["observation"], pos),
                               atol=1e-6)
  # The integrating controller (generator 1.0.0) is not: its command carries the history.
  legacy = ctl.ArmController(u.model, u.data, ctl.ControllerConfig(markovian=False))
  legacy.home = old.home
  for _ in range(5):
    obs, *_ = env.step(legacy.action(obs["observation"], target))
  again = ctl.ArmController(u.model, u.data, ctl.ControllerConfig(markovian=False))
  assert np.abs(legacy.action(obs["observation"], target) - again.action(obs["observation"], target)).max() > 1e-3
