"""A progress bar for Beam pipelines whose workers share the driver's filesystem.

Beam's Python runners report metrics only when a pipeline finishes (and the DirectRunner's
`run()` blocks until then), so counters cannot drive a live bar. Instead each task writes how
far it got to a small file of its own (`report`), and a thread in the driver sums those files
into a tqdm bar (`watch`). A retried task overwrites its own file, so nothing is counted twice.
Workers on other machines that cannot see the directory simply leave the bar still.
"""
import contextlib
import os
import threading
import uuid
from typing import Iterator


def report(directory: str, task: int, done: int) -> None:
  """Records that task `task` has finished `done` units (atomic; last write wins).

  Only the last path component is created: if the run's temp dir is gone (the run was
  interrupted or failed and cleaned up while this task was still going), the report is dropped
  rather than re-creating a stray temp dir next to the output.
  """
  try:
    os.mkdir(directory)
  except FileExistsError:
    pass
  except FileNotFoundError:
    return
  final = os.path.join(directory, f"{task:05d}")
  tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "w") as f:
      f.write(str(done))
    os.replace(tmp, final)
  except FileNotFoundError:
    return


def total_done(directory: str) -> int:
  """Units finished over all tasks that reported into `directory` so far."""
  done = 0
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return 0
  for name in names:
    if not name.isdigit():
      continue  # a temp file mid-rename
    try:
      with open(os.path.join(directory, name)) as f:
        done += int(f.read() or 0)
    except (OSError, ValueError):
      continue
  return done


@contextlib.contextmanager
def watch(directory: str, total: int, desc: str, unit: str, enabled: bool = True,
          interval_s: float = 0.5) -> Iterator[None]:
  """Shows a bar of `total_done(directory)` out of `total` while the body runs."""
  if not enabled:
    yield
    return
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
  stop = threading.Event()

  def update():
    bar.n = min(total, total_done(directory))
    bar.refresh()

  def poll():
    update()
    while not stop.wait(interval_s):
      update()
    update()  # what the last tasks reported just before the body returned

  thread = threading.Thread(target=poll, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    bar.close()
