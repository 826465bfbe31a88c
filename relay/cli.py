"""The `relay` command line: one subcommand per user task.

Each subcommand lives in the module that owns its concern and contributes two functions,
`add_arguments(parser)` and `run(args) -> int`; this file only wires them up, so `relay --help`
stays fast (heavy imports happen inside `run`).
"""
import argparse
import importlib
import sys
from typing import List, Optional

import relay
from relay_data.errors import DataError

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
    "distill": ("relay.cmd_distill", "distill per-goal finetuned policies into one relay policy"),
    "data": ("relay.cmd_data", "inspect a dataset: `relay data info DIR`"),
    "demo": ("relay.demo", "run the main job on a small default and print the result"),
}


class UsageError(Exception):
  """A bad flag or argument combination; reported as `relay <cmd>: error: ...`, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="relay",
      description="Relay Policy Learning toolkit: play data as RLDS, Beam relabeling, Acme agents on Reverb.")
  parser.add_argument("--version", action="version", version=f"relay {relay.__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, (module_name, help_text) in SUBCOMMANDS.items():
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(_module=module, _parser=p)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    code = args._module.run(args)
  except UsageError as e:
    args._parser.error(str(e))  # exits 2
  except DataError as e:
    print(f"relay {args.command}: error: {e}", file=sys.stderr)
    code = 1
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    code = 130
  if argv is None:
    sys.exit(code)
  return code
