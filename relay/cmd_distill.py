"""Distill per-goal finetuned policies into one relay policy for every goal (the paper's last step).

  relay distill --run runs/dapg_mkls --run runs/dapg_goal2 --play data/kitchen_play/n400_s0/VERSION --out models/distilled

Rolls out each finetuned run's model toward its goal (sampling, --rollouts per run), keeps the
successful episodes (or, with --min-elements N, those that did N of the goal's elements), writes
them with the play episodes as one RLDS dataset (OUT/data), relabels it with the relay functions
and the windows the original model used (OUT/relabeled_low|high), and trains one RIL agent on it
(OUT/model). When no rollout qualifies it stops (exit 1) before writing anything. Evaluate the
model on all goals with `relay eval --model OUT/model --play PLAY`.
"""
import argparse

from relay.cli import UsageError, add_progress_flag
from relay_data.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--run", action="append", required=True,
                      help="a `relay finetune --out` directory (repeat for every goal)")
  parser.add_argument("--play", required=True, help="the play dataset the original model was relabeled from")
  parser.add_argument("--out", required=True, help="output directory (data, relabeled datasets, model)")
  parser.add_argument("--rollouts", type=int, default=20, help="rollouts per finetuned run (default 20)")
  parser.add_argument("--min-elements", type=int, default=None,
                      help="keep rollouts that did at least N of their goal's elements (default: all of them, "
                           "i.e. successful rollouts only, as the paper); relabeling makes partial rollouts "
                           "goal-conditioned data too")
  parser.add_argument("--goals-per-step", type=int, default=8, help="relabeling goals per step (default 8)")
  parser.add_argument("--steps", type=int, default=5000, help="learner steps per level (default 5000)")
  parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
  add_progress_flag(parser)


def run(args: argparse.Namespace) -> int:
  from relay_agents.finetune import distill  # pylint: disable=import-outside-toplevel
  if args.rollouts <= 0 or args.steps <= 0 or args.goals_per_step <= 0:
    raise UsageError("--rollouts, --steps and --goals-per-step must be positive")
  try:
    summary = distill.distill(args.run, args.play, args.out,
                              distill.DistillConfig(rollouts=args.rollouts, goals_per_step=args.goals_per_step,
                                                    train_steps=args.steps, seed=args.seed,
                                                    min_elements=args.min_elements,
                                                    progress=not args.no_progress))
  except DataError:
    raise  # a broken model or dataset: one line naming the file, exit 1
  except ValueError as e:
    raise UsageError(str(e)) from e
  kept = "successful" if args.min_elements is None else f">= {args.min_elements}-element"
  for run_dir, n in summary["successes"].items():
    print(f"{run_dir}: {n}/{args.rollouts} {kept} rollouts kept")
  print(f"model: {summary['model']}  (trained on the play data + {summary['episodes_added']} finetuned episodes)")
  return 0
