"""Finetune a trained relay (or GCBC) model toward one compound goal by RL (the paper's RPL).

  relay finetune --model models/ril --goal "microwave,kettle,light switch,slide cabinet" \
      --variant dapg --env-steps 600000 --out runs/dapg_mkls

Variants: npg (natural policy gradient with a learned value baseline, GAE and a KL-normalized
step), dapg (plus lambda0 * lambda1^k times the log-likelihood of the relabeled demo examples the
model was trained on, served from a Reverb table), iril (dapg, plus every batch of on-policy
episodes relabeled with the same relay functions and inserted into that table), filtered (beyond
the paper, no policy gradient: the episodes that complete the whole goal are kept, and the low
level is behaviour-cloned on the relabeled demos plus the decisions it made in them, under the
subgoals it was commanded; --own-fraction, --bc-steps, --bc-learning-rate).
The low level is rewarded for reaching the subgoal the high level commands (--reward sparse:
within eps of it in goal space, eps calibrated from the demo windows; euclidean; element-wise;
task: the task's progress, as a flat policy); the high level (--finetune both) for task progress
by the environment's completion test. Beyond the paper, --replan N makes the high level pick a
subgoal every N steps instead of every W_l, as `relay eval --replan` (with --replan 1 no subgoal
is ever reached: use --reward task).
Actors run in this process (--actors K) or as K `relay actor` processes (--actor-processes)
writing whole episodes into the run's Reverb server. Each steps --envs-per-actor environments in
lockstep with one policy call per level for all of them (in this process, all K x E environments
are one lockstep loop).

OUT gets checkpoint.pkl (a rerun resumes from it), log.jsonl (one record per iteration),
tensorboard/, curve.png (success rate and elements done vs env steps), run.json and model/
(the finetuned model: `relay eval --model OUT/model`).
"""
import argparse

from relay.cli import UsageError, add_progress_flag
from relay_data.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from relay_agents.finetune.config import DEFAULT_LANES, LEVELS, REWARDS, VARIANTS, FinetuneConfig  # pylint: disable=import-outside-toplevel
  d = FinetuneConfig()
  parser.add_argument("--model", required=True, help="trained model directory (from `relay train-il`)")
  parser.add_argument("--goal", required=True,
                      help="the compound goal: comma-separated elements, e.g. 'microwave,kettle,light switch,slide cabinet'")
  parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, curve, finetuned model)")
  parser.add_argument("--variant", default=d.variant, choices=list(VARIANTS), help=f"update rule (default {d.variant})")
  parser.add_argument("--env-steps", type=int, required=True,
                      help="env-step budget; the run stops at the first iteration that reaches it")
  parser.add_argument("--actors", type=int, default=1, help="number of actors (default 1)")
  parser.add_argument("--envs-per-actor", type=int, default=DEFAULT_LANES,
                      help="environments each actor steps in lockstep, its policy calls batched across them "
                           f"(default {DEFAULT_LANES}; at most --episodes-per-iteration are made)")
  parser.add_argument("--actor-processes", action="store_true",
                      help="run the actors as separate `relay actor` processes (default: in this process, "
                           "deterministic and exactly resumable)")
  parser.add_argument("--finetune", default=d.finetune, choices=list(LEVELS),
                      help=f"levels to finetune (default {d.finetune}; both needs a ril model)")
  parser.add_argument("--reward", default=d.reward, choices=list(REWARDS), help=f"low-level reward (default {d.reward})")
  parser.add_argument("--replan", type=int, default=None,
                      help="ril models: the actors' high level picks a new subgoal every N steps (default: every W_l, "
                           "the paper's); evaluate the result with the same `relay eval --replan N`")
  parser.add_argument("--execute-steps", type=int, default=None,
                      help="a level predicting chunks of k actions executes N of each (1..k) before predicting "
                           "again (default: as trained); the learner scores decisions on that schedule and the "
                           "finetuned model keeps it (as `relay eval --execute-steps`)")
  parser.add_argument("--eps", type=float, default=None,
                      help=f"sparse radius in goal space (default: the {d.eps_quantile:g} quantile of the demo "
                           "windows' reach, see --eps-quantile)")
  parser.add_argument("--eps-quantile", type=float, default=d.eps_quantile,
                      help=f"quantile of demo windows' goal-space reach used as eps (default {d.eps_quantile:g})")
  parser.add_argument("--episodes-per-iteration", type=int, default=d.episodes_per_iteration,
                      help=f"episodes per NPG iteration (default {d.episodes_per_iteration})")
  parser.add_argument("--max-episode-steps", type=int, default=d.max_episode_steps,
                      help=f"episode horizon (default {d.max_episode_steps})")
  parser.add_argument("--kl", type=float, default=d.kl_delta, help=f"KL bound per NPG step (default {d.kl_delta:g})")
  parser.add_argument("--lambda0", type=float, default=d.lambda0, help=f"DAPG demo weight (default {d.lambda0:g})")
  parser.add_argument("--lambda1", type=float, default=d.lambda1,
                      help=f"DAPG decay per iteration (default {d.lambda1:g})")
  parser.add_argument("--own-fraction", type=float, default=d.own_fraction,
                      help="filtered: weight of the kept successful decisions against the demos in each batch "
                           f"(default {d.own_fraction:g})")
  parser.add_argument("--bc-steps", type=int, default=d.bc_steps,
                      help=f"filtered: Adam steps per iteration (default {d.bc_steps})")
  parser.add_argument("--bc-learning-rate", type=float, default=d.bc_learning_rate,
                      help=f"filtered: Adam learning rate (default {d.bc_learning_rate:g})")
  parser.add_argument("--explore-std", type=float, default=d.explore_std,
                      help="scale of the policy's Gaussian stds while finetuning: actors sample and NPG scores the "
                           "narrowed policy; below 1 explores near the likeliest mode, which deterministic evaluation "
                           f"runs (default {d.explore_std:g}: the behaviour-cloned spread)")
  parser.add_argument("--explore-temperature", type=float, default=d.explore_temperature,
                      help="temperature of a mixture policy's component weights while finetuning; below 1 draws the "
                           f"likeliest component more often (default {d.explore_temperature:g})")
  parser.add_argument("--residual", default=None, metavar="HIDDEN",
                      help="finetune a residual policy over the acting level's frozen mode instead of the level "
                           "itself: comma-separated hidden sizes of the residual MLP, e.g. 256,256 (default: off, the "
                           "paper's). The base re-predicts at every step (--execute-steps 1); --explore-std and "
                           "--explore-temperature do not apply, the residual explores with its own learned std")
  parser.add_argument("--residual-std", type=float, default=d.residual_std,
                      help="--residual: the residual's initial std per action dimension, as a fraction of the demos' "
                           f"action spread in that dimension (default {d.residual_std:g})")
  parser.add_argument("--demos", default=None,
                      help="relabeled low-level dataset for dapg/iril and eps (default: the one the model was trained on)")
  parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
  add_progress_flag(parser)


