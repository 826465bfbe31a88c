"""Check every component of the pinned stack for real and print a table of OK/FAIL with versions.

Each check does actual work, not just an import: it starts a Reverb server on localhost and
round-trips an item, builds a one-episode RLDS dataset with TFDS in a data dir, runs a
one-element Beam DirectRunner pipeline, builds and steps an Acme JAX BC learner, steps
FrankaKitchen-v1 and renders one offscreen frame. Exit code 0 when all pass, 1 otherwise,
with the broken component named.
"""
import argparse
import dataclasses
import importlib.metadata as md
import os
import sys
import tempfile
import time
import traceback
from typing import Dict, List, Optional


@dataclasses.dataclass
class CheckResult:
  name: str
  ok: bool
  version: str
  detail: str
  seconds: float


def _version(*packages: str) -> str:
  out = []
  for p in packages:
    try:
      out.append(f"{p} {md.version(p)}")
    except md.PackageNotFoundError:
      out.append(f"{p} (missing)")
  return ", ".join(out)


def check_reverb(port: int = 0) -> str:
  """Starts a server on localhost:`port` (0 = any free port) and round-trips one item."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import reverb  # pylint: disable=import-outside-toplevel
  table = reverb.Table.queue("doctor", max_size=10)
  try:
    server = reverb.Server(tables=[table], port=port or None)
  except Exception as e:  # reverb raises RuntimeError/ValueError subclasses
    raise RuntimeError(f"cannot start a Reverb server on localhost:{port}: {e}") from e
  try:
    client = reverb.Client(f"localhost:{server.port}")
    payload = np.arange(4, dtype=np.float32)
    client.insert([payload], {"doctor": 1.0})
    sample = next(client.sample("doctor", num_samples=1))
    got = np.asarray(sample[0].data[0])
    if not np.array_equal(got, payload):
      raise RuntimeError(f"round trip changed the item: {got} != {payload}")
    return f"server localhost:{server.port}, item round trip"
  finally:
    server.stop()


def check_tfds(data_dir: Optional[str] = None) -> str:
  """Builds a one-episode RLDS dataset into `data_dir` (default: a temp dir) and reads it back."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="relay_doctor_") as tmp:
    root = data_dir or tmp
    episode = {
        "observation": np.zeros((3, 2), np.float32),
        "action": np.ones((3, 1), np.float32),
    }
    path = rlds_io.write_episodes([episode], name="doctor_episode", data_dir=root,
                                  overwrite=True, progress=False)
    ds = tfds.builder_from_directory(path).as_dataset(split="train")
    steps = [len(list(ep["steps"])) for ep in ds]
    if steps != [3]:
      raise RuntimeError(f"read back episodes with {steps} steps, wrote one with 3")
    return f"1-episode RLDS dataset built and read back ({'given dir' if data_dir else 'temp dir'})"


def check_beam() -> str:
  """Runs a one-element pipeline on the DirectRunner and checks its output file."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="relay_doctor_") as tmp:
    prefix = os.path.join(tmp, "out")
    # An explicit flag list: without one, Beam parses this process's own argv (`relay doctor ...`).
    with beam.Pipeline(options=PipelineOptions(flags=[], runner="DirectRunner")) as p:
      _ = p | beam.Create([20]) | beam.Map(lambda x: str(x + 1)) | beam.io.WriteToText(prefix)
    lines = [l.strip() for f in sorted(os.listdir(tmp)) for l in open(os.path.join(tmp, f))]
    if lines != ["21"]:
      raise RuntimeError(f"pipeline wrote {lines}, expected ['21']")
    return "DirectRunner 1-element pipeline"


def check_acme() -> str:
  """Imports acme through relay's compat module and takes two JAX BC learner steps."""
  from relay_agents import acme_compat  # pylint: disable=import-outside-toplevel
  import haiku as hk  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from acme import types  # pylint: disable=import-outside-toplevel
  from acme.agents.jax import bc  # pylint: disable=import-outside-toplevel
  from acme.jax import networks as networks_lib  # pylint: disable=import-outside-toplevel
  from acme.utils import loggers  # pylint: disable=import-outside-toplevel

  net = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(2)(x)))
  network = networks_lib.FeedForwardNetwork(
      init=lambda key: net.init(key, np.zeros((1, 3), np.float32)),
      apply=lambda params, x, is_training=False, key=None: net.apply(params, x))

  def batches():
    while True:
      o = np.ones((8, 3), np.float32)
      yield types.Transition(o, np.zeros((8, 2), np.float32), np.zeros(8, np.float32),
                             np.ones(8, np.float32), o)

  learner = bc.BCLearner(network=network, random_key=jax.random.PRNGKey(0),
                         loss_fn=bc.mse(lambda out, key: out), optimizer=optax.sgd(1e-2),
                         demonstrations=batches(), num_sgd_steps_per_step=1,
                         logger=loggers.NoOpLogger())
  learner.step()
  learner.step()
  return f"JAX BC learner stepped (compat patches: {', '.join(acme_compat.PATCHES) or 'none'})"


