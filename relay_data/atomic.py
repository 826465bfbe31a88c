"""Write-to-temp-then-rename: a crash, bad input or a concurrent run never leaves a half-written output.

Two helpers, used by every writer:
  atomic_directory(final)  a dataset or model directory, built in a temp sibling under the
                           output's write lock (`relay_data.paths.output_lock`), renamed into place
  atomic_file(final)       one file (JSON, PNG, video, pickle), written to a temp sibling, renamed
Both put the temp path beside the final one (same filesystem, so the rename is atomic) and
remove it on any exception.
"""
import contextlib
import os
import shutil
import uuid
from typing import Iterator

from relay_data import paths


def _temp_sibling(final_path: str, tag: str) -> str:
  parent, name = os.path.split(final_path)
  return os.path.join(parent, f".{name}.{tag}-{uuid.uuid4().hex[:8]}")


def remove_stale_temps(final_path: str) -> None:
  """Removes temp siblings of `final_path` left by a run that died (call under its lock only)."""
  parent, name = os.path.split(os.path.abspath(final_path))
  if not os.path.isdir(parent):
    return
  for entry in os.listdir(parent):
    if entry.startswith((f".{name}.tmp-", f".{name}.old-")):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final_path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temp dir next to `final_path`; renames it into place only if the body succeeds.

  The output's write lock is held throughout, so a second run on the same output fails at once
  (BusyError naming the pid) instead of deleting this run's live temp dir; under the lock, temp
  dirs of crashed earlier runs are removed, so a rerun starts clean. With `overwrite`, the old
  output is moved aside and deleted only after the new one is in place.
  """
  final_path = os.path.abspath(final_path)
  parent = os.path.dirname(final_path)
  os.makedirs(parent, exist_ok=True)
  with paths.output_lock(final_path):
    if os.path.lexists(final_path):
      if not overwrite:
        raise FileExistsError(f"{final_path} already exists (pass overwrite=True / --overwrite to replace it)")
      if not os.path.isdir(final_path) or os.path.islink(final_path):
        raise NotADirectoryError(20, "exists and is not a directory (nothing was changed)", final_path)
    remove_stale_temps(final_path)
    tmp = _temp_sibling(final_path, "tmp")
    os.makedirs(tmp)
    try:
      yield tmp
      old = None
      if os.path.exists(final_path):
        old = _temp_sibling(final_path, "old")
        os.rename(final_path, old)
      os.rename(tmp, final_path)
      if old:
        shutil.rmtree(old, ignore_errors=True)
    finally:
      if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final_path: str) -> Iterator[str]:
  """Yields a temp path beside `final_path` (same extension); renames it over `final_path` on success.

  The extension is kept so writers that choose a format by suffix (matplotlib, imageio) still do.
  """
  if os.path.isdir(final_path):
    raise IsADirectoryError(21, "is a directory, expected a file path", final_path)
  parent = os.path.dirname(os.path.abspath(final_path))
  os.makedirs(parent, exist_ok=True)
  ext = os.path.splitext(final_path)[1]
  tmp = _temp_sibling(os.path.abspath(final_path), "tmp") + ext
  try:
    yield tmp
    os.replace(tmp, final_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_figure(fig, png_path: str, dpi: int = 100) -> str:
  """Saves a matplotlib figure to `png_path` atomically and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig.tight_layout()
  try:
    with atomic_file(png_path) as tmp:
      fig.savefig(tmp, dpi=dpi)
  finally:
    plt.close(fig)
  return png_path


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically: readers never see a torn file."""
  with atomic_file(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
  return path


def write_json(path: str, value, **kwargs) -> str:
  """`json.dump(value)` to `path` atomically (see `write_text`)."""
  import json  # pylint: disable=import-outside-toplevel
  return write_text(path, json.dumps(value, indent=2, **kwargs))
