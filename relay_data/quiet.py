"""Third-party chatter: dropped at its source where we can, otherwise sent to a log file.

A user of `relay` should see stage headings, one progress bar per stage and results. The stack
adds noise none of which is about the user's run:
  * import-time notices: old gym's "unmaintained" banner (pulled in by `acme.wrappers`) and
    gymnasium-robotics' Adroit reward notice (FrankaKitchen is not an Adroit env). Both are
    looked up in a notices dict at import; `drop_import_notices` empties our entries first.
  * Python logging from Beam ("apitools not found", a failed worker's traceback), absl/TFDS
    ("Using custom data configuration"), TensorFlow and the `warnings` module: to the log file.
  * C++ logs written straight to file descriptor 2 (Reverb's "[reverb/cc/...]" lines, gRPC,
    TF): `redirect_native_stderr` points fd 2 at the log file while Python's `sys.stderr` (our
    messages, tqdm bars, tracebacks) keeps the terminal. Worker processes inherit fd 2, so their
    chatter lands in the log too.
TFDS's own "Downloading and preparing dataset" prints and nested progress bars are silenced in
the builders (`relay_data.rlds_io.QuietBuilderMixin`). `RELAY_DEBUG=1` keeps everything visible.
"""
import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Optional


def debug() -> bool:
  return bool(os.environ.get("RELAY_DEBUG"))


def drop_import_notices() -> None:
  """Empties the notices gym and gymnasium-robotics print on import (call before importing them)."""
  if debug():
    return
  try:
    from farama_notifications import notifications  # pylint: disable=import-outside-toplevel
    notifications.pop("gymnasium_robotics", None)
  except ImportError:
    pass
  try:
    import gym_notices.notices as gym_notices  # pylint: disable=import-outside-toplevel
    gym_notices.notices.clear()
  except ImportError:
    pass


def _python_logging_to(stream) -> list:
  """Every Python log record (Beam, absl/TFDS, TensorFlow, `warnings`) at WARNING+ to `stream`
  only; returns the root handlers it replaced."""
  root = logging.getLogger()
  replaced = list(root.handlers)
  for handler in replaced:
    root.removeHandler(handler)
  handler = logging.StreamHandler(stream)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  root.addHandler(handler)
  root.setLevel(logging.WARNING)
  logging.captureWarnings(True)
  try:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:
    pass
  return replaced


def default_log_path() -> str:
  """`$RELAY_LOG`, else relay-<uid>.log in the temp dir (one per user, appended)."""
  return os.environ.get("RELAY_LOG") or os.path.join(tempfile.gettempdir(), f"relay-{os.getuid()}.log")


_redirected: Optional[str] = None
MAX_LOG_BYTES = 20 << 20  # the log starts over once it outgrows this (it is chatter, not a record)


def log_path() -> Optional[str]:
  """Where native stderr goes while `redirect_native_stderr` is active (None otherwise)."""
  return _redirected


@contextlib.contextmanager
def redirect_native_stderr(path: Optional[str] = None) -> Iterator[Optional[str]]:
  """Sends file descriptor 2 and Python logging to `path` (appending); sys.stderr keeps the terminal.

  Re-entrant (an inner call inside an active one does nothing). Yields the log path, or None
  when nothing was redirected (RELAY_DEBUG, or the log cannot be opened).
  """
  global _redirected
  if _redirected is not None or debug():
    yield _redirected
    return
  path = path or default_log_path()
  try:
    start_over = os.path.getsize(path) > MAX_LOG_BYTES if os.path.exists(path) else False
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if start_over else 0), 0o600)
  except OSError:
    yield None  # no log file: keep the noise rather than fail the command
    return
  sys.stderr.flush()
  saved_fd = os.dup(2)
  saved_stderr = sys.stderr
  os.dup2(log_fd, 2)
  os.close(log_fd)
  sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=saved_stderr.encoding or "utf-8",
                         errors="backslashreplace")
  _redirected = path
  log_stream = os.fdopen(os.dup(2), "w", buffering=1, errors="backslashreplace")
  replaced = _python_logging_to(log_stream)
  try:
    yield path
  finally:
    root = logging.getLogger()
    for handler in list(root.handlers):
      root.removeHandler(handler)
    for handler in replaced:
      root.addHandler(handler)
    logging.captureWarnings(False)
    log_stream.close()
    sys.stderr.flush()
    sys.stderr.close()
    sys.stderr = saved_stderr
    os.dup2(saved_fd, 2)
    os.close(saved_fd)
    _redirected = None
