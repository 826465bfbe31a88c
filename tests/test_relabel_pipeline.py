"""pipelines.relabel end to end on Beam's DirectRunner, over real TFDS datasets in temp dirs."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines import relabel as pipeline, tfrecords
from relay_data import relabel, relabeled, rlds_io, schema
from relay_data.errors import DataError
from tests import helpers

LENGTHS = (5, 9, 20, 3, 12, 1 + 1, 7)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return helpers.write_toy(tmp_path_factory.mktemp("src"), lengths=LENGTHS)


def _expected(source_dir, config):
  rows = []
  for index, ep in enumerate(rlds_io.iter_episodes(source_dir)):
    out = relabeled.relabel_episode(config, ep["observation"], ep["goal_state"], ep["action"],
                                    f"{index}/{ep['episode_id']}")
    rows.append((index, ep, out))
  return rows


def tree_bytes(root):
  """{relative path: bytes} of every file under `root`."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
  return out


def assert_same_output(a, b, ignore_lineage_keys=("beam_options",)):
  """Every file byte-identical; metadata.json equal but for how it was run."""
  ta, tb = tree_bytes(a), tree_bytes(b)
  assert sorted(ta) == sorted(tb)
  for name in ta:
    if name.endswith("metadata.json"):
      la, lb = json.loads(ta[name]), json.loads(tb[name])
      for k in ignore_lineage_keys:
        la.pop(k), lb.pop(k)
      assert la == lb
    else:
      assert ta[name] == tb[name], name


@pytest.mark.parametrize("config", [
    relabeled.RelabelConfig("low", window=4),
    relabeled.RelabelConfig("high", window=2, window_high=6, goals_per_step=3, seed=5),
    relabeled.RelabelConfig("final-goal"),
    relabeled.RelabelConfig("bc"),
])
def test_pipeline_output_equals_the_pure_functions(source, tmp_path, config, capfd):
  out = str(tmp_path / "out")
  lineage = pipeline.run_relabel(source, out, config,
                                 pipeline=pipeline.PipelineConfig(episodes_per_shard=2, chunk_size=4))
  # The live bar counted every episode, and the per-task files are gone from the output.
  assert f"{len(LENGTHS)}/{len(LENGTHS)}" in capfd.readouterr().err
  name = f"relabeled_{config.level.replace('-', '_')}"
  assert sorted(os.listdir(out)) == [name] and os.listdir(os.path.join(out, name)) == ["2.0.0"]
  got = relabeled.read_arrays(out)
  expected = _expected(source, config)
  assert lineage["num_shards"] == 4
  # In source order, exactly; each example traces back to its episode and step.
  for k in expected[0][2]:
    np.testing.assert_array_equal(got[k], np.concatenate([e[k] for _, _, e in expected]))
  for index, ep, _ in expected:
    mine = got["episode_index"] == index
    np.testing.assert_array_equal(got["observation"][mine], ep["observation"][got["step"][mine]])
  assert lineage["counts"]["examples_written"] == len(got["step"]) == relabeled.num_examples(out)
  assert lineage["counts"]["episodes_read"] == len(LENGTHS)
  assert [e[2] for e in lineage["episodes"]] == [len(e["observation"]) for _, _, e in expected]
  assert [e[1] for e in lineage["episodes"]] == [ep["episode_id"] for _, ep, _ in expected]
  assert lineage["config"]["level"] == config.level and lineage["format"]["version"] == 2
  assert lineage["source"]["num_episodes"] == len(LENGTHS)
  assert relabeled.read_lineage(out) == lineage
  # Records hold at most chunk_size examples of one episode; TFDS counts records.
  builder = rlds_io.load_builder(out)
  assert builder.info.splits["train"].num_examples == lineage["counts"]["records_written"]
  for chunk in relabeled.iter_chunks(out):
    assert 1 <= len(chunk["step"]) <= 4 and len(set(chunk["episode_index"])) == 1


