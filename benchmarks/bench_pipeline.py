"""Relabel pipeline and reader: this code vs the baseline code, alternated in one run on one input.

Baseline: the code at commit BASELINE (the relabel pipeline before issue 13: per-shard TFDS
readers with skip/take, one example per record), extracted at bench time with `git archive`
into a temp dir and run from there, so both sides use this venv and this input. Every run is a
fresh process; CPU is the run's process + child CPU time after imports (interpreter start-up and
`import tensorflow/apache_beam` excluded for both sides).

Lines printed:
  pipeline new/old (wall; median of alternated rounds), low-level examples per CPU-second (k=10)
  read into batches of 256, new/old (examples/s over the first READ_EXAMPLES examples)
  peak memory (max RSS) of the new pipeline on 4x the episodes
Both sides write the same examples (no action chunks: the baseline predates them); one more run
reports the new pipeline with `relay relabel`'s default chunks of 10 actions per example.
Sizes: EPISODES episodes of LENGTH steps (59-d states, 30-d goals, 9-d actions), W=30, k=10.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

BASELINE = "5dc3386"   # main before issue 13
EPISODES, SMALL, LENGTH = 256, 64, 500
ROUNDS = 2
READ_EXAMPLES = 100_000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD_RELABEL = r"""
import json, resource, sys, time
import relay, tensorflow, tensorflow_datasets, apache_beam  # imports excluded from the timing
from pipelines import relabel as p
from relay_data import relabeled
src, out = sys.argv[1], sys.argv[2]
def cpu():
  s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
t, c = time.perf_counter(), cpu()
# Chunk size: argv[3], "1" by default (the baseline's output: it predates action chunks); a baseline
# tree without the option ignores it.
chunk = {"action_chunk": int(sys.argv[3]) if len(sys.argv) > 3 else 1} \
    if "action_chunk" in relabeled.RelabelConfig.__dataclass_fields__ else {}
lineage = p.run_relabel(src, out, relabeled.RelabelConfig("low", window=30, goals_per_step=10, **chunk),
                        show_progress=False)
import google.protobuf
from google.protobuf.internal import api_implementation
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": cpu() - c,
                  "examples": lineage["counts"]["examples_written"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "protobuf": f"{google.protobuf.__version__} ({api_implementation.Type()})"}))
"""

CHILD_READ = r"""
import json, sys, time
import relay, tensorflow, tensorflow_datasets
from relay_data import relabeled
path, limit, new = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "new"
t, n = time.perf_counter(), 0
if new:
  for batch in relabeled.iter_batches(path, 256):
    n += len(batch["goal"])
    if n >= limit:
      break
else:
  for batch in relabeled.load(path).take(limit).batch(256).as_numpy_iterator():
    n += len(batch["goal"])
print(json.dumps({"seconds": time.perf_counter() - t, "examples": n}))
"""


def _source(root, episodes, length=LENGTH):
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  eps = ({"observation": rng.normal(size=(length, 59)).astype(np.float32),
          "action": rng.normal(size=(length, 9)).astype(np.float32), "episode_id": str(i)}
         for i in range(episodes))
  return rlds_io.write_episodes(eps, f"bench{episodes}", root, progress=False)


def baseline_tree(root):
  """The baseline's packages in `root/baseline` (None, with a reason printed, if git cannot)."""
  dest = os.path.join(root, "baseline")
  os.makedirs(dest)
  try:
    archive = subprocess.run(["git", "-C", REPO, "archive", BASELINE, "relay", "relay_data", "pipelines"],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True, timeout=60)
  except (OSError, subprocess.SubprocessError) as e:
    print(f"baseline {BASELINE} unavailable ({e}); old/new ratios skipped")
    return None
  return dest


def _child(code, args, pythonpath):
  """Runs `code` in a fresh interpreter with `pythonpath`'s packages first (cwd is neutral:
  `python -c` puts the cwd on sys.path)."""
  env = dict(os.environ, PYTHONPATH=pythonpath)
  proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False,
                        cwd=tempfile.gettempdir())
  if proc.returncode:
    raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
  return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main():
  load_at_start = _load()
  with tempfile.TemporaryDirectory(prefix="relay_bench_pipeline_") as root:
    src, small = _source(root, EPISODES), _source(root, SMALL)
    old_tree = baseline_tree(root)
    new_runs, old_runs = [], []
    for r in range(ROUNDS):
      for side, tree, runs in (("old", old_tree, old_runs), ("new", REPO, new_runs)):
        if tree is None:
          continue
        out = os.path.join(root, f"{side}{r}")
        shutil.rmtree(out, ignore_errors=True)
        runs.append(_child(CHILD_RELABEL, [src, out], tree))
    new_s = float(np.median([x["seconds"] for x in new_runs]))
    examples = new_runs[0]["examples"]
    cpu = float(np.median([x["cpu"] for x in new_runs]))
    print(f"relabel pipeline, {EPISODES} episodes x {LENGTH} steps, low level W=30 k=10 ({examples:,} examples), "
          f"median of {ROUNDS} alternated rounds:")
    if old_runs:
      old_s = float(np.median([x["seconds"] for x in old_runs]))
      assert old_runs[0]["examples"] == examples, (old_runs[0]["examples"], examples)
      old_cpu = float(np.median([x["cpu"] for x in old_runs]))
      print(f"  new vs old ({BASELINE}) wall: {old_s / new_s:.1f}x  ({new_s:.2f} s vs {old_s:.2f} s; "
            f"CPU {cpu:.2f} s vs {old_cpu:.2f} s = {old_cpu / cpu:.1f}x)  target >= 10x")
    print(f"  new: {examples / cpu / 1e6:.2f}M low-level examples per CPU-second end to end "
          f"({examples / new_s / 1e6:.2f}M/s wall)  target >= 1M per CPU-s")
    runs_cpu = ", ".join(f"{x['cpu']:.2f}" for x in new_runs)
    print(f"  (CPU of each new run: {runs_cpu} s; protobuf "
          f"{new_runs[0]['protobuf']}; load average 1/5/15 min {load_at_start} at start, {_load()} now)")

    if old_runs:
      reads = {"new": [], "old": []}
      for _ in range(ROUNDS):
        reads["old"].append(_child(CHILD_READ, [os.path.join(root, "old0"), str(READ_EXAMPLES), "old"], old_tree))
        reads["new"].append(_child(CHILD_READ, [os.path.join(root, "new0"), str(READ_EXAMPLES), "new"], REPO))
      rate = {k: float(np.median([x["examples"] / x["seconds"] for x in v])) for k, v in reads.items()}
      print(f"read into batches of 256 (first {READ_EXAMPLES:,} examples): new vs old {rate['new'] / rate['old']:.1f}x  "
            f"({rate['new']:,.0f} vs {rate['old']:,.0f} examples/s)  target >= 25x")

    chunked = _child(CHILD_RELABEL, [src, os.path.join(root, "chunked"), "10"], REPO)
    print(f"  new, relay relabel's default chunks of 10 actions per example (one run; +90 floats per example, "
          f"no target): {chunked['examples'] / chunked['cpu'] / 1e6:.2f}M examples per CPU-second")

    small_run = _child(CHILD_RELABEL, [small, os.path.join(root, "small")], REPO)
    large = max(x["peak_rss_mb"] for x in new_runs)
    print(f"new pipeline peak memory, {EPISODES} vs {SMALL} episodes: {large / small_run['peak_rss_mb']:.2f}x  "
          f"({small_run['peak_rss_mb']:.0f} MB -> {large:.0f} MB)  target <= 1.1x")


if __name__ == "__main__":
  main()
