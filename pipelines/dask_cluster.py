"""A local `dask.distributed` cluster for Beam's DaskRunner, listening on loopback only.

`relay relabel --runner dask --dask-workers N` starts one of these for the run: N worker
processes of one thread each (the relabel tasks are CPU-bound numpy/TensorFlow work), scheduler
and workers bound to 127.0.0.1, no dashboard. For a real cluster, start `dask scheduler` and
`dask worker` processes yourself and pass `--dask-address HOST:PORT`.
"""
import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def local_cluster(n_workers: int, memory_limit: str = "auto") -> Iterator[str]:
  """Yields the scheduler address ("tcp://127.0.0.1:PORT") of a fresh local cluster."""
  if n_workers <= 0:
    raise ValueError(f"n_workers must be positive, got {n_workers}")
  from distributed import LocalCluster  # pylint: disable=import-outside-toplevel
  cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None, memory_limit=memory_limit, silence_logs=logging.ERROR)
  try:
    yield cluster.scheduler_address
  finally:
    cluster.close()


def client_flags(address: str, timeout_s: int = 30) -> list:
  """Beam flags that point the DaskRunner at `address` (HOST:PORT or tcp://HOST:PORT)."""
  if "://" not in address:
    address = f"tcp://{address}"
  return [f"--dask_client_address={address}", f"--dask_connection_timeout={timeout_s}"]