def test_step_index_follows_relabel_indices():
  for length in (2, 3, 7, 40):
    for config in (relabeled.RelabelConfig("low", window=5), relabeled.RelabelConfig("flat", window=3, goals_per_step=2),
                   relabeled.RelabelConfig("high", window=2, window_high=9, goals_per_step=4, seed=3),
                   relabeled.RelabelConfig("high", window=2, window_high=9)):
      window = config.window_high if config.level == "high" else config.window
      t, _ = relabel.relabel_indices(length, window, config.goals_per_step, seed=11)
      np.testing.assert_array_equal(relabeled.step_index(config, length), t)
    np.testing.assert_array_equal(relabeled.step_index(relabeled.RelabelConfig("bc"), length), np.arange(length - 1))


def test_readers_agree_and_batch(source, tmp_path):
  out = str(tmp_path / "low")
  lineage = pipeline.run_relabel(source, out, relabeled.RelabelConfig("low", window=3), show_progress=False,
                                 pipeline=pipeline.PipelineConfig(chunk_size=5))
  expected = sum(min(3, (n - 1) - t) for n in LENGTHS for t in range(n - 1))
  assert lineage["counts"]["examples_written"] == expected == relabeled.num_examples(out)
  arrays = relabeled.read_arrays(out)
  batches = list(relabeled.iter_batches(out, 16))
  assert [len(b["goal"]) for b in batches] == [16] * (expected // 16) + ([expected % 16] if expected % 16 else [])
  for k in arrays:
    np.testing.assert_array_equal(np.concatenate([b[k] for b in batches]), arrays[k])
    np.testing.assert_array_equal(np.stack([ex[k].numpy() for ex in relabeled.load(out)]), arrays[k])
    np.testing.assert_array_equal(
        np.concatenate([b[k].numpy() for b in relabeled.load(out, batch_size=16)]), arrays[k])
  assert len(list(relabeled.iter_batches(out, 16, drop_remainder=True))) == expected // 16
  # tfds.load by name works with the output dir as data_dir.
  import tensorflow_datasets as tfds
  ds = tfds.load("relabeled_low", data_dir=out, split="train").unbatch()
  np.testing.assert_array_equal(np.stack([ex["goal"].numpy() for ex in ds]), arrays["goal"])


PLAIN_TFDS = r"""
import json, sys
import numpy as np
import tensorflow_datasets as tfds
ds = tfds.builder_from_directory(sys.argv[1]).as_dataset(split="train").unbatch()
rows = [{k: v.tolist() for k, v in ex.items()} for ex in tfds.as_numpy(ds)]
bad = [m for m in sys.modules if m.split(".")[0] in ("relay", "relay_data", "relay_agents", "pipelines")]
print(json.dumps({"rows": rows, "ours": bad}))
"""


def test_plain_tfds_read_equals_our_reader(source, tmp_path):
  out = str(tmp_path / "high")
  pipeline.run_relabel(source, out, relabeled.RelabelConfig("high", window=2, window_high=5, goals_per_step=2),
                       show_progress=False, pipeline=pipeline.PipelineConfig(episodes_per_shard=3, chunk_size=7))
  version_dir = rlds_io.resolve_dataset_dir(out)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-c", PLAIN_TFDS, version_dir], capture_output=True, text=True,
                        timeout=300, check=True, cwd=str(tmp_path), env=env)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["ours"] == []
  ours = relabeled.read_arrays(out)
  assert len(result["rows"]) == len(ours["goal"])
  for k, v in ours.items():
    np.testing.assert_array_equal(np.asarray([r[k] for r in result["rows"]], dtype=v.dtype), v)


def test_deterministic_across_runs_and_workers(source, tmp_path):
  config = relabeled.RelabelConfig("high", window=2, window_high=5, goals_per_step=2, seed=1)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  pipeline.run_relabel(source, a, config, pipeline=pipeline.PipelineConfig(episodes_per_shard=3), show_progress=False)
  pipeline.run_relabel(source, b, config, beam_args=["--runner=direct", "--direct_num_workers=2",
                                                     "--direct_running_mode=multi_threading"],
                       pipeline=pipeline.PipelineConfig(episodes_per_shard=3), show_progress=False)
  assert len([f for f in tree_bytes(a) if ".tfrecord" in f]) == 3
  assert_same_output(a, b)


