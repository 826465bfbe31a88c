"""Shared pytest setup: process env defaults (relay/__init__) before TF/JAX/MuJoCo load."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# One XLA compilation cache per test process (per xdist worker), inherited by the CLI subprocesses
# the tests start: many tests run `relay train-il/eval/finetune` on the same tiny networks, and
# without it each process spends ~13 s compiling what an earlier one already compiled. Compiled
# code is the same as a fresh compile, so results do not change; the cache is removed at exit.
_JAX_CACHE = tempfile.mkdtemp(prefix=f"relay-tests-jax-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import relay  # noqa: F401  (sets MUJOCO_GL/JAX_PLATFORMS/TF log level defaults)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*argv, timeout=600, check=False):
  """Runs `python -m relay ARGV` in a subprocess; returns CompletedProcess (text)."""
  proc = subprocess.run([sys.executable, "-m", "relay", *argv], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO)
  if check and proc.returncode != 0:
    raise AssertionError(f"relay {' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
  return proc


@pytest.fixture
def cli():
  return run_cli


@pytest.fixture(scope="session")
def kitchen_play_tiny(tmp_path_factory):
  """A real 2-episode kitchen play dataset built with the TFDS builder (shared by tests)."""
  from datasets.kitchen_play import KitchenPlay, KitchenPlayConfig
  config = KitchenPlayConfig(name="test2", description="tests", episodes=2, seed=0)
  builder = KitchenPlay(config=config, data_dir=str(tmp_path_factory.mktemp("play")), workers=1)
  builder.download_and_prepare()
  return builder.data_dir


@pytest.fixture(scope="session")
def tiny_ril_model(kitchen_play_tiny, tmp_path_factory):
  """A relay-IL model trained in seconds on `kitchen_play_tiny` (tests.helpers.train_tiny_ril);
  read-only for its users."""
  from tests.helpers import train_tiny_ril
  return train_tiny_ril(kitchen_play_tiny, tmp_path_factory.mktemp("tiny_ril"))
