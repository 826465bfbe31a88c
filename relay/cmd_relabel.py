"""Relabel RLDS play episodes into goal-conditioned examples (an Apache Beam pipeline).

Levels (Relay Imitation Learning, Gupta et al. 2019):
  low         (s_t, a_t, goal g_{t+j}),                      1 <= j <= W_l   (--window = W_l)
  high        (s_t, subgoal g_{t+min(W_l,j)}, goal g_{t+j}), 1 <= j <= W_h   (--window = W_l, --window-high = W_h)
  flat        one-level goal-conditioned BC with relabeling, 1 <= j <= W     (--window = W)
  final-goal  (s_t, a_t, goal = final state of the episode)  (GCBC without relabeling)
  bc          (s_t, a_t)                                      (plain BC)

Engines:
  (default, --runner direct)      Beam's in-process FnApiRunner (the DirectRunner's batch engine)
  --runner dask --dask-workers N  Beam's DaskRunner on a local dask.distributed cluster (loopback only)
  --runner dask --dask-address HOST:PORT   ... on a running Dask scheduler (workers must see the paths)
  --runner FlinkRunner -- --flink_master=HOST:8081  any other Beam runner: flags after `--` go to Beam
Only the flags given here reach Beam (never this process's own argv).

The output is a TFDS dataset at OUTPUT/NAME/VERSION (read it with relay_data.relabeled.load(OUTPUT),
or tfds.load(NAME, data_dir=OUTPUT)) whose records are chunks of up to 1,024 examples of one
episode; metadata.json records the lineage and the example count. It is written to a hidden temp
dir and moved into place only on success.
"""
import argparse
import json