def _shards(directory):
  return sorted(os.path.join(directory, f) for f in os.listdir(directory) if ".tfrecord" in f)


def test_fingerprint_sees_content_not_sizes_or_location(source, tmp_path):
  """Episode and relabeled datasets: one byte changed (sizes equal) -> another fingerprint; the
  same bytes in another directory -> the same one."""
  out = str(tmp_path / "relabeled")
  pipeline.run_relabel(source, out, relabeled.RelabelConfig("low", window=3), show_progress=False)
  for original in (source, rlds_io.resolve_dataset_dir(out)):
    copy = os.path.join(tmp_path, "copy", *original.split(os.sep)[-2:])  # same <name>/<version>
    shutil.copytree(original, copy)
    assert relabeled.fingerprint(copy) == relabeled.fingerprint(original)
    shard = _shards(copy)[0]
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0x01  # one bit of one byte, mid-record
    open(shard, "wb").write(bytes(data))
    assert [os.path.getsize(f) for f in _shards(copy)] == [os.path.getsize(f) for f in _shards(original)]
    assert relabeled.fingerprint(copy) != relabeled.fingerprint(original)


def test_beam_flags_are_explicit_and_argv_is_never_parsed(source, tmp_path, monkeypatch, caplog):
  assert pipeline.beam_flags([], 3) == ["--runner=FnApiRunner"]  # DirectRunner's batch engine, no Prism download
  assert pipeline.beam_flags(["--runner=DirectRunner"], 3) == ["--runner=DirectRunner"]
  dask = f"--runner={pipeline.DASK_RUNNER}"
  assert pipeline.beam_flags(["--runner=dask"], 3) == [dask, "--dask_npartitions=3"]
  assert pipeline.beam_flags(["--", "--runner=DaskRunner", "--dask_partition_size=2"], 3) == \
      [dask, "--dask_partition_size=2"]
  monkeypatch.setattr(sys, "argv", ["relay", "demo", "--out", "somewhere", "--bogus_flag=1"])
  pipeline.run_relabel(source, str(tmp_path / "o"), relabeled.RelabelConfig("bc"), show_progress=False)
  assert "Unparseable" not in caplog.text


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


def test_corrupt_or_truncated_source_is_named(tmp_path):
  src = helpers.write_toy(tmp_path / "src", lengths=(6, 7, 8))
  shard = [os.path.join(src, f) for f in os.listdir(src) if ".tfrecord" in f][0]
  data = bytearray(open(shard, "rb").read())
  offsets = tfrecords.index_records(shard)
  data[offsets[1][0] + 40] ^= 0xFF  # a byte inside the second episode's data
  open(shard, "wb").write(bytes(data))
  with pytest.raises(DataError, match=f"file {shard}: corrupt TFRecord: bad data checksum in the record at byte {offsets[1][0]}"):
    pipeline.run_relabel(src, str(tmp_path / "out"), relabeled.RelabelConfig("bc"), show_progress=False)
  open(shard, "wb").write(bytes(data[:-10]))
  with pytest.raises(DataError, match="truncated TFRecord"):
    pipeline.run_relabel(src, str(tmp_path / "out"), relabeled.RelabelConfig("bc"), show_progress=False)
  assert not (tmp_path / "out").exists()


def test_extra_step_fields_are_carried_harmlessly(tmp_path):
  import tensorflow_datasets as tfds
  eps = [schema.normalize_episode(e, episode_id=i) for i, e in enumerate(helpers.random_episodes([6, 9]))]
  features = schema.features_for(eps[0])
  steps = dict(features["steps"].feature.items())
  steps["executed_action"] = tfds.features.Tensor(shape=(2,), dtype=np.float32)
  features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps),
                                         "episode_metadata": features["episode_metadata"]})
  records = [schema.to_rlds_record(e) for e in eps]
  for r, e in zip(records, eps):
    r["steps"]["executed_action"] = e["action"] * 2
  src = rlds_io.write_rlds(records, features, "extra", str(tmp_path))
  plain = helpers.write_toy(tmp_path / "plain", lengths=(6, 9))
  config = relabeled.RelabelConfig("low", window=3)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  pipeline.run_relabel(src, a, config, show_progress=False)
  pipeline.run_relabel(plain, b, config, show_progress=False)
  for k, v in relabeled.read_arrays(a).items():
    np.testing.assert_array_equal(v, relabeled.read_arrays(b)[k])


