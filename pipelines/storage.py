"""Output-side file helpers on `tf.io.gfile` (local paths and gs:// / s3:// / hdfs:// alike).

Same contract as `relay_data.atomic` (temp path, then rename; nothing half-written is ever
visible), but through TensorFlow's filesystems so pipeline workers can write to cluster storage.
On object stores a directory rename is a copy, so there "atomic" means "all or nothing visible
under the final name" only up to the store's own guarantees.
"""
import contextlib
import json
import os
import uuid
from typing import Any, Iterator


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.gfile


def is_local(path: str) -> bool:
  return "://" not in path


def absolute(path: str) -> str:
  return os.path.abspath(path) if is_local(path) else path.rstrip("/")


@contextlib.contextmanager
def atomic_directory(final_path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a hidden temp sibling `.<name>.tmp-<id>` of `final_path`, renamed into place if the
  body succeeds and removed if it fails. Stale temp siblings of a killed run are removed first.

  A local path goes through `relay_data.atomic.atomic_directory`, which also holds the output's
  write lock (a second run stops naming the pid instead of deleting this run's live temp dir);
  a cluster path (gs://, s3://, hdfs://) has no lock, only the gfile temp-then-rename."""
  if is_local(final_path):
    from relay_data import atomic  # pylint: disable=import-outside-toplevel
    with atomic.atomic_directory(final_path, overwrite=overwrite) as tmp:
      yield tmp
    return
  gfile = _gfile()
  final_path = absolute(final_path)
  parent, name = final_path.rsplit("/", 1)
  gfile.makedirs(parent)
  if gfile.exists(final_path) and not overwrite:
    raise FileExistsError(f"{final_path} already exists (pass overwrite=True / --overwrite to replace it)")
  for entry in gfile.listdir(parent):
    if entry.rstrip("/").startswith(f".{name}.tmp-"):
      gfile.rmtree(f"{parent}/{entry.rstrip('/')}")
  tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
  gfile.makedirs(tmp)
  try:
    yield tmp
    if gfile.exists(final_path):
      gfile.rmtree(final_path)
    gfile.rename(tmp, final_path)
  finally:
    if gfile.exists(tmp):
      gfile.rmtree(tmp)


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` via a temp file and a rename (a retried task overwrites; readers never see a
  torn file)."""
  gfile = _gfile()
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  with gfile.GFile(tmp, "wb") as f:
    f.write(data)
  gfile.rename(tmp, path, overwrite=True)


def write_json(path: str, value: Any) -> None:
  write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(path: str) -> Any:
  with _gfile().GFile(path, "rb") as f:
    return json.load(f)
