"""Train relay imitation learning (RIL) or a baseline by behaviour cloning through Reverb.

  relay train-il --agent ril --low R/low --high R/high --out models/ril     (both levels)
  relay train-il --agent gcbc --data R/flat --out models/gcbc               (flat GCBC, relabeled)
  relay train-il --agent gcbc-norelabel --data R/final --out models/gcbc_nr (goal = demo's final state)
  relay train-il --agent bc --data R/bc --out models/bc                     (no goal)

Datasets come from `relay relabel` (the level each agent needs is checked against its lineage).
Each policy's dataset is streamed into a Reverb table (a local server, or --reverb-address of a
running one) and Acme's JAX BC learner samples from it. A rerun into the same --out resumes from
its checkpoint only when the data and config are the ones it was trained from; otherwise it
refuses (pass --overwrite to retrain from scratch). TensorBoard scalars go to OUT/tensorboard.
The model directory records what it was trained from (relay_agents/models.py).
"""
import argparse
import json

from relay.cli import UsageError, add_progress_flag
from relay_data import paths
from relay_data.errors import DataError

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
  parser.add_argument("--lr-decay", default="cosine", choices=["cosine", "none"],
                      help="learning-rate schedule: cosine (the default: decays to 0 over --steps; the steps are "
                           "then part of what the weights depend on, so a rerun with other --steps does not "
                           "resume) or none (constant, the rate of models trained before session 30)")
  parser.add_argument("--hidden", default=None, help=f"MLP hidden sizes (default {hidden}; --paper: 256,256)")
  parser.add_argument("--head", default=d.head, choices=list(HEADS),
                      help=f"policy head (default {d.head}): mixture of Gaussians (play is multimodal and the "
                           "mode is acted on, not the average of modes), gaussian, or mse")
  parser.add_argument("--components", type=int, default=d.num_components,
                      help=f"mixture head: components (default {d.num_components})")
  parser.add_argument("--end-effector", choices=("auto", "on", "off"), default=None,
                      help="append the end-effector position (forward kinematics of the robot joints) of the "
                           "observation and of the goal to the policies' input; beyond the paper's "
                           "observation. auto (default): on for kitchen data, off otherwise")
  parser.add_argument("--action-chunk", type=int, default=None,
                      help="predict the next k actions at once and execute --execute-steps of them before "
                           "predicting again (action chunking; the RIL high level keeps 1). Needs data "
                           f"relabeled with the same --action-chunk (relay relabel's default is also "
                           f"{d.action_chunk}). 1: one action per step, the paper's. Default {d.action_chunk}")
  parser.add_argument("--execute-steps", type=int, default=None,
                      help="with --action-chunk k: actions executed per prediction (1..k; default 1: re-predict "
                           "every step and act the chunk's first action, measured best; `relay eval` can change it)")
  parser.add_argument("--gripper-head", action="store_true",
                      help="kitchen data: the fingers get their own binary close/open head (class-balanced) "
                           "instead of two dims of the continuous head, which then models the arm alone "
                           "(RIL: the low level; beyond the paper)")
  parser.add_argument("--goal-delta", action="store_true",
                      help="goal-conditioned kitchen policies: also feed the network the goal minus the state "
                           "(g - s in goal space, and the end effector's displacement to the goal's)")
  parser.add_argument("--subgoal-residual", action="store_true",
                      help="ril, kitchen data: the high level predicts its subgoal as a displacement from the "
                           "current state instead of an absolute state (beyond the paper)")
  parser.add_argument("--goal-noise", type=float, default=0.0, metavar="STD",
                      help="goal-conditioned kitchen action policies (ril: the low level): add N(0, STD^2) rad "
                           "to the goal's 7 arm joints in every training batch, so the low level learns to act "
                           "toward the high level's imprecise subgoals (default 0: exact goals; beyond the paper)")
  parser.add_argument("--goal-elements", choices=("auto", "on", "off"), default="auto",
                      help="kitchen data: the goal enters the network only as which elements it has done (the "
                           "env's completion test), beside the state's own; the goal's raw 30 dims are left out "
                           "(beyond the paper). auto (default): on for the ril high level (off with --goal-delta), off for gcbc (on: "
                           "also gcbc, an ablation; the ril low level never takes it). off: the paper's state goal")
  parser.add_argument("--velocities", choices=("on", "off"), default="on",
                      help="kitchen data: off leaves the observation's joint and object velocities out of every "
                           "level's input (the positions stay), as the paper's 30-d observation has none; on "
                           "(default) keeps the environment's 59-d observation. Measured on the ril low level: 1.84 "
                           "elements against 2.00 with them, three seeds (docs/results.md, session 41)")
  parser.add_argument("--weight-decay", type=float, default=0.0, metavar="W",
                      help="train with AdamW, decoupled weight decay W (each step shrinks every weight by the "
                           "learning rate x W); default 0: Adam, no decay (beyond the paper). Measured on the ril low "
                           "level, W 0.05: a higher oracle ceiling (2.81 against 2.57), the same elements (1.99 "
                           "against 2.00), three seeds (docs/results.md, session 43)")
  parser.add_argument("--paper", action="store_true",
                      help="the paper's plain policy: MLP 256x256, one action per step, no end-effector input "
                           "(sets --hidden 256,256 --action-chunk 1 --end-effector off unless given)")
  parser.add_argument("--max-replay-size", type=int, default=d.max_replay_size,
                      help=f"examples fed to Reverb (default {d.max_replay_size:,}): a larger dataset is used in "
                           "part, a seeded subset, and a warning says so")
  parser.add_argument("--reverb-address", default=None, help="host:port of a running Reverb server")
  parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
  parser.add_argument("--checkpoint-every", type=int, default=1000,
                      help="save a resumable checkpoint every N learner steps (default 1000; and at the end)")
  parser.add_argument("--overwrite", action="store_true",
                      help="retrain from scratch when --out holds weights from other data or another config")
  add_progress_flag(parser)