def _perturbed_source(tmp_path, lengths=(12, 30, 9), with_executed=True, nan_at=None):
  """An RLDS dataset whose steps carry `executed_action`: the label plus bursts of 0.8 on a third
  of the steps (DART play's shape)."""
  rng = np.random.default_rng(7)
  episodes = helpers.random_episodes(lengths, seed=3)
  for ep in episodes:
    if with_executed:
      burst = rng.random((len(ep["action"]), 1)) < 0.35
      ep["executed_action"] = ep["action"] + np.where(burst, 0.8, 0.02).astype(np.float32)
  if nan_at is not None:
    def corrupt(i, ep):
      if i == nan_at[0]:
        ep["executed_action"][nan_at[1], 0] = np.nan
    return helpers.write_unvalidated(tmp_path, episodes, corrupt=corrupt)
  return rlds_io.write_episodes(episodes, "perturbed", str(tmp_path), progress=False)


@pytest.mark.parametrize("level", ["low", "high"])
def test_perturbation_threshold_keeps_goals_off_perturbed_states_end_to_end(tmp_path, level, cli):
  """`relay relabel --perturbation-threshold`: the pipeline reads the executed actions and writes
  what the pure functions give with the perturbed states masked; no goal is a perturbed state;
  the lineage records the threshold; without it, goals land there as before."""
  src = _perturbed_source(tmp_path / "src")
  config = relabeled.RelabelConfig(level, window=3, window_high=8, goals_per_step=2, action_chunk=1,
                                   perturbation_threshold=0.5)
  out = str(tmp_path / "out")
  lineage = pipeline.run_relabel(src, out, config, show_progress=False,
                                 pipeline=pipeline.PipelineConfig(episodes_per_shard=2))
  assert lineage["config"]["perturbation_threshold"] == 0.5
  got = relabeled.read_arrays(out)
  hits, total = 0, 0
  for index, ep in enumerate(rlds_io.iter_episodes(src)):
    perturbed = config.perturbed(ep["action"], ep["executed_action"])
    want = relabeled.relabel_episode(config, ep["observation"], ep["goal_state"], ep["action"],
                                     f"{index}/{ep['episode_id']}", perturbed=perturbed)
    mine = got["episode_index"] == index
    for k, v in want.items():
      np.testing.assert_array_equal(got[k][mine], v)
    # Which state each goal is: goal-state rows are distinct random vectors.
    rows = [int(np.flatnonzero((ep["goal_state"] == g).all(1))[0]) for g in got["goal"][mine]]
    assert not perturbed[rows].any()
    plain = relabeled.relabel_episode(dataclasses.replace(config, perturbation_threshold=None), ep["observation"],
                                      ep["goal_state"], ep["action"], f"{index}/{ep['episode_id']}")
    plain_rows = [int(np.flatnonzero((ep["goal_state"] == g).all(1))[0]) for g in plain["goal"]]
    hits += int(perturbed[plain_rows].sum())
    total += len(plain_rows)
  assert hits > 0.1 * total  # without the threshold, goals do land on perturbed states
  proc = cli("relabel", "--source", src, "--level", level, "--window", "3", "--window-high", "8",
             "--goals-per-step", "2", "--action-chunk", "1", "--perturbation-threshold", "0.5",
             "--output", str(tmp_path / "cli"), "--no-progress")
  assert proc.returncode == 0, proc.stderr
  for k, v in relabeled.read_arrays(str(tmp_path / "cli")).items():
    np.testing.assert_array_equal(v, got[k])