from relay.cli import UsageError, add_progress_flag
from relay_data import paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from relay_data.relabeled import LEVELS  # pylint: disable=import-outside-toplevel
  parser.add_argument("--source", required=True, help="RLDS dataset dir (a TFDS dataset version dir or a dir holding one)")
  parser.add_argument("--level", required=True, choices=LEVELS, help="which examples to emit (see above)")
  from relay_data.relabel import DEFAULT_WINDOW  # pylint: disable=import-outside-toplevel
  parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                      help=f"W_l for low/high, W for flat (default {DEFAULT_WINDOW}, the paper's)")
  parser.add_argument("--window-high", type=int, default=280,
                      help="W_h for the high level (default 280: a FrankaKitchen-v1 episode, like D4RL "
                           "demos; scripted play episodes run 500-1900 steps, so use ~1200 for those)")
  parser.add_argument("--goals-per-step", type=int, default=None,
                      help="draw k distinct goals per step instead of all (bounds output size)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the goal sampling (default 0)")
  from relay_data.relabel import DEFAULT_ACTION_CHUNK  # pylint: disable=import-outside-toplevel
  parser.add_argument("--action-chunk", type=int, default=None,
                      help="k > 1: also store the next k actions a_t..a_{t+k-1} of every example (field "
                           "action_chunk), the targets of policies trained with `relay train-il --action-chunk "
                           f"k`; 1: no chunks. Levels with actions only (not high). Default {DEFAULT_ACTION_CHUNK} "
                           "(train-il's default), 1 for high")
  parser.add_argument("--goals-on-driven-steps", action="store_true",
                      help="DAgger play (`relay generate --perturb dagger`) marks the steps a trained policy drove; "
                           "by default no goal or subgoal is taken from them (where the old policy went is not a "
                           "goal the expert chose). This flag takes goals from them too (the ablation)")
  parser.add_argument("--perturbation-threshold", type=float, default=None, metavar="TAU",
                      help="perturbed play (`relay generate --perturb dart`, the default) records the executed "
                           "action beside the expert's label. TAU keeps goals and subgoals off the states an "
                           "action departing from its label by more than TAU (largest |difference| over the "
                           "action's dims) reached: inside a DART burst the label heads for the expert's target "
                           "while the hand goes elsewhere, so a goal there pairs a state with an action that does "
                           "not lead to it. Measured (docs/results.md, session 44, TAU 0.3): RIL 2.17 "
                           "elements against 2.00 over three seeds (the high level relabeled so alone: 2.23), a "
                           "fourth seed 1.50, held-out goals lower. Default: off (goals from every step)")
  parser.add_argument("--output", required=True, help="output dataset directory")
  parser.add_argument("--name", default=None, help="dataset name inside the output (default relabeled_<level>)")
  parser.add_argument("--episodes-per-shard", type=int, default=32,
                      help="episodes per output shard and per Beam task (default 32)")
  parser.add_argument("--chunk-size", type=int, default=1024,
                      help="examples per record: consecutive examples of one episode (default 1024)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
  parser.add_argument("--runner", default="direct",
                      help="Beam runner: direct (default: in-process FnApiRunner, what DirectRunner runs batch "
                           "pipelines on, without its attempt to download the Prism runner), dask "
                           "(DaskRunner), or any Beam runner name (e.g. FlinkRunner; options after `--`)")
  parser.add_argument("--dask-address", default=None,
                      help="with --runner dask: HOST:PORT of a running Dask scheduler")
  parser.add_argument("--dask-workers", type=int, default=None,
                      help="with --runner dask: start a local cluster of N worker processes on 127.0.0.1 "
                           "for this run (default when no --dask-address: 2)")
  add_progress_flag(parser)
  parser.add_argument("beam_args", nargs=argparse.REMAINDER,
                      help="after `--`: extra Beam pipeline options passed through unchanged")


def run(args: argparse.Namespace) -> int:
  from pipelines import relabel as pipeline  # pylint: disable=import-outside-toplevel
  from relay_data import relabeled  # pylint: disable=import-outside-toplevel
  if args.episodes_per_shard <= 0 or args.chunk_size <= 0:
    raise UsageError("--episodes-per-shard and --chunk-size must be positive")
  try:
    config = relabeled.RelabelConfig(level=args.level, window=args.window, window_high=args.window_high,
                                     goals_per_step=args.goals_per_step, seed=args.seed,
                                     action_chunk=args.action_chunk, goals_on_driven_steps=args.goals_on_driven_steps,
                                     perturbation_threshold=args.perturbation_threshold)
  except ValueError as e:
    raise UsageError(f"invalid relabel options: {e}") from e
  runner = pipeline.RUNNER_ALIASES.get(args.runner.lower(), args.runner)
  if runner != pipeline.DASK_RUNNER and (args.dask_address or args.dask_workers is not None):
    raise UsageError("--dask-address / --dask-workers needs --runner dask")
  if args.dask_address and args.dask_workers is not None:
    raise UsageError("give either --dask-address or --dask-workers, not both")
  if args.dask_workers is not None and args.dask_workers <= 0:
    raise UsageError("--dask-workers must be positive")
  if args.name is not None:
    paths.check_name(args.name)
  paths.check_output(args.output, "--output", sources=[args.source], overwrite=args.overwrite)
  extra = [a for a in args.beam_args if a != "--"]
  beam_args = [f"--runner={runner}", *extra]
  _check_runner(beam_args)
  options = pipeline.PipelineConfig(episodes_per_shard=args.episodes_per_shard, chunk_size=args.chunk_size)

  def relabel(flags):
    return pipeline.run_relabel(args.source, args.output, config, beam_args=flags, pipeline=options,
                                overwrite=args.overwrite, name=args.name, show_progress=not args.no_progress)

  try:
    if runner == pipeline.DASK_RUNNER:
      from pipelines import dask_cluster  # pylint: disable=import-outside-toplevel
      if args.dask_address:
        lineage = relabel(beam_args + dask_cluster.client_flags(args.dask_address))
      else:
        with dask_cluster.local_cluster(args.dask_workers or 2) as address:
          lineage = relabel(beam_args + dask_cluster.client_flags(address))
    else:
      lineage = relabel(beam_args)
  except FileExistsError as e:
    raise UsageError(str(e)) from e
  counts = lineage["counts"]
  print(f"relabel {args.level}: {counts['episodes_read']} episodes read, "
        f"{counts['examples_written']} examples written to {args.output} "
        f"({counts['records_written']} records in {lineage['num_shards']} shard(s))")
  skipped = counts["episodes_skipped_too_short"] + counts["episodes_without_examples"]
  if skipped:
    print(f"  skipped {counts['episodes_skipped_too_short']} episode(s) too short to relabel, "
          f"{counts['episodes_without_examples']} with no examples")
  print(f"  config: {json.dumps(lineage['config'])}")
  return 0


def _check_runner(beam_args) -> None:
  """A Beam runner name that Beam does not know is a usage error, found before any work."""
  from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.runner import create_runner  # pylint: disable=import-outside-toplevel
  runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
  try:
    create_runner(runner)
  except (ValueError, ImportError) as e:
    raise UsageError(f"Beam runner {runner!r}: {str(e).split('. Valid values')[0]} (e.g. DirectRunner, "
                     "FlinkRunner, SparkRunner, DataflowRunner)") from e
