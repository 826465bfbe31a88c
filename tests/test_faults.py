"""A hostile user against every command: bad paths, names, data, concurrent and killed runs.

Each case runs the real `relay` command in a subprocess on small real data (TFDS datasets in temp
dirs, the Beam DirectRunner, the kitchen generator) and asserts three things: the exit code, the
one-line message (no traceback), and that every source and earlier output is byte-identical
afterwards (a hash of the whole tree, before and after).
"""
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from relay_data import paths, rlds_io
from relay_data.errors import DataError
from relay_data.play import generator
from tests import helpers
from tests.conftest import REPO, run_cli


def tree_hash(root) -> dict:
  """relative path -> sha256 of every file (and '<dir>' for every directory) under `root`."""
  root = str(root)
  if os.path.isfile(root):
    with open(root, "rb") as f:
      return {".": hashlib.sha256(f.read()).hexdigest()}
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    out[rel] = "<dir>"
    for name in filenames:
      with open(os.path.join(dirpath, name), "rb") as f:
        out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
  return out


def assert_error(proc, code, *fragments):
  """Exit `code`, a one-line `relay <cmd>: error:` message (plus the --help hint for usage), no traceback."""
  assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr, proc.stderr
  # Progress bars (tqdm: "desc:  50%|#####     | 1/2 [...]") redraw one terminal line; not messages.
  lines = [l for l in proc.stderr.splitlines() if l.strip() and "%|" not in l]
  assert lines and lines[0].startswith("relay ") and ": error: " in lines[0], proc.stderr
  assert len(lines) == (2 if code == 2 else 1), proc.stderr
  if code == 2:
    assert "--help" in lines[1]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A small RLDS source and a relabeled dataset made from it (real TFDS + Beam)."""
  from pipelines import relabel as pipeline
  from relay_data import relabeled
  root = tmp_path_factory.mktemp("faults")
  source = helpers.write_toy(root / "data", lengths=(12, 15, 9))
  relabeled_dir = str(root / "relabeled_low")
  pipeline.run_relabel(source, relabeled_dir, relabeled.RelabelConfig("low", window=3, goals_per_step=2),
                       show_progress=False)
  return {"root": root, "source": source, "relabeled": relabeled_dir}


@pytest.fixture
def guard(data):
  """Hashes the shared source and relabeled trees; the test body must leave them byte-identical."""
  before = {k: tree_hash(data[k]) for k in ("source", "relabeled")}
  yield data
  assert {k: tree_hash(data[k]) for k in ("source", "relabeled")} == before


def relabel(source, output, *extra):
  return run_cli("relabel", "--source", source, "--level", "low", "--window", "3", "--goals-per-step", "2",
                 "--output", output, *extra)


# ---------------------------------------------------------------------- outputs and names

@pytest.mark.parametrize("where,overwrite,message", [
    ("source", True, "is the source"),
    ("source", False, "is the source"),
    ("inside", True, "is inside the source"),
    ("parent", True, "holds the source"),
    ("data_root", True, "holds the source"),
])
def test_relabel_output_overlapping_its_source_is_refused(guard, where, overwrite, message):
  source = guard["source"]
  output = {"source": source, "inside": os.path.join(source, "out"),
            "parent": os.path.dirname(source), "data_root": str(guard["root"])}[where]
  proc = relabel(source, output, *(["--overwrite"] if overwrite else []))
  assert_error(proc, 2, "--output", message)
  assert not os.path.exists(os.path.join(source, "out"))


@pytest.mark.parametrize("name,overwrite", [
    ("../../data/toy", True),                 # points back at the source
    ("/tmp/relay_abs_name", False),            # absolute
    ("a" * 300, False),                        # over-long (was: OSError file name too long)
    ("sub/name", False),                       # separator
    ("..", True),
])
def test_relabel_name_must_be_plain(guard, tmp_path, name, overwrite):
  output = tmp_path / "out"
  proc = relabel(guard["source"], str(output), "--name", name, *(["--overwrite"] if overwrite else []))
  assert_error(proc, 2, "--name", "not a plain dataset name")
  assert not output.exists() and not os.path.exists("/tmp/relay_abs_name-train.tfrecord-00000-of-00001")


def test_relabel_output_that_is_a_file_fails_before_any_work(guard, tmp_path):
  output = tmp_path / "out_file"
  output.write_text("keep me")
  proc = relabel(guard["source"], str(output), "--overwrite")
  assert_error(proc, 2, "--output", "is a file")
  assert output.read_text() == "keep me"
  assert sorted(os.listdir(tmp_path)) == ["out_file"]  # no temp dir, no lock left


def test_overwrite_never_replaces_a_directory_that_is_not_a_dataset(guard, tmp_path):
  user_dir = tmp_path / "home"
  user_dir.mkdir()
  (user_dir / "thesis.tex").write_text("years of work")
  before = tree_hash(user_dir)
  proc = relabel(guard["source"], str(user_dir), "--overwrite")
  assert_error(proc, 2, "--output", "is not a dataset")
  assert tree_hash(user_dir) == before
  assert sorted(os.listdir(tmp_path)) == ["home"]


def test_relabeled_dataset_as_source_is_one_line(guard, tmp_path):
  proc = relabel(guard["relabeled"], str(tmp_path / "out"))
  assert_error(proc, 1, "is a relabeled dataset", guard["source"])  # names the play data to use instead
  assert not (tmp_path / "out").exists()


def test_relabeled_dataset_as_play_is_a_data_error(guard):
  from relay_agents import evaluation
  with pytest.raises(DataError, match="is a relabeled dataset"):
    evaluation.goal_sets(guard["relabeled"], 3)


def test_existing_output_without_overwrite_is_kept(guard, tmp_path):
  earlier = tmp_path / "earlier"
  assert relabel(guard["source"], str(earlier)).returncode == 0
  before = tree_hash(earlier)
  proc = relabel(guard["source"], str(earlier))
  assert_error(proc, 2, "already exists", "--overwrite")
  assert tree_hash(earlier) == before


def test_overwrite_replaces_only_on_success(guard, tmp_path):
  """A failed overwrite (bad source data mid-run) leaves the earlier output as it was."""
  earlier = tmp_path / "earlier"
  assert relabel(guard["source"], str(earlier)).returncode == 0
  before = tree_hash(earlier)

  def nan(i, ep):
    if i == 1:
      ep["observation"][3, 0] = np.nan
  bad = helpers.write_unvalidated(tmp_path / "bad", helpers.random_episodes((10, 10)), corrupt=nan)
  proc = relabel(bad, str(earlier), "--overwrite")
  assert_error(proc, 1, "NaN", "episode #1")
  assert tree_hash(earlier) == before
  assert sorted(os.listdir(tmp_path)) == ["bad", "earlier"]


def test_ingest_names_paths_and_data_dir(tmp_path):
  src = tmp_path / "demos"
  src.mkdir()
  np.savez(src / "ep0.npz", observations=np.zeros((5, 3), np.float32), actions=np.zeros((5, 2), np.float32))
  before = tree_hash(src)
  for name in ("../escape", "a" * 65, "Upper"):
    assert_error(run_cli("ingest", "--format", "npz", str(src), "--name", name, "--data-dir", str(tmp_path / "d")),
                 2, "--name")
  not_dir = tmp_path / "file"
  not_dir.write_text("x")
  assert_error(run_cli("ingest", "--format", "npz", str(src), "--name", "ok", "--data-dir", str(not_dir)),
               2, "--data-dir", "is a file")
  # The output dataset dir would be, or hold, the input: refused even with --overwrite.
  assert_error(run_cli("ingest", "--format", "npz", str(src), "--name", "demos", "--data-dir", str(tmp_path),
                       "--overwrite"), 2, "is the source")
  assert_error(run_cli("ingest", "--format", "npz", str(src / "ep0.npz"), "--name", "demos", "--data-dir",
                       str(tmp_path), "--overwrite"), 2, "holds the source")
  assert tree_hash(src) == before and not_dir.read_text() == "x"
  assert sorted(os.listdir(tmp_path)) == ["demos", "file"]


def test_generate_data_dir_that_is_a_file(tmp_path):
  not_dir = tmp_path / "file"
  not_dir.write_text("x")
  proc = run_cli("generate", "--episodes", "1", "--data-dir", str(not_dir / "sub"))
  assert_error(proc, 2, "--data-dir", "is a file")
  assert not_dir.read_text() == "x"


def test_data_info_plot_never_inside_the_dataset(guard):
  proc = run_cli("data", "info", guard["source"], "--plot", os.path.join(guard["source"], "p.png"))
  assert_error(proc, 2, "--plot", "inside the source")


def test_train_and_eval_outputs_never_overlap_their_inputs(guard, tmp_path):
  proc = run_cli("train-il", "--agent", "bc", "--data", guard["relabeled"], "--out", guard["relabeled"])
  assert_error(proc, 2, "--out", "is the source")
  model = tmp_path / "model"
  model.mkdir()
  (model / "agent.json").write_text("{}")
  proc = run_cli("eval", "--model", str(model), "--play", guard["source"], "--json", str(model / "agent.json"))
  assert_error(proc, 2, "--json", "inside the source")
  assert (model / "agent.json").read_text() == "{}"


# ---------------------------------------------------------------------- bad input files

def test_minari_group_not_named_episode_int(tmp_path):
  path = tmp_path / "main_data.hdf5"
  with h5py.File(path, "w") as f:
    g = f.create_group("episode_x")
    g["observations"] = np.zeros((3, 2))
    g["actions"] = np.zeros((2, 2))
  before = tree_hash(path)
  proc = run_cli("ingest", "--format", "minari", str(path), "--name", "m", "--data-dir", str(tmp_path / "d"))
  assert_error(proc, 1, str(path), "episode_x", "episode_<integer id>")
  assert tree_hash(path) == before and not (tmp_path / "d" / "m").exists()


def test_npz_with_vector_terminal(tmp_path):
  path = tmp_path / "ep.npz"
  np.savez(path, observations=np.zeros((4, 3)), actions=np.zeros((4, 2)), terminal=np.zeros(4))
  proc = run_cli("ingest", "--format", "npz", str(path), "--name", "n", "--data-dir", str(tmp_path / "d"))
  assert_error(proc, 1, "field 'terminal'", "must be a scalar", "shape (4,)")


def test_npz_format_given_an_hdf5_file(tmp_path):
  path = tmp_path / "kitchen.hdf5"
  with h5py.File(path, "w") as f:
    f["observations"] = np.zeros((3, 60))
  proc = run_cli("ingest", "--format", "npz", str(path), "--name", "n", "--data-dir", str(tmp_path / "d"))
  assert_error(proc, 1, str(path), "is an HDF5 file", "--format d4rl-hdf5")


def test_truncated_shard_and_damaged_metadata_are_one_line(guard, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(guard["source"], copy)
  shard = next(p for p in copy.iterdir() if ".tfrecord" in p.name)
  shard.write_bytes(shard.read_bytes()[:200])
  assert_error(run_cli("data", "info", str(copy), "--no-plot"), 1)
  (copy / "metadata.json").write_text("{not json")
  assert_error(run_cli("data", "info", str(copy), "--no-plot"), 1, "metadata.json", "not valid JSON")


def test_unknown_beam_runner_after_double_dash(guard, tmp_path):
  for argv in (("--", "--runner=NoSuchRunner"), ("--runner", "no.such.Runner")):
    assert_error(relabel(guard["source"], str(tmp_path / "out"), *argv), 2, "Beam runner")
  assert not (tmp_path / "out").exists()


def test_missing_path_is_one_line(tmp_path):
  assert_error(run_cli("data", "info", str(tmp_path / "nope")), 1, "no such dataset directory")


# ---------------------------------------------------------------------- concurrency

_HOLD = """
import sys, time
from relay_data import atomic
with atomic.atomic_directory(sys.argv[1]) as tmp:
  open(tmp + "/marker", "w").write("live")
  print(tmp, flush=True)
  while not __import__("os").path.exists(sys.argv[2]):
    time.sleep(0.1)