def test_perturbation_threshold_needs_finite_executed_actions_and_says_so(tmp_path, cli):
  plain = _perturbed_source(tmp_path / "plain", with_executed=False)
  config = relabeled.RelabelConfig("low", window=3, perturbation_threshold=0.3)
  with pytest.raises(DataError, match="field 'steps/executed_action': missing .*--perturbation-threshold"):
    pipeline.run_relabel(plain, str(tmp_path / "a"), config, show_progress=False)
  bad = _perturbed_source(tmp_path / "nan", nan_at=(1, 4))
  with pytest.raises(DataError) as err:
    pipeline.run_relabel(bad, str(tmp_path / "b"), config, show_progress=False)
  assert "ep1" in str(err.value) and "steps/executed_action" in str(err.value) and "step 4" in str(err.value)
  pipeline.run_relabel(bad, str(tmp_path / "c"), relabeled.RelabelConfig("low", window=3), show_progress=False)
  proc = cli("relabel", "--source", plain, "--level", "low", "--perturbation-threshold", "-1",
             "--output", str(tmp_path / "d"))
  assert proc.returncode == 2 and "perturbation_threshold must be a non-negative number" in proc.stderr
  proc = cli("relabel", "--source", plain, "--level", "bc", "--perturbation-threshold", "0.3",
             "--output", str(tmp_path / "e"))
  assert proc.returncode == 2 and "relabels none" in proc.stderr
  assert not any((tmp_path / x).exists() for x in "abde")
  assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]


def test_old_format_dataset_says_to_regenerate(tmp_path):
  """A format-1 dataset (one flat example per record, lineage without a format) as the relay of
  commit 5dc3386 wrote it."""
  import tensorflow_datasets as tfds
  features = tfds.features.FeaturesDict({k: tfds.features.Tensor(shape=(d,), dtype=np.float32)
                                         for k, d in (("observation", 6), ("action", 2), ("goal", 3))})
  rng = np.random.default_rng(0)
  records = [{k: rng.normal(size=(d,)).astype(np.float32) for k, d in (("observation", 6), ("action", 2), ("goal", 3))}
             for _ in range(5)]
  lineage = {"created_by": "pipelines.relabel", "config": {"level": "low", "window": 30, "goals_per_step": 8, "seed": 0},
             "source": {"path": "/data/kitchen_play/n400_s0/1.1.0"}, "counts": {"examples_written": 5}}
  path = rlds_io.write_rlds(records, features, "relabeled_low", str(tmp_path / "old"), metadata=lineage)
  for call in (lambda: relabeled.load(path), lambda: relabeled.read_arrays(str(tmp_path / "old")),
               lambda: relabeled.num_examples(path)):
    with pytest.raises(DataError) as err:
      call()
    message = str(err.value)
    assert "format 1" in message and "Regenerate" in message
    assert "relay relabel --source /data/kitchen_play/n400_s0/1.1.0 --level low --window 30 --goals-per-step 8" in message


KILLABLE = r"""
import sys
from pipelines import relabel as p
from relay_data import relabeled
p.run_relabel(sys.argv[1], sys.argv[2], relabeled.RelabelConfig("low", window=4, goals_per_step=2),
              pipeline=p.PipelineConfig(episodes_per_shard=1), show_progress=False)
"""


def test_killed_run_leaves_nothing_visible_and_rerun_equals_uninterrupted(tmp_path):
  src = helpers.write_toy(tmp_path / "src", lengths=[30] * 60)
  env = dict(os.environ, PYTHONPATH=REPO)
  out = tmp_path / "runs" / "out"
  killed = False
  for _ in range(3):  # retried only if the run finished before the kill landed
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, src, str(out)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      tmps = [d for d in (os.listdir(out.parent) if out.parent.exists() else []) if d.startswith(".out.tmp-")]
      if tmps and os.path.isdir(out.parent / tmps[0] / "_rows") and os.listdir(out.parent / tmps[0] / "_rows"):
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.002)
    proc.wait()
    if proc.returncode == -signal.SIGKILL:
      killed = True
      break
    shutil.rmtree(out, ignore_errors=True)
  assert killed, "the run always finished before it could be killed"
  assert not out.exists()
  assert all(name.startswith(".") for name in os.listdir(out.parent))  # only the hidden temp dir
  subprocess.run([sys.executable, "-c", KILLABLE, src, str(out)], env=env, cwd=REPO, check=True,
                 capture_output=True)
  assert [n for n in os.listdir(out.parent)] == ["out"]  # the rerun cleared the stale temp dir
  ref = tmp_path / "ref" / "out"
  subprocess.run([sys.executable, "-c", KILLABLE, src, str(ref)], env=env, cwd=REPO, check=True,
                 capture_output=True)
  assert_same_output(str(out), str(ref), ignore_lineage_keys=())
  assert relabeled.num_examples(str(out)) == len(relabeled.read_arrays(str(out))["step"])


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


