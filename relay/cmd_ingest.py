"""Convert other people's demonstrations into relay's RLDS form (a TFDS dataset).

  relay ingest --format d4rl-hdf5 kitchen-complete-v0.hdf5 --name d4rl_complete --data-dir data
  relay ingest --format minari ~/.minari/datasets/kitchen/complete-v2 --name minari_complete --data-dir data
  relay ingest --format npz demos/ --name my_demos --data-dir data

The environment the demos come from is declared with --env (default kitchen), never guessed:
in the kitchen the observation width names the layout (59: FrankaKitchen-v1's observation; 30,
or D4RL's 60 with the task goal appended: robot + object positions), the goal is the 30-d
kitchen goal-space state and the dataset can be evaluated; --env none keeps the observations as
they are (goal = the file's goal_states, else the observation) and trains but cannot be
evaluated in the kitchen. The dataset's metadata records this spec. Rewards keep RLDS alignment
(a step's reward follows that step's action).

Formats are described in relay_data/converters.py. Nothing is downloaded. Bad input (missing
keys, wrong shapes, NaN/inf, empty or too-short episodes, truncated files) stops with an error
naming the file, episode and field, and leaves no partial dataset behind.
"""
import argparse
import os

from relay.cli import UsageError, add_progress_flag
from relay_data import paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from relay_data.converters import READERS  # pylint: disable=import-outside-toplevel
  parser.add_argument("path", metavar="PATH", help="input file or directory")
  parser.add_argument("--format", required=True, choices=sorted(READERS), help="input format")
  parser.add_argument("--name", required=True, help="dataset name (a directory under --data-dir)")
  parser.add_argument("--data-dir", required=True, help="where to write the RLDS dataset")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
  parser.add_argument("--env", default="kitchen", choices=["kitchen", "none"],
                      help="environment the demos come from (default kitchen: 59-d FrankaKitchen-v1 or 30/60-d "
                           "D4RL observations, evaluable); none: any other data, trained as is, not evaluable")
  add_progress_flag(parser)


def run(args: argparse.Namespace) -> int:
  from relay_data import converters, rlds_io  # pylint: disable=import-outside-toplevel
  paths.check_name(args.name)  # lower_snake_case, starting with a letter
  paths.check_directory_arg(args.data_dir, "--data-dir")
  paths.check_output(os.path.join(args.data_dir, args.name), "--data-dir/--name", sources=[args.path],
                     overwrite=args.overwrite)
  try:
    path = converters.ingest(args.format, args.path, args.name, args.data_dir, overwrite=args.overwrite,
                             env=args.env, progress=not args.no_progress)
  except FileExistsError as e:
    raise UsageError(str(e)) from e
  print(f"ingested {rlds_io.num_examples(path)} episodes from {args.path} into {path}")
  return 0
