"""The relabel pipeline on Beam's DaskRunner against a real 2-worker dask.distributed cluster."""
import os

import numpy as np
import pytest

from pipelines import dask_cluster, relabel as pipeline
from relay_data import relabeled
from relay_data.errors import DataError
from tests import helpers
from tests.test_relabel_pipeline import assert_same_output

CONFIG = relabeled.RelabelConfig("high", window=3, window_high=9, goals_per_step=4, seed=2)
SHARDING = pipeline.PipelineConfig(episodes_per_shard=2, chunk_size=16)


@pytest.fixture(scope="module")
def cluster():
  with dask_cluster.local_cluster(2) as address:
    assert address.startswith("tcp://127.0.0.1:")  # loopback only
    yield address


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return helpers.write_toy(tmp_path_factory.mktemp("src"), lengths=(12, 30, 7, 2, 25, 40, 9))


def test_dask_output_is_byte_identical_to_direct_runner(cluster, source, tmp_path):
  direct, dask = str(tmp_path / "direct"), str(tmp_path / "dask")
  a = pipeline.run_relabel(source, direct, CONFIG, pipeline=SHARDING, show_progress=False)
  b = pipeline.run_relabel(source, dask, CONFIG, pipeline=SHARDING, show_progress=False,
                           beam_args=["--runner=dask", *dask_cluster.client_flags(cluster)])
  assert f"--runner={pipeline.DASK_RUNNER}" in b["beam_options"] and "--dask_npartitions=4" in b["beam_options"]
  assert b["num_shards"] == 4 and b["counts"] == a["counts"]
  assert_same_output(direct, dask)
  assert relabeled.num_examples(dask) == len(relabeled.read_arrays(dask)["goal"])


def test_worker_errors_surface_unwrapped(cluster, tmp_path):
  def corrupt(i, ep):
    if i == 1:
      ep["observation"][3, 2] = np.inf

  src = helpers.write_unvalidated(tmp_path / "src", helpers.random_episodes([6, 8]), corrupt=corrupt)
  with pytest.raises(DataError, match="steps/observation/state.*NaN or inf \\(first at step 3\\)"):
    pipeline.run_relabel(src, str(tmp_path / "out"), CONFIG, show_progress=False,
                         beam_args=["--runner=dask", *dask_cluster.client_flags(cluster)])
  assert not (tmp_path / "out").exists()


def test_cli_runner_dask_on_a_running_scheduler(cluster, source, tmp_path, cli):
  out = str(tmp_path / "cli")
  proc = cli("relabel", "--source", source, "--level", "high", "--window", "3", "--window-high", "9",
             "--goals-per-step", "4", "--seed", "2", "--episodes-per-shard", "2", "--chunk-size", "16",
             "--output", out, "--runner", "dask", "--dask-address", cluster.replace("tcp://", ""), check=True)
  assert "7 episodes read" in proc.stdout
  ref = str(tmp_path / "ref")
  pipeline.run_relabel(source, ref, CONFIG, pipeline=SHARDING, show_progress=False)
  assert_same_output(out, ref)
