"""pipelines.relabel end to end on Beam's DirectRunner, over real TFDS datasets in temp dirs."""
import os

import numpy as np
import pytest

from pipelines import relabel as pipeline
from relay_data import relabeled, rlds_io
from relay_data.errors import DataError
from tests import helpers

LENGTHS = (5, 9, 20, 3, 12, 1 + 1, 7)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return helpers.write_toy(tmp_path_factory.mktemp("src"), lengths=LENGTHS)


def _read_all(path):
  return [{k: v.numpy() for k, v in ex.items()} for ex in relabeled.load(path)]


def _expected(source_dir, config):
  rows = []
  for index, ep in enumerate(rlds_io.iter_episodes(source_dir)):
    out = relabeled.relabel_episode(config, ep["observation"], ep["goal_state"], ep["action"],
                                    f"{index}/{ep['episode_id']}")
    rows.append((index, out))
  return rows


@pytest.mark.parametrize("config", [
    relabeled.RelabelConfig("low", window=4),
    relabeled.RelabelConfig("high", window=2, window_high=6, goals_per_step=3, seed=5),
    relabeled.RelabelConfig("final-goal"),
    relabeled.RelabelConfig("bc"),
])
def test_pipeline_output_equals_the_pure_functions(source, tmp_path, config, capfd):
  out = str(tmp_path / "out")
  lineage = pipeline.run_relabel(source, out, config, pipeline=pipeline.PipelineConfig(episodes_per_shard=2))
  # The live bar counted every episode, and its per-task files are gone from the output.
  assert f"{len(LENGTHS)}/{len(LENGTHS)}" in capfd.readouterr().err
  assert "_progress" not in os.listdir(out)
  got = _read_all(out)
  expected = _expected(source, config)
  assert lineage["num_shards"] == 4
  keys = sorted(expected[0][1])
  want = np.concatenate([np.concatenate([out[k] for k in keys], axis=1) for _, out in expected])
  have = np.stack([np.concatenate([g[k] for k in keys]) for g in got])
  assert have.shape == want.shape and len(have) == lineage["counts"]["examples_written"]
  # Same multiset of examples (TFDS interleaves shards when reading, so compare sorted rows).
  np.testing.assert_array_equal(have[np.lexsort(have.T[::-1])], want[np.lexsort(want.T[::-1])])
  assert lineage["counts"]["episodes_read"] == len(LENGTHS)
  assert lineage["config"]["level"] == config.level
  assert lineage["source"]["num_episodes"] == len(LENGTHS)
  assert relabeled.read_lineage(out) == lineage


def test_low_level_count_matches_definition(source, tmp_path):
  out = str(tmp_path / "low")
  lineage = pipeline.run_relabel(source, out, relabeled.RelabelConfig("low", window=3))
  expected = sum(min(3, (n - 1) - t) for n in LENGTHS for t in range(n - 1))
  assert lineage["counts"]["examples_written"] == expected
  assert rlds_io.load_builder(out).info.splits["train"].num_examples == expected


def test_deterministic_across_runs_and_workers(source, tmp_path):
  config = relabeled.RelabelConfig("high", window=2, window_high=5, goals_per_step=2, seed=1)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  pipeline.run_relabel(source, a, config, pipeline=pipeline.PipelineConfig(episodes_per_shard=3))
  pipeline.run_relabel(source, b, config, beam_args=["--runner=DirectRunner", "--direct_num_workers=2",
                                                     "--direct_running_mode=multi_threading"],
                       pipeline=pipeline.PipelineConfig(episodes_per_shard=3))
  shards = sorted(f for f in os.listdir(a) if ".tfrecord" in f)
  assert shards == sorted(f for f in os.listdir(b) if ".tfrecord" in f) and len(shards) == 3
  for f in shards:
    assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()


def test_nan_episode_fails_clearly_and_leaves_nothing(tmp_path):
  def corrupt(i, ep):
    if i == 2:
      ep["goal_state"][4, 1] = np.nan

  src = helpers.write_unvalidated(tmp_path / "src", helpers.random_episodes([6, 6, 8]), corrupt=corrupt)
  out = tmp_path / "out"
  with pytest.raises(DataError) as err:
    pipeline.run_relabel(src, str(out), relabeled.RelabelConfig("low", window=2))
  message = str(err.value)
  assert "ep2" in message and "steps/observation/goal_state" in message and "NaN" in message and "step 4" in message
  assert not out.exists()
  assert not [e for e in os.listdir(tmp_path) if e.startswith(".out")]


def test_missing_feature_is_named(tmp_path):
  src = helpers.write_unvalidated(tmp_path / "src", helpers.random_episodes([4, 5]),
                                  drop_step_field="goal_state")
  with pytest.raises(DataError, match="field 'steps/observation/goal_state': missing"):
    pipeline.run_relabel(src, str(tmp_path / "out"), relabeled.RelabelConfig("low", window=2))
  assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite_and_rerun_after_crash_starts_clean(source, tmp_path):
  out = tmp_path / "out"
  stale = tmp_path / ".out.tmp-deadbeef"  # what a crashed run leaves behind
  stale.mkdir()
  (stale / "junk").write_text("x")
  pipeline.run_relabel(source, str(out), relabeled.RelabelConfig("bc"))
  assert not stale.exists()
  with pytest.raises(FileExistsError):
    pipeline.run_relabel(source, str(out), relabeled.RelabelConfig("bc"))
  pipeline.run_relabel(source, str(out), relabeled.RelabelConfig("final-goal"), overwrite=True)
  assert relabeled.read_lineage(str(out))["config"]["level"] == "final-goal"


def test_cli_relabel_and_info(source, tmp_path, cli):
  out = str(tmp_path / "high")
  proc = cli("relabel", "--source", source, "--level", "high", "--window", "2", "--window-high", "4",
             "--goals-per-step", "2", "--output", out, check=True)
  assert "7 episodes read" in proc.stdout
  proc = cli("data", "info", out, check=True)
  assert "relabeled dataset relabeled_high" in proc.stdout and "'window_high': 4" in proc.stdout
  assert "fingerprint" in proc.stdout


def test_cli_rejects_bad_windows_and_missing_source(source, tmp_path, cli):
  proc = cli("relabel", "--source", source, "--level", "high", "--window", "5", "--window-high", "5",
             "--output", str(tmp_path / "x"))
  assert proc.returncode == 2 and "window_high (5) must be larger than window (5)" in proc.stderr
  proc = cli("relabel", "--source", str(tmp_path / "nope"), "--level", "low", "--output", str(tmp_path / "y"))
  assert proc.returncode == 1 and "no such dataset directory" in proc.stderr
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
