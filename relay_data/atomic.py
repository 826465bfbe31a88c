"""Write-to-temp-then-rename helpers: a crash or bad input never leaves a half-written output."""
import contextlib
import os
import shutil
import uuid
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(final_path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temp dir next to `final_path`; renames it into place only if the body succeeds.

  The temp dir is a sibling (same filesystem, so the rename is atomic) named
  `.<name>.tmp-<uuid>`; it is removed on any exception. Stale temp dirs from a crashed earlier
  run are removed on entry, so a rerun starts clean.
  """
  final_path = os.path.abspath(final_path)
  parent, name = os.path.split(final_path)
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(final_path) and not overwrite:
    raise FileExistsError(f"{final_path} already exists (pass overwrite=True / --overwrite to replace it)")
  for entry in os.listdir(parent):
    if entry.startswith(f".{name}.tmp-"):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
  tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(final_path):
      shutil.rmtree(final_path)
    os.rename(tmp, final_path)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def save_figure(fig, png_path: str, dpi: int = 100) -> str:
  """Saves a matplotlib figure to `png_path` via a temp file and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig.tight_layout()
  tmp = png_path + ".tmp.png"
  try:
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, png_path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
  return png_path


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` via a temp file in the same directory: readers never see a torn file."""
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_json(path: str, value, **kwargs) -> str:
  """`json.dump(value)` to `path` atomically (see `write_text`)."""
  import json  # pylint: disable=import-outside-toplevel
  return write_text(path, json.dumps(value, indent=2, **kwargs))