PAPER = {"hidden": "256,256", "action_chunk": 1, "end_effector": "off"}  # --paper: the paper's plain MLP


def parse_hidden(text: str):
  """`--hidden 256,256` -> (256, 256); anything else is a usage error naming the flag."""
  try:
    hidden = tuple(int(h) for h in text.split(","))
  except ValueError:
    hidden = ()
  if not hidden or min(hidden) <= 0:
    raise UsageError(f"--hidden must be comma-separated positive integers (e.g. 256,256), got {text!r}")
  return hidden


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
  if args.steps <= 0 or args.checkpoint_every <= 0:
    raise UsageError("--steps and --checkpoint-every must be positive")
  paths.check_output(args.out, "--out", sources=list(data.values()), kind="model")  # resumes in place
  d = GoalBCConfig()
  preset = PAPER if args.paper else {"hidden": ",".join(map(str, d.hidden_sizes)), "action_chunk": d.action_chunk,
                                     "end_effector": "auto"}
  for flag, value in preset.items():  # flags given explicitly win over the preset
    if getattr(args, flag) is None:
      setattr(args, flag, value)
  hidden = parse_hidden(args.hidden)
  try:
    config = GoalBCConfig(hidden_sizes=hidden, head=args.head, num_components=args.components,
                          learning_rate=args.learning_rate,
                          batch_size=args.batch_size, max_replay_size=args.max_replay_size,
                          end_effector={"auto": None, "on": True, "off": False}[args.end_effector],
                          action_chunk=args.action_chunk,
                          execute_steps=args.execute_steps, gripper_head=args.gripper_head,
                          goal_delta=args.goal_delta, subgoal_residual=args.subgoal_residual,
                          goal_noise=args.goal_noise, goal_elements={"auto": None, "on": True, "off": False}[args.goal_elements],
                          velocities=args.velocities == "on", weight_decay=args.weight_decay)
    train_config = train.TrainConfig(steps=args.steps, seed=args.seed, checkpoint_every=args.checkpoint_every,
                                     lr_decay=args.lr_decay,
                                     reverb_address=args.reverb_address, progress=not args.no_progress)
  except ValueError as e:
    raise UsageError(str(e)) from e
  try:
    summary = train.train_agent(args.agent, data, args.out, train_config, config, overwrite=args.overwrite)
  except DataError:
    raise
  except ValueError as e:
    raise UsageError(str(e)) from e
  for level, s in summary["levels"].items():
    if s["first_loss"] is None:  # trained before from this data and config, for --steps steps
      print(f"{args.agent}/{level}: already trained ({s['steps']} steps, same data and config)")
      continue
    print(f"{args.agent}/{level}: {s['examples_fed']} examples fed to Reverb, {s['steps']} steps, "
          f"loss {s['first_loss']:.3f} -> {s['last_loss']:.3f} ({s['steps_per_s']:.0f} steps/s)")
  print(f"model: {args.out}  ({json.dumps({'window': summary['window']})})")
  return 0
