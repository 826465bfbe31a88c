"""Generate scripted FrankaKitchen-v1 play data as an RLDS (TFDS) dataset.

Each episode performs 4 of the 7 kitchen elements (microwave, kettle, light switch, slide
cabinet, hinge cabinet, bottom burner, top burner) in a random order, without resets, with a
closed-loop scripted expert at the pace of human play (~60-70 steps per subtask). The stored
`action` is the expert's clean intended action; `executed_action` is what was sent after the
DART-style perturbation (--perturb). Episodes whose subtasks fail after retries are dropped; the
held-out 4-element sets are never completed together in any kept episode.

  relay generate --episodes 400 --data-dir data            # -> data/kitchen_play/n400_s0/<generator version>
  relay generate --config tiny --data-dir data             # named TFDS config (tiny/small/default)
"""
import argparse
import dataclasses
import hashlib
import json
import os

from relay.cli import UsageError, add_progress_flag
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
  parser.add_argument("--perturb", default="dart",
                      help="DART-style execution perturbation (labels stay the expert's clean action): "
                           "'dart' (default: correlated 0.1-0.3 rad bursts in free space, small arm noise, "
                           "short detours after subtasks), 'dart-near' (also small bursts and early finger "
                           "closings, labelled open, in the final approach onto a handle, knob or switch), "
                           "'dagger' (the bursts driven by a trained policy, --driver, instead of random pushes: "
                           "the expert's labels on the states the learner itself drifts to), "
                           "'none' (plain data, for the ablation), or a preset "
                           "followed by overrides, e.g. 'dart,burst_rate=0.05,detour_prob=0'")
  parser.add_argument("--driver", default=None, metavar="MODEL_DIR",
                      help="a trained model (relay train-il --out) that acts during the policy bursts of "
                           "--perturb dagger (or any spec with policy_rate > 0), toward each episode's four "
                           "elements; recorded with its fingerprint in the dataset's metadata")
  parser.add_argument("--robot-noise", type=float, default=None,
                      help="robot observation noise ratio of FrankaKitchen-v1 (default 0.1 as in RPL's kitchen; "
                           "gymnasium's own default is 0.01); recorded in the dataset, evaluation reuses it")
  parser.add_argument("--overwrite", action="store_true",
                      help="rebuild an existing dataset (the old one stays until the new one is complete)")
  add_progress_flag(parser)


def run(args: argparse.Namespace) -> int:
  from datasets.kitchen_play import KitchenPlay, KitchenPlayConfig  # pylint: disable=import-outside-toplevel
  from relay_data import kitchen, rlds_io  # pylint: disable=import-outside-toplevel
  from relay_data.play import generator, perturb  # pylint: disable=import-outside-toplevel
  if args.episodes is not None and args.episodes <= 0:
    raise UsageError("--episodes must be positive")
  if args.workers <= 0:
    raise UsageError("--workers must be positive")
  try:
    holdout = generator.parse_holdout(args.holdout)
  except ValueError as e:
    raise UsageError(f"--holdout: {e}") from e
  holdout_names = tuple(generator.format_set(s) for s in holdout)
  try:
    perturb_config = perturb.parse(args.perturb)
  except ValueError as e:
    raise UsageError(f"--perturb: {e}") from e
  driver_fingerprint = ""
  if perturb_config.policy_rate > 0 and not args.driver:
    raise UsageError(f"--perturb {args.perturb}: its policy bursts need a trained model, --driver MODEL_DIR")
  if args.driver:
    if perturb_config.policy_rate <= 0:
      raise UsageError(f"--driver: --perturb {args.perturb} has no policy bursts (use 'dagger' or policy_rate=...)")
    from relay_agents import models  # pylint: disable=import-outside-toplevel
    args.driver = os.path.abspath(args.driver)
    driver_fingerprint = models.fingerprint(args.driver)  # a DataError naming the dir if it is no model
  if args.robot_noise is not None and not 0 <= args.robot_noise <= 1:
    raise UsageError("--robot-noise must be in [0, 1]")
  settings = (kitchen.DEFAULT_SETTINGS if args.robot_noise is None else
              dataclasses.replace(kitchen.DEFAULT_SETTINGS, robot_noise_ratio=args.robot_noise))
  named = {c.name: c for c in KitchenPlay.BUILDER_CONFIGS}
  plain = (args.seed == 0 and args.holdout == "default" and args.perturb == perturb.DEFAULT_PRESET
           and settings == kitchen.DEFAULT_SETTINGS)
  if args.config and args.episodes is None and plain:
    config = args.config
  else:
    episodes = args.episodes or (named[args.config].episodes if args.config else 400)
    suffix = "" if args.holdout == "default" else "_h" + hashlib.sha1(";".join(holdout_names).encode()).hexdigest()[:6]
    if args.perturb != perturb.DEFAULT_PRESET:  # a distinct config name per perturbation
      suffix += "_p" + (args.perturb if args.perturb.isalnum() else
                        hashlib.sha1(json.dumps(perturb_config.to_dict(), sort_keys=True).encode()).hexdigest()[:6])
    if args.driver:
      suffix += "_d" + driver_fingerprint[:6]
    if settings != kitchen.DEFAULT_SETTINGS:
      suffix += "_e" + hashlib.sha1(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    config = KitchenPlayConfig(name=f"n{episodes}_s{args.seed}{suffix}",
                               description="relay generate", episodes=episodes, seed=args.seed,
                               holdout=holdout_names, perturb=args.perturb, env_settings=settings,
                               driver=args.driver, driver_fingerprint=driver_fingerprint)
  paths.check_directory_arg(args.data_dir, "--data-dir")

  def make_builder(data_dir):
    return KitchenPlay(config=config, data_dir=data_dir, workers=args.workers, progress=not args.no_progress)

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
  if "pace" in meta:
    from relay_data import pace  # pylint: disable=import-outside-toplevel
    print("  " + "\n  ".join(pace.format_pace(meta["pace"])))
  return 0

