"""The `relay` command line: one subcommand per user task.

Each subcommand lives in the module that owns its concern and contributes two functions,
`add_arguments(parser)` and `run(args) -> int`; this file only wires them up, so `relay --help`
stays fast (heavy imports happen inside `run`).

Exit codes, the same for every command (`main` is the one place that maps errors to them):
  0    success
  1    bad data or a failed operation a user can cause (missing/unreadable/truncated file, a path
       that is a file where a directory is needed, permission denied, disk full, an output being
       written by another run): one line naming the file, episode or field
  2    bad usage (unknown flag, bad value, conflicting flags): one line and a `--help` hint
  130  interrupted (Ctrl-C)
Nothing a user can cause prints a traceback; an internal bug still does (and RELAY_DEBUG=1 shows
the traceback behind any one-line error).
"""
import argparse
import contextlib
import errno
import importlib
import os
import re
import sys
import traceback
from typing import List, Optional

import relay
from relay_data import paths, quiet
from relay_data.errors import RelayError, UsageError  # noqa: F401  (UsageError: re-exported for commands)

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS = {
    "doctor": ("relay.doctor", "check every stack component for real and print a table of OK/FAIL"),
    "generate": ("relay.cmd_generate", "generate scripted kitchen play data as an RLDS dataset"),
    "ingest": ("relay.cmd_ingest", "convert D4RL hdf5 / Minari / npz demos into an RLDS dataset"),
    "relabel": ("relay.cmd_relabel", "relabel RLDS episodes into goal-conditioned examples (Beam pipeline)"),
    "train-il": ("relay.cmd_train", "train relay IL (both levels) or a baseline by BC through Reverb"),
    "eval": ("relay.cmd_eval", "evaluate trained agents on multi-stage kitchen goals"),
    "finetune": ("relay.cmd_finetune", "finetune a trained model toward one compound goal by RL (NPG/DAPG/IRIL-RPL)"),
    "actor": ("relay.cmd_actor", "a finetuning actor process writing episodes to a run's Reverb server"),
    "ensemble": ("relay.cmd_ensemble", "make one model whose level acts with the mean of several trained models' policies"),
    "distill": ("relay.cmd_distill", "distill per-goal finetuned policies into one relay policy"),
    "diagnose": ("relay.cmd_diagnose", "where an agent fails: oracle-subgoal ceiling, missed goal elements, finetuning's gradient signal"),
    "data": ("relay.cmd_data", "inspect a dataset: `relay data info DIR`"),
    "demo": ("relay.demo", "run the main job on a small default and print the result"),
}

# TensorFlow IO errors a user causes with a missing, unreadable or truncated dataset file.
_TF_USER_ERRORS = ("NotFoundError", "DataLossError", "PermissionDeniedError")


class _Parser(argparse.ArgumentParser):
  """argparse with the one-line error format of `main` (exit 2, one line and a hint)."""

  def error(self, message):
    _usage_exit(self.prog, message)


def _usage_exit(prog: str, message: str):
  print(f"{prog}: error: {message}\n  (see `{prog} --help`)", file=sys.stderr)
  sys.exit(2)


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
  """`--no-progress`, the same on every command with long work (its bars go to stderr otherwise)."""
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bars (e.g. for the log of a background run)")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="relay",
      description="Relay Policy Learning toolkit: play data as RLDS, Beam relabeling, Acme agents on Reverb.",
      epilog="exit codes: 0 ok, 1 bad data or failed operation (one line naming the file), "
             "2 bad usage (one line and a hint), 130 interrupted")
  parser.add_argument("--version", action="version", version=f"relay {relay.__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, (module_name, help_text) in SUBCOMMANDS.items():
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(_module=module, _parser=p)
  return parser


def user_error_message(error: BaseException) -> Optional[str]:
  """One line for an error the user caused (bad path, permissions, disk, bad data), else None.

  None means an internal bug: the caller lets it raise with its traceback.
  """
  if isinstance(error, RelayError):
    return str(error)
  if isinstance(error, OSError):
    what = error.strerror or str(error)
    if error.errno == errno.ENAMETOOLONG:
      what = "file name too long"
    if isinstance(error, FileExistsError) and not error.filename:
      return str(error)
    where = error.filename if error.filename is not None else ""
    if error.filename2 is not None:
      where = f"{where} -> {error.filename2}"
    return f"{where}: {what}" if where else what
  if type(error).__module__.startswith("tensorflow") and type(error).__name__ in _TF_USER_ERRORS:
    return f"{getattr(error, 'message', str(error)).splitlines()[0]} (is the dataset complete and readable?)"
  return None


def main(argv: Optional[List[str]] = None) -> int:
  """Runs one command. As the process entry point (`argv` None), third-party chatter is silenced
  and native (C++) stderr goes to a log file (`relay_data.quiet`); in-process calls (the demo's
  stages, tests) share whatever their caller set up."""
  quiet.drop_import_notices()
  parser = build_parser()
  args = parser.parse_args(argv)
  if argv is None:
    with quiet.redirect_native_stderr():
      code = _run(args)
    sys.exit(code)
  return _run(args)


def _run(args: argparse.Namespace) -> int:
  prog = f"relay {args.command}"
  try:
    with contextlib.ExitStack() as locks:
      # A command that writes into an output in place (not via a temp dir, which locks itself)
      # names it in LOCKED_OUTPUTS: a second run on the same output stops at once (BusyError).
      for attr in getattr(args._module, "LOCKED_OUTPUTS", ()):
        if getattr(args, attr, None):
          locks.enter_context(paths.output_lock(getattr(args, attr)))
      code = args._module.run(args)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    code = 130
  except Exception as e:  # pylint: disable=broad-except
    message = user_error_message(e)
    if message is None:
      raise  # an internal bug: keep the traceback
    if os.environ.get("RELAY_DEBUG"):
      traceback.print_exc()
    message = message.split("\n")[0].strip()
    message = re.sub(r" \[while running '[^']*'\]$", "", message)  # Beam's note on a re-raised worker error
    hint = f"\n  (see `{prog} --help`)" if isinstance(e, UsageError) else ""
    print(f"{prog}: error: {message}{hint}", file=sys.stderr)
    code = getattr(e, "exit_code", 1)
  return code