def run(args: argparse.Namespace) -> int:
  from relay_agents.finetune import env as env_lib  # pylint: disable=import-outside-toplevel
  from relay_agents.finetune.config import FinetuneConfig  # pylint: disable=import-outside-toplevel
  if args.env_steps <= 0:
    raise UsageError("--env-steps must be positive")
  if args.actors <= 0:
    raise UsageError("--actors must be positive")
  if args.envs_per_actor <= 0:
    raise UsageError("--envs-per-actor must be positive")
  if args.execute_steps is not None and args.execute_steps <= 0:
    raise UsageError("--execute-steps must be positive")
  try:
    elements = env_lib.parse_goal(args.goal)  # before the heavy imports: a typo fails fast
  except ValueError as e:
    raise UsageError(str(e)) from e
  from relay_agents.finetune import run as run_lib  # pylint: disable=import-outside-toplevel
  residual = None
  if args.residual is not None:
    from relay_agents.gcbc import residual as residual_lib  # pylint: disable=import-outside-toplevel
    try:
      residual = residual_lib.hidden_sizes(args.residual)
    except ValueError as e:
      raise UsageError(f"--residual: {e}") from None
  try:
    config = FinetuneConfig(variant=args.variant, finetune=args.finetune, reward=args.reward, eps=args.eps,
                            eps_quantile=args.eps_quantile, episodes_per_iteration=args.episodes_per_iteration,
                            max_episode_steps=args.max_episode_steps, kl_delta=args.kl, lambda0=args.lambda0,
                            lambda1=args.lambda1, explore_std=args.explore_std,
                            explore_temperature=args.explore_temperature, replan=args.replan,
                            execute_steps=args.execute_steps,
                            own_fraction=args.own_fraction, bc_steps=args.bc_steps,
                            bc_learning_rate=args.bc_learning_rate, residual=residual,
                            residual_std=args.residual_std)
    summary = run_lib.finetune(
        run_lib.RunConfig(args.model, elements, args.out, args.env_steps, actors=args.actors,
                          actor_processes=args.actor_processes,
                          envs_per_actor=args.envs_per_actor, seed=args.seed, demos=args.demos,
                          progress=not args.no_progress), config)
  except DataError:
    raise  # a broken model or dataset: one line naming the file, exit 1
  except ValueError as e:
    raise UsageError(str(e)) from e
  first = summary["first"] or {}
  print(f"finetune {args.variant}: {summary['iterations']} iterations, {summary['env_steps']} env steps, "
        f"eps {summary['eps']}")
  print(f"success rate {first.get('success_rate', float('nan')):.2f} -> {summary['success_rate']:.2f}, "
        f"elements done {first.get('elements_done', float('nan')):.2f} -> {summary['elements_done']:.2f} "
        f"(training episodes, first vs last iteration)")
  print(f"model: {args.out}/model  curve: {summary['curve']}")
  return 0
