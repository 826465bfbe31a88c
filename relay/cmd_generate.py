"""Generate scripted FrankaKitchen-v1 play data as an RLDS (TFDS) dataset.

Each episode performs 4 of the 7 kitchen elements (microwave, kettle, light switch, slide
cabinet, hinge cabinet, bottom burner, top burner) in a random order, without resets, with a
noisy closed-loop controller. Episodes whose subtasks fail after retries are dropped; the
held-out 4-element sets are never completed together in any kept episode.

  relay generate --episodes 400 --data-dir data            # -> data/kitchen_play/n400_s0/1.1.0
  relay generate --config tiny --data-dir data             # named TFDS config (tiny/small/default)
"""
import argparse
import hashlib
import json
import os

from relay.cli import UsageError
from relay_data import paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data-dir", required=True, help="TFDS data dir to build into")
  parser.add_argument("--episodes", type=int, default=None, help="episodes to keep (default: the config's)")
  parser.add_argument("--config", default=None, choices=["tiny", "small", "default"],
                      help="named builder config (tiny=4, small=24, default=400 episodes)")
  parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
  parser.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
  parser.add_argument("--holdout", default="default",
                      help="held-out 4-element sets: 'default' (3 fixed sets), 'none', or "
                           "'a+b+c+d;e+f+g+h' with element names")
  parser.add_argument("--overwrite", action="store_true",
                      help="rebuild an existing dataset (the old one stays until the new one is complete)")


def run(args: argparse.Namespace) -> int:
  from datasets.kitchen_play import KitchenPlay, KitchenPlayConfig  # pylint: disable=import-outside-toplevel
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  from relay_data.play import generator  # pylint: disable=import-outside-toplevel
  if args.episodes is not None and args.episodes <= 0:
    raise UsageError("--episodes must be positive")
  if args.workers <= 0:
    raise UsageError("--workers must be positive")
  try:
    holdout = generator.parse_holdout(args.holdout)
  except ValueError as e:
    raise UsageError(f"--holdout: {e}") from e
  holdout_names = tuple(generator.format_set(s) for s in holdout)
  named = {c.name: c for c in KitchenPlay.BUILDER_CONFIGS}
  if args.config and args.episodes is None and args.seed == 0 and args.holdout == "default":
    config = args.config
  else:
    episodes = args.episodes or (named[args.config].episodes if args.config else 400)
    suffix = "" if args.holdout == "default" else "_h" + hashlib.sha1(";".join(holdout_names).encode()).hexdigest()[:6]
    config = KitchenPlayConfig(name=f"n{episodes}_s{args.seed}{suffix}",
                               description="relay generate", episodes=episodes, seed=args.seed,
                               holdout=holdout_names)
  paths.check_directory_arg(args.data_dir, "--data-dir")

  def make_builder(data_dir):
    return KitchenPlay(config=config, data_dir=data_dir, workers=args.workers)

  final = make_builder(args.data_dir).data_dir
  if os.path.exists(os.path.join(final, "dataset_info.json")) and not args.overwrite:
    print(f"kitchen play: reusing the dataset already built at {final} (--overwrite rebuilds it)")
  else:  # built in a temp dir under a write lock; a Ctrl-C or a crash leaves nothing behind
    rlds_io.prepare_atomically(make_builder, final, overwrite=True)
  builder = make_builder(args.data_dir)
  meta = rlds_io.read_metadata(builder.data_dir)
  success = meta.get("subtask_success", {})
  print(f"kitchen play: {builder.info.splits['train'].num_examples} episodes at {builder.data_dir}")
  if success:
    print(f"  subtasks completed: {success['completed']}/{success['attempted']} "
          f"({100.0 * success['completed'] / max(success['attempted'], 1):.1f}%), "
          f"first try {success['completed_first_try']}; generation: {json.dumps(meta['generation'])}")
  print(f"  held out: {', '.join(meta.get('holdout', [])) or 'none'}")
  return 0

