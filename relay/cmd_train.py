"""Train relay imitation learning (RIL) or a baseline by behaviour cloning through Reverb.

  relay train-il --agent ril --low R/low --high R/high --out models/ril     (both levels)
  relay train-il --agent gcbc --data R/flat --out models/gcbc               (flat GCBC, relabeled)
  relay train-il --agent gcbc-norelabel --data R/final --out models/gcbc_nr (goal = demo's final state)
  relay train-il --agent bc --data R/bc --out models/bc                     (no goal)

Datasets come from `relay relabel` (the level each agent needs is checked against its lineage).
Each policy's dataset is streamed into a Reverb table (a local server, or --reverb-address of a
running one) and Acme's JAX BC learner samples from it. Checkpoints resume automatically;
TensorBoard scalars go to OUT/tensorboard.
"""
import argparse
import json

from relay.cli import UsageError
from relay_data import paths

LOCKED_OUTPUTS = ("out",)  # relay.cli holds --out's write lock while training


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--agent", default="ril", choices=["ril", "gcbc", "gcbc-norelabel", "bc"],
                      help="what to train (default ril)")
  parser.add_argument("--low", help="ril: low-level relabeled dataset")
  parser.add_argument("--high", help="ril: high-level relabeled dataset")
  parser.add_argument("--data", help="baselines: their relabeled dataset")
  parser.add_argument("--out", required=True, help="model directory")
  from relay_agents.gcbc.config import HEADS, GoalBCConfig  # pylint: disable=import-outside-toplevel
  d = GoalBCConfig()  # the one home of the policy defaults
  parser.add_argument("--steps", type=int, default=5000, help="learner steps per policy (default 5000)")
  hidden = ",".join(map(str, d.hidden_sizes))
  parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
  parser.add_argument("--learning-rate", type=float, default=d.learning_rate,
                      help=f"Adam learning rate (default {d.learning_rate:g})")
  parser.add_argument("--hidden", default=hidden, help=f"MLP hidden sizes (default {hidden})")
  parser.add_argument("--head", default=d.head, choices=list(HEADS),
                      help=f"policy head (default {d.head}): mixture of Gaussians (play is multimodal and the "
                           "mode is acted on, not the average of modes), gaussian, or mse")
  parser.add_argument("--components", type=int, default=d.num_components,
                      help=f"mixture head: components (default {d.num_components})")
  parser.add_argument("--max-replay-size", type=int, default=d.max_replay_size,
                      help=f"examples kept in Reverb (default {d.max_replay_size:,}; FIFO beyond)")
  parser.add_argument("--reverb-address", default=None, help="host:port of a running Reverb server")
  parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")


def run(args: argparse.Namespace) -> int:
  from relay_agents import train  # pylint: disable=import-outside-toplevel
  from relay_agents.gcbc.config import GoalBCConfig  # pylint: disable=import-outside-toplevel
  if args.agent == "ril":
    if not (args.low and args.high) or args.data:
      raise UsageError("--agent ril needs --low and --high (and no --data)")
    data = {"low": args.low, "high": args.high}
  else:
    if not args.data or args.low or args.high:
      raise UsageError(f"--agent {args.agent} needs --data (and no --low/--high)")
    data = {"policy": args.data}
  if args.steps <= 0:
    raise UsageError("--steps must be positive")
  paths.check_output(args.out, "--out", sources=list(data.values()), kind="model")  # resumes in place
  try:
    hidden = tuple(int(h) for h in args.hidden.split(","))
    config = GoalBCConfig(hidden_sizes=hidden, head=args.head, num_components=args.components,
                          learning_rate=args.learning_rate,
                          batch_size=args.batch_size, max_replay_size=args.max_replay_size)
    summary = train.train_agent(args.agent, data, args.out,
                                train.TrainConfig(steps=args.steps, seed=args.seed,
                                                  reverb_address=args.reverb_address), config)
  except ValueError as e:
    raise UsageError(str(e)) from e
  for level, s in summary["levels"].items():
    if s["first_loss"] is None:  # the checkpoint was already at --steps: nothing left to train
      print(f"{args.agent}/{level}: already trained ({s['steps']} steps, from its checkpoint)")
      continue
    print(f"{args.agent}/{level}: {s['examples_fed']} examples fed to Reverb, {s['steps']} steps, "
          f"loss {s['first_loss']:.3f} -> {s['last_loss']:.3f} ({s['steps_per_s']:.0f} steps/s)")
  print(f"model: {args.out}  ({json.dumps({'replan_every': summary['replan_every']})})")
  return 0
