"""Errors a user can cause, each reported by the CLI as one clear line (no traceback).

Three kinds, one exit code each (the mapping lives in `relay.cli.main`):
  UsageError   a bad flag, argument or combination of them          exit 2, with a `--help` hint
  DataError    bad input data: names the file, episode and field     exit 1
  BusyError    the output is being written by another live process  exit 1
They live here, not in the CLI package, so library code (paths, writers, readers) can raise them.
"""


class RelayError(Exception):
  """Base of the errors above; `exit_code` is what `relay` exits with."""
  exit_code = 1


class DataError(RelayError, ValueError):
  """Bad input data: names the file, episode and field at fault.

  Subclasses ValueError so library callers can catch the usual exception type.
  """

  def __init__(self, message: str, *, path=None, episode=None, field=None):
    where = []
    if path is not None:
      where.append(f"file {path}")
    if episode is not None:
      where.append(f"episode {episode}")
    if field is not None:
      where.append(f"field '{field}'")
    self.path, self.episode, self.field = path, episode, field
    super().__init__(f"{', '.join(where)}: {message}" if where else message)


class UsageError(RelayError):
  """A bad flag or argument combination; reported as `relay <cmd>: error: ...`, exit code 2."""
  exit_code = 2


class BusyError(RelayError):
  """Another live process holds the write lock of an output (see `relay_data.paths.output_lock`)."""

  def __init__(self, path: str, pid: int):
    self.path, self.pid = path, pid
    who = f"pid {pid}" if pid else "another process"
    super().__init__(f"{path} is being written by {who}; wait for it to finish (a lock of a "
                     "process that died is reclaimed automatically)")
