"""Output paths, dataset names and the write lock: what every writing command checks first.

The rules (each a UsageError, exit 2, raised before any work is done):
  * a dataset name (`--name`) is a plain name: lower_snake_case, at most 64 characters, so no
    separator, no `..`, no absolute path, and it can never point outside the output directory;
  * an output is never a source, never inside one and never holds one, with or without
    --overwrite (so an overwrite cannot delete or change what it reads);
  * an output that must be a directory is not an existing file; a directory argument such as
    `--data-dir` is not a file; an existing output needs --overwrite.
Two runs writing the same output are kept apart by `output_lock` (a BusyError, exit 1, names
the pid holding it); the lock of a process that died is released by the kernel and reclaimed.
"""
import contextlib
import errno
import fcntl
import os
import re
from typing import Iterable, Iterator, Optional

from relay_data.errors import BusyError, UsageError

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def check_name(name: str, flag: str = "--name") -> str:
  """A dataset name: lower_snake_case starting with a letter, at most MAX_NAME_LENGTH chars."""
  if not name or len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
    shown = name if len(name) <= 80 else name[:77] + "..."
    raise UsageError(f"{flag} {shown!r} is not a plain dataset name: use lower_snake_case (letters, digits, "
                     f"underscores), starting with a letter, at most {MAX_NAME_LENGTH} characters")
  return name


def _real(path: str) -> str:
  return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def is_within(path: str, root: str) -> bool:
  """True when `path` is `root` or lies below it (symlinks resolved)."""
  path, root = _real(path), _real(root)
  return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_directory_arg(path: str, flag: str) -> str:
  """A directory argument (`--data-dir`) must not be, or lie below, an existing file."""
  probe = os.path.abspath(path)
  while probe and not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if os.path.exists(probe) and not os.path.isdir(probe):
    raise UsageError(f"{flag} {path}: {probe} is a file, not a directory")
  return path


def looks_like_dataset(path: str) -> bool:
  """A TFDS dataset dir (dataset_info.json here), or a dir holding one one or two levels below
  (`version/`, or `name/version/` as a relabel output is laid out for `tfds.load`)."""
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return True
  try:
    for d in os.listdir(path):
      sub = os.path.join(path, d)
      if os.path.isfile(os.path.join(sub, "dataset_info.json")):
        return True
      if os.path.isdir(sub) and any(os.path.isfile(os.path.join(sub, v, "dataset_info.json"))
                                    for v in os.listdir(sub)):
        return True
  except OSError:
    return False
  return False


def check_output(output: str, flag: str, sources: Iterable[Optional[str]] = (), overwrite: bool = False,
                 kind: str = "dataset") -> str:
  """Refuses an output that overlaps a source, is of the wrong kind, or exists without --overwrite.

  `kind`: "dataset" (a directory replaced as a whole: an existing one needs `overwrite`, and is
  replaced only if it is a dataset or empty, never some other directory such as `.`), "model"
  (a directory written in place: it may exist) or "file" (a PNG, JSON, video, log). `sources`
  are the paths the command reads (datasets, models, input files); None entries are skipped.
  """
  for source in sources:
    if not source:
      continue
    if is_within(output, source):
      raise UsageError(f"{flag} {output} is {'the source' if _real(output) == _real(source) else 'inside the source'} "
                       f"{source}; write the output somewhere else (the source is never changed)")
    if is_within(source, output):
      raise UsageError(f"{flag} {output} holds the source {source}; "
                       f"write the output somewhere else (the source is never changed)")
  parent = os.path.dirname(os.path.abspath(output))
  check_directory_arg(parent, f"{flag} {output}: parent")
  if kind in ("dataset", "model"):
    if os.path.exists(output) and not os.path.isdir(output):
      raise UsageError(f"{flag} {output} is a file; give a directory path (nothing was changed)")
  if kind == "dataset" and os.path.exists(output):
    if not overwrite:
      raise UsageError(f"{flag} {output} already exists (pass --overwrite to replace it)")
    if os.listdir(output) and not looks_like_dataset(output):
      raise UsageError(f"{flag} {output} exists and is not a dataset; --overwrite replaces only a dataset "
                       "(or an empty directory), so choose a new path or remove it yourself")
  elif kind == "file" and os.path.isdir(output):
    raise UsageError(f"{flag} {output} is a directory; give a file path")
  return output


def lock_path(final_path: str) -> str:
  parent, name = os.path.split(os.path.abspath(final_path))
  return os.path.join(parent, f".{name}.lock")


def _read_pid(fd: int) -> int:
  try:
    return int(os.pread(fd, 32, 0).decode().strip() or 0)
  except (OSError, ValueError):
    return 0


@contextlib.contextmanager
def output_lock(final_path: str) -> Iterator[str]:
  """Holds the write lock of `final_path` (a `.<name>.lock` file beside it) for the body.

  The lock is a `flock` on that file, which holds the owner's pid: a second writer fails at once
  with BusyError naming that pid; the kernel drops the lock when its owner dies, so a stale lock
  file is reclaimed by the next writer. The file is removed on release (an inode check makes the
  remove-while-another-opens race safe).
  """
  path = lock_path(final_path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      pid = _read_pid(fd)
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise BusyError(os.path.abspath(final_path), pid) from None
      raise
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)  # the previous owner removed the file between our open and lock: retry
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield path
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)
    os.close(fd)