"""


@contextlib.contextmanager
def _holding(script, path, tmp_path):
  """Runs `script` on `path` in another process until the body ends (then it must exit 0);
  yields the process and the first line it printed (once it holds `path`)."""
  release = tmp_path / "release"
  holder = subprocess.Popen([sys.executable, "-c", script, str(path), str(release)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
  try:
    yield holder, holder.stdout.readline().strip()
  finally:
    release.write_text("")
    assert holder.wait(timeout=60) == 0


def test_second_writer_stops_with_the_pid_and_leaves_the_live_temp_dir(guard, tmp_path):
  output = tmp_path / "out"
  with _holding(_HOLD, output, tmp_path) as (holder, live_tmp):
    assert os.path.isdir(live_tmp)
    for extra in ((), ("--overwrite",)):
      proc = relabel(guard["source"], str(output), *extra)
      assert_error(proc, 1, f"is being written by pid {holder.pid}")
      assert open(os.path.join(live_tmp, "marker")).read() == "live"  # not deleted as "stale"
  assert (output / "marker").read_text() == "live"  # the first run finished normally
  assert not os.path.exists(paths.lock_path(str(output)))


_HOLD_LOCK = """
import os, sys, time
from relay_data import paths
with paths.output_lock(sys.argv[1]):
  print("locked", flush=True)
  while not os.path.exists(sys.argv[2]):
    time.sleep(0.1)
