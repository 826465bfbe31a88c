"""Relabel pipeline: DirectRunner examples/s vs the pure core on the same episodes (ratio), and
peak memory of the pipeline as the dataset grows 4x (each size in a fresh process)."""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import report

CHILD = r"""
import json, resource, sys, time
import relay
from pipelines import relabel as p
from relay_data import relabeled
src, out = sys.argv[1], sys.argv[2]
t = time.time()
lineage = p.run_relabel(src, out, relabeled.RelabelConfig("low", window=30, goals_per_step=10))
print(json.dumps({"seconds": time.time() - t, "examples": lineage["counts"]["examples_written"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _source(root, episodes, length=500):
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  eps = ({"observation": rng.normal(size=(length, 59)).astype(np.float32),
          "action": rng.normal(size=(length, 9)).astype(np.float32), "episode_id": str(i)}
         for i in range(episodes))
  return rlds_io.write_episodes(eps, f"bench{episodes}", root, progress=False)


def _run(src, out):
  proc = subprocess.run([sys.executable, "-c", CHILD, src, out], capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  from relay_data import relabeled, rlds_io  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as root:
    small, large = _source(root, 16), _source(root, 64)
    r_small = _run(small, os.path.join(root, "out16"))
    r_large = _run(large, os.path.join(root, "out64"))
    config = relabeled.RelabelConfig("low", window=30, goals_per_step=10)
    episodes = list(rlds_io.iter_episodes(large))
    t = time.time()
    n = sum(len(relabeled.relabel_episode(config, e["observation"], e["goal_state"], e["action"], str(i))["goal"])
            for i, e in enumerate(episodes))
    core = n / (time.time() - t)
    report("pipeline (DirectRunner, 64 episodes) vs relabel core", r_large["examples"] / r_large["seconds"],
           "core", core, "(report the ratio)")
    ratio = r_large["peak_rss_mb"] / r_small["peak_rss_mb"]
    print(f"pipeline peak memory, 4x the episodes: {ratio:.2f}x  ({r_small['peak_rss_mb']:.0f} MB -> "
          f"{r_large['peak_rss_mb']:.0f} MB; target: flat, ~1.0x)")


if __name__ == "__main__":
  main()
