"""Shared pytest setup: process env defaults (relay/__init__) before TF/JAX/MuJoCo load."""
import os
import subprocess
import sys

import pytest

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