def test_cli_no_progress_silences_the_bar_and_nothing_else(source, tmp_path, cli):
  """`--no-progress` (every command with long work has it) drops the bar, not the result."""
  args = ("relabel", "--source", source, "--level", "bc")
  loud = cli(*args, "--output", str(tmp_path / "a"), check=True)
  quiet = cli(*args, "--output", str(tmp_path / "b"), "--no-progress", check=True)
  assert "relabeling (bc)" in loud.stderr and "relabeling" not in quiet.stderr
  assert "7 episodes read" in quiet.stdout
  assert relabeled.fingerprint(str(tmp_path / "a")) == relabeled.fingerprint(str(tmp_path / "b"))
  from relay import cli as relay_cli
  commands = relay_cli.build_parser()._subparsers._group_actions[0].choices  # pylint: disable=protected-access
  for name in ("generate", "ingest", "relabel", "train-il", "eval", "finetune", "distill"):
    assert "--no-progress" in commands[name]._option_string_actions, name  # pylint: disable=protected-access
  actions = commands["diagnose"]._subparsers._group_actions[0].choices  # pylint: disable=protected-access
  for name in ("oracle", "failures", "gradient"):
    assert "--no-progress" in actions[name]._option_string_actions, name  # pylint: disable=protected-access


def test_cli_rejects_bad_windows_and_missing_source(source, tmp_path, cli):
  proc = cli("relabel", "--source", source, "--level", "high", "--window", "5", "--window-high", "5",
             "--output", str(tmp_path / "x"))
  assert proc.returncode == 2 and "window_high (5) must be larger than window (5)" in proc.stderr
  proc = cli("relabel", "--source", str(tmp_path / "nope"), "--level", "low", "--output", str(tmp_path / "y"))
  assert proc.returncode == 1 and "no such dataset directory" in proc.stderr
  proc = cli("relabel", "--source", source, "--level", "low", "--output", str(tmp_path / "z"), "--dask-workers", "2")
  assert proc.returncode == 2 and "--dask-address / --dask-workers needs --runner dask" in proc.stderr
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_local_and_url_paths_frame_records_identically(tmp_path):
  """Local paths go through Python's files, URLs through tf.io.gfile (here file://): same index,
  same records, same written bytes."""
  src = helpers.write_toy(tmp_path / "src", lengths=(6, 7, 8))
  shard = [os.path.join(src, f) for f in sorted(os.listdir(src)) if ".tfrecord" in f][0]
  url = "file://" + shard
  index = tfrecords.index_records(shard)
  assert tfrecords.index_records(url) == index and len(index) == 3
  start, end = index[1][0], index[2][0] + index[2][1]
  records = tfrecords.read_range(shard, start, end)
  assert tfrecords.read_range(url, start, end) == records and len(records) == 2
  for path in (str(tmp_path / "local.tfrecord"), "file://" + str(tmp_path / "url.tfrecord")):
    with tfrecords.RecordWriter(path) as writer:
      for record in records:
        writer.write([record[:10], memoryview(record)[10:]])
    assert writer.records_written == 2
  written = open(tmp_path / "local.tfrecord", "rb").read()
  assert written == open(tmp_path / "url.tfrecord", "rb").read() == open(shard, "rb").read()[start:end]


