"""Inspect relay datasets.

  relay data info DIR [--plot PNG]

For a play (RLDS) dataset: episodes, steps, per-subtask coverage, subtask-order histogram and a
PNG plot of episode lengths and order frequencies (default DIR/../<name>_info.png). For a
relabeled dataset: example counts, features and the lineage record.
"""
import argparse
import os

from relay_data import paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
  info = sub.add_parser("info", help="summarize a play or relabeled dataset")
  info.add_argument("path", metavar="DIR", help="dataset directory")
  info.add_argument("--plot", default=None,
                    help="PNG path for the play-data plot (default: DIR/../../<name>_info.png, beside the "
                         "dataset; never inside it)")
  info.add_argument("--no-plot", action="store_true", help="do not write the PNG")


def run(args: argparse.Namespace) -> int:
  from relay_data import info, rlds_io  # pylint: disable=import-outside-toplevel
  path = rlds_io.resolve_dataset_dir(args.path)
  plot = None
  if not args.no_plot:
    plot = args.plot or os.path.join(os.path.dirname(os.path.dirname(path)),
                                     f"{os.path.basename(os.path.dirname(path))}_info.png")
    paths.check_output(plot, "--plot", sources=[path], overwrite=True, kind="file")
  print(info.describe(path, plot=plot))
  return 0