"""


def test_training_into_a_model_dir_being_written_stops_at_once(guard, tmp_path):
  model = tmp_path / "model"
  with _holding(_HOLD_LOCK, model, tmp_path) as (holder, line):
    assert line == "locked"
    proc = run_cli("train-il", "--agent", "gcbc", "--data", guard["relabeled"], "--out", str(model), "--steps", "5")
    assert_error(proc, 1, str(model), f"is being written by pid {holder.pid}")
    assert not model.exists()


def test_stale_lock_of_a_dead_pid_is_reclaimed(guard, tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  output = tmp_path / "out"
  lock = paths.lock_path(str(output))
  with open(lock, "w") as f:
    f.write(f"{dead.pid}\n")
  os.makedirs(tmp_path / ".out.tmp-deadbeef")  # the dead run's temp dir
  proc = relabel(guard["source"], str(output))
  assert proc.returncode == 0, proc.stderr
  assert rlds_io.num_examples(str(output)) > 0
  assert sorted(os.listdir(tmp_path)) == ["out"]  # stale temp dir and lock gone


def _wait_for(predicate, timeout, interval=0.2):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(interval)
  return False


def _leftovers(root):
  return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root)
                for n in dirs + files if ".incomplete" in n or ".tmp-" in n or n.endswith(".lock"))


@pytest.fixture
def interruptible_children():
  """Child processes start with SIGINT at its default disposition, as from a terminal.

  A test run started in the background without job control (`make test &` in a script, `nohup`)
  inherits SIGINT *ignored*; exec keeps an ignored signal ignored, so the relay child would
  never see KeyboardInterrupt and the interrupt tests would fail for a reason outside relay.
  A caught signal is reset to the default on exec, so installing Python's handler here is enough.
  """
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_interrupted_generate_reruns_cleanly(tmp_path, interruptible_children):
  """Ctrl-C, then kill -9, mid-generation; the rerun builds the dataset and nothing stale remains."""
  data_dir = tmp_path / "data"
  # 3 episodes: human-paced play makes one episode a matter of seconds, and the signal must land
  # while the build is still running.
  argv = [sys.executable, "-m", "relay", "generate", "--episodes", "3", "--workers", "2",
          "--data-dir", str(data_dir)]
  config_dir = data_dir / "kitchen_play" / "n3_s0"

  def started():
    return config_dir.exists() and any(".tmp-" in n for n in os.listdir(config_dir))

  for sig, code in ((signal.SIGINT, 130), (signal.SIGKILL, -9)):
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(started, 120), proc.communicate()
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    if sig == signal.SIGINT:
      assert "interrupted" in err and _leftovers(data_dir) == []
  proc = run_cli("generate", "--episodes", "3", "--workers", "1", "--data-dir", str(data_dir))
  assert proc.returncode == 0, proc.stderr
  assert "3 episodes at" in proc.stdout
  assert _leftovers(data_dir) == []
  assert rlds_io.num_examples(str(config_dir / generator.GENERATOR_VERSION)) == 3
  assert rlds_io.read_metadata(str(config_dir / generator.GENERATOR_VERSION))["generation"]["kept"] == 3


class _InterruptedWhileStarting:
  """A spawn context whose pool gets a Ctrl-C inside its constructor, once its workers are started
  (where a user's Ctrl-C lands when the box is busy: starting workers takes seconds)."""

  def Pool(self, workers):  # pylint: disable=invalid-name
    import multiprocessing.pool  # pylint: disable=import-outside-toplevel

    class Pool(multiprocessing.pool.Pool):

      def _repopulate_pool(self):
        started = super()._repopulate_pool()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs on the main thread at its next bytecode: here
        return started

    return Pool(workers, context=multiprocessing.get_context("spawn"))


def test_ctrl_c_while_the_worker_pool_starts_terminates_it(interruptible_children):
  """A SIGINT inside Pool() used to leave its workers and maintenance thread without a finalizer
  (at exit the thread respawned workers that died with a traceback on the user's terminal). It is
  held until the pool is whole, then raised, with the pool already terminated and joined."""
  import multiprocessing  # pylint: disable=import-outside-toplevel
  with pytest.raises(KeyboardInterrupt):
    generator._start_pool(2, context=_InterruptedWhileStarting())  # pylint: disable=protected-access
  assert multiprocessing.active_children() == []
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
  pool = generator._start_pool(1)  # pylint: disable=protected-access
  try:
    assert pool.apply(os.getpid) != os.getpid()  # without an interrupt: a working pool
  finally:
    pool.terminate()
    pool.join()


def test_interrupted_relabel_exits_130_leaves_nothing_and_reruns_cleanly(tmp_path, interruptible_children):
  """Ctrl-C mid-pipeline (Beam's in-process runner busy with tasks): exit 130 with one line, no
  output, temp dir or lock left; the rerun succeeds and equals an uninterrupted run byte for byte."""
  from pipelines import relabel as pipeline
  from relay_data import relabeled
  num_episodes = 60
  src = helpers.write_toy(tmp_path / "src", lengths=[60] * num_episodes)
  runs = tmp_path / "runs"
  out = runs / "out"
  flags = ("--window", "8", "--episodes-per-shard", "1")  # one Beam task per episode: many to go

  def progress_dirs():
    return [runs / d / "_progress" for d in (os.listdir(runs) if runs.exists() else [])
            if d.startswith(".out.tmp-") and os.path.isdir(runs / d / "_progress")]

  def tasks_done():
    return sum(1 for d in progress_dirs() for name in os.listdir(d) if name.isdigit())

  proc = subprocess.Popen([sys.executable, "-m", "relay", "relabel", "--source", src, "--level", "low",
                           "--output", str(out), *flags], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  assert _wait_for(lambda: tasks_done() > 0, 120, interval=0.01), proc.communicate()
  # Freeze the run to see where the signal lands: mid-pipeline, with most tasks still to run.
  proc.send_signal(signal.SIGSTOP)
  done = tasks_done()
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGCONT)
  _, err = proc.communicate(timeout=120)
  assert done < num_episodes, "the pipeline had finished before the signal"
  assert proc.returncode == 130, err
  assert [l for l in err.splitlines() if l.strip() and "%|" not in l] == ["relay relabel: interrupted"], err
  assert os.listdir(runs) == []  # no output, no temp dir, no lock

  rerun = run_cli("relabel", "--source", src, "--level", "low", "--output", str(out), *flags)
  assert rerun.returncode == 0, rerun.stderr
  assert os.listdir(runs) == ["out"]
  ref = tmp_path / "ref"
  pipeline.run_relabel(src, str(ref), relabeled.RelabelConfig("low", window=8),
                       pipeline=pipeline.PipelineConfig(episodes_per_shard=1), show_progress=False)
  assert tree_hash(out) == tree_hash(ref)


# ---------------------------------------------------------------------- a clean terminal

NOISE = ("Gym has been unmaintained", "AdroitHand", "Unparseable argument", "Discarding unparseable",
         "[reverb/cc/", "Downloading and preparing dataset", "downloaded and prepared", "\x1b[A",
         "apitools not found", "Using custom data configuration", "WARNING:", "Traceback")


def test_demo_at_its_smallest_size_prints_no_third_party_noise(tmp_path):
  out, log = tmp_path / "demo", tmp_path / "relay.log"
  proc = subprocess.run([sys.executable, "-m", "relay", "demo", "--out", str(out), "--episodes", "2",
                         "--steps", "50", "--goals", "1", "--rollouts", "1", "--max-steps", "50"],
                        cwd=REPO, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "RELAY_LOG": str(log)})
  terminal = proc.stdout + proc.stderr
  assert proc.returncode == 0, terminal
  for noise in NOISE:
    assert noise not in terminal, (noise, terminal)
  for heading in ("== [1] stack check", "== [2] generate", "== [3] relabel (low", "== [3] relabel (high",
                  "== [4] train relay IL", "== [5] evaluate"):
    assert heading in terminal
  assert "mean over frequent goals" in terminal            # the results table
  assert "docs/results.md" in terminal and "every stage runs end to end" in terminal
  assert f"third-party log output (Reverb, TensorFlow, workers): {log}" in terminal
  assert "[reverb/cc/" in log.read_text()                   # the chatter went to the log, not lost