def check_kitchen() -> str:
  """Resets and steps FrankaKitchen-v1 with random actions."""
  from relay_data import kitchen  # pylint: disable=import-outside-toplevel
  env = kitchen.make_env(max_episode_steps=20)
  try:
    obs, _ = env.reset(seed=0)
    for _ in range(10):
      obs, *_ = env.step(env.action_space.sample())
    return f"FrankaKitchen-v1: reset + 10 steps, observation {obs['observation'].shape}"
  finally:
    env.close()


def check_render() -> str:
  """Renders one 64x48 offscreen frame (MUJOCO_GL, default egl)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from relay_data import kitchen  # pylint: disable=import-outside-toplevel
  env = kitchen.make_env(render_mode="rgb_array", width=64, height=48)
  try:
    env.reset(seed=0)
    frame = np.asarray(env.render())
    if frame.shape != (48, 64, 3) or frame.std() < 1:
      raise RuntimeError(f"bad frame shape {frame.shape} / std {frame.std():.2f}")
    return f"offscreen frame {frame.shape} (MUJOCO_GL={os.environ.get('MUJOCO_GL')})"
  finally:
    env.close()


def run_checks(reverb_port: int = 0, data_dir: Optional[str] = None,
               only: Optional[List[str]] = None) -> List[CheckResult]:
  checks: Dict[str, tuple] = {
      "reverb": (lambda: check_reverb(reverb_port), ("dm-reverb",)),
      "tfds+rlds": (lambda: check_tfds(data_dir), ("tensorflow-datasets", "rlds", "tensorflow-cpu")),
      "beam": (check_beam, ("apache-beam",)),
      "acme": (check_acme, ("dm-acme", "jax", "dm-haiku", "optax")),
      "kitchen": (check_kitchen, ("mujoco", "gymnasium-robotics")),
      "render": (check_render, ("mujoco",)),
  }
  results = []
  for name, (fn, packages) in checks.items():
    if only and name not in only:
      continue
    start = time.time()
    try:
      detail, ok = fn(), True
    except Exception as e:  # pylint: disable=broad-except
      detail, ok = f"{type(e).__name__}: {e}".splitlines()[0][:200], False
      if os.environ.get("RELAY_DEBUG"):
        traceback.print_exc()
    results.append(CheckResult(name, ok, _version(*packages), detail, time.time() - start))
  return results


def format_table(results: List[CheckResult]) -> str:
  rows = [("component", "status", "versions", "detail")]
  rows += [(r.name, "OK" if r.ok else "FAIL", r.version, r.detail) for r in results]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)


CHECK_NAMES = ["reverb", "tfds+rlds", "beam", "acme", "kitchen", "render"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--reverb-port", type=int, default=0,
                      help="port for the test Reverb server on localhost (default: any free port)")
  parser.add_argument("--data-dir", default=None,
                      help="directory to build the 1-episode TFDS dataset in (default: a temp dir)")
  parser.add_argument("--only", nargs="+", choices=CHECK_NAMES, default=None,
                      help="run only these checks")


def run(args: argparse.Namespace) -> int:
  print(f"relay doctor (python {sys.version.split()[0]})", flush=True)
  results = run_checks(args.reverb_port, args.data_dir, args.only)
  print(format_table(results))
  failed = [r.name for r in results if not r.ok]
  if failed:
    print(f"FAIL: broken component(s): {', '.join(failed)}", file=sys.stderr)
    return 1
  print(f"all {len(results)} checks OK")
  return 0