def test_run_leaves_the_garbage_collector_as_it_found_it(source, tmp_path):
  """The run hides pre-existing objects from the collector (gc.freeze) and puts them back after,
  and leaves a caller's own freeze alone."""
  import gc
  config = relabeled.RelabelConfig("bc")
  assert gc.get_freeze_count() == 0
  pipeline.run_relabel(source, str(tmp_path / "a"), config, show_progress=False)
  assert gc.get_freeze_count() == 0 and gc.isenabled()
  gc.freeze()
  try:
    pipeline.run_relabel(source, str(tmp_path / "b"), config, show_progress=False)
    assert gc.get_freeze_count() > 0  # still frozen (the count itself drifts as frozen objects are freed)
  finally:
    gc.unfreeze()
  assert_same_output(str(tmp_path / "a"), str(tmp_path / "b"))


def test_tasks_are_reshuffled_only_where_a_runner_can_spread_them():
  from apache_beam.options.pipeline_options import PipelineOptions
  def redistributes(args):
    return pipeline._redistribute(PipelineOptions(flags=pipeline.beam_flags(args, 4)))  # pylint: disable=protected-access
  assert not redistributes([])  # in-process runner, one worker: nothing to spread over
  assert redistributes(["--runner=direct", "--direct_num_workers=2"])
  assert redistributes(["--runner=DirectRunner"])


def _uvarint(value):
  out = bytearray()
  while True:
    out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
    value >>= 7
    if not value:
      return bytes(out)


def _ld(field, payload):
  return _uvarint((field << 3) | 2) + _uvarint(len(payload)) + payload


def _example(features):
  """tf.train.Example bytes from {key: Feature bytes}, written by hand so the tests can write
  what a protobuf library would not (unpacked lists)."""
  return _ld(1, b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in features.items()))


def _float_feature(values, layout="packed"):
  data = np.asarray(values, "<f4")
  if layout == "packed":
    body = _ld(1, data.tobytes())
  else:                    # one fixed32 field per value
    body = b"".join(_uvarint((1 << 3) | 5) + x.tobytes() for x in data)
  return _ld(2, body)


def test_episode_records_parse_from_the_wire_and_odd_ones_through_tensorflow():
  """The wire reader and TensorFlow's parser give the same episodes; records outside the plain
  shape (here: an unpacked list, no episode id) go to TensorFlow and still parse right."""
  from pipelines import source
  dims = {"observation": 2, "goal_state": 1, "action": 1}
  rng = np.random.default_rng(0)
  arrays = {f: rng.normal(size=(3, d)).astype(np.float32) for f, d in dims.items()}

  def record(layout=None, with_id=True):
    features = {source.STEP_FIELDS[f]: _float_feature(a.reshape(-1), layout if f == "observation" else "packed")
                for f, a in arrays.items()}
    features["steps/reward"] = _float_feature(np.zeros(3))  # fields relabeling does not read are skipped
    if with_id:
      features[source.EPISODE_ID] = _ld(1, _ld(1, b"ep-7"))
    return _example(features)

  keys = tuple(source.STEP_FIELDS[f] for f in sorted(dims))
  plain = record("packed")
  flats, episode_id = source._parse_record(plain, keys)  # pylint: disable=protected-access
  assert episode_id == b"ep-7"
  tf_flats, tf_ids = source._parse_with_tf([plain], keys)  # pylint: disable=protected-access
  assert tf_ids == [b"ep-7"]
  for k in keys:
    assert flats[k].dtype == np.float32 and flats[k].tobytes() == tf_flats[0][k].tobytes()
  for odd, expected_id in ((record("unpacked"), "ep-7"), (record("packed", with_id=False), "")):
    with pytest.raises(source._NotPlain):  # pylint: disable=protected-access
      source._parse_record(odd, keys)  # pylint: disable=protected-access
    episodes = source.parse_episodes([plain, odd], dims, "src", first_episode=4)
    assert [(e["index"], e["episode_id"]) for e in episodes] == [(4, "ep-7"), (5, expected_id)]
    for ep in episodes:
      for f, a in arrays.items():
        np.testing.assert_array_equal(ep[f], a)