class _StillActor:
  """A policy that commands zero joint velocity (the arm sags): enough to film a kitchen rollout."""

  def set_goal(self, goal):
    del goal

  def observe_first(self, timestep):
    del timestep

  def select_action(self, observation):
    del observation
    return np.zeros(9, np.float32)

  def observe(self, action, next_timestep):
    del action, next_timestep


def test_video_frame_stride_renders_every_nth_step():
  from relay_agents import evaluation
  from relay_data import kitchen
  goal = evaluation.EvalGoal(["microwave", "kettle", "light switch", "top burner"],
                             np.zeros(kitchen.GOAL_DIM, np.float32))
  every = evaluation.rollout(_StillActor(), goal, max_steps=7, seed=0, render=True, render_size=(32, 24))
  strided = evaluation.rollout(_StillActor(), goal, max_steps=7, seed=0, render=True, render_size=(32, 24),
                               render_every=3)
  assert len(every.frames) == 8                     # the first observation + 7 steps
  assert len(strided.frames) == 3                   # the first observation + steps 3 and 6
  assert np.array_equal(strided.frames[1], every.frames[3]) and np.array_equal(strided.frames[2], every.frames[6])
  for env in evaluation._ENVS.values():  # pylint: disable=protected-access
    env.close()  # free the EGL context now, not in a destructor at interpreter exit
  evaluation._ENVS.clear()  # pylint: disable=protected-access
  help_text = run_cli("eval", "--help").stdout
  assert "0.5 s per frame" in help_text and "--video-every" in help_text
