"""Evaluate trained agents on multi-stage kitchen goals (per-goal table, bar chart, video).

  relay eval --model models/ril --play data/kitchen_play/small/1.1.0 --rollouts 20
  relay eval --model models/ril --model models/gcbc --play DIR --goals 17 --plot out.png --video ril.gif

Goals: the `--goals` most frequent 4-element sets in the play data plus the generator's held-out
sets. Metrics: success rate (all 4 done) and average elements done, by the env's own test, at
--max-steps (default 400) and at FrankaKitchen-v1's own 280-step limit (each rollout records
when each element was first done, so one run gives both). The kitchen is built with the settings
the model's data was recorded under, and each model sees observations in the layout it was
trained on; a model whose goal space, environment or settings differ from the play data's is
refused.
"""
import argparse
import functools
import json
import os

from relay.cli import UsageError, add_progress_flag
from relay_data import atomic, kitchen, paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from relay_agents.evaluation import DEFAULT_MAX_STEPS, ENV_HORIZON  # pylint: disable=import-outside-toplevel
  parser.add_argument("--model", action="append", required=True, help="model dir (repeat to compare)")
  parser.add_argument("--play", required=True, help="play dataset the goals come from")
  parser.add_argument("--goals", type=int, default=17, help="most frequent demo goal sets (default 17)")
  parser.add_argument("--no-heldout", action="store_true", help="skip the held-out goal sets")
  parser.add_argument("--goal", action="append", default=None,
                      help="evaluate this compound goal instead of the goal sets (comma-separated elements, e.g. "
                           "'microwave,kettle,light switch,slide cabinet'; repeat for more); its goal state is the "
                           "play data's initial state with those elements done, as `relay finetune` builds it")
  parser.add_argument("--rollouts", type=int, default=20, help="rollouts per goal (default 20)")
  parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                      help=f"episode horizon (default {DEFAULT_MAX_STEPS}); results are also reported at the "
                           f"env's own {ENV_HORIZON}-step limit")
  parser.add_argument("--sample", action="store_true", help="sample actions instead of taking the mean")
  parser.add_argument("--sample-std", type=float, default=1.0,
                      help="--sample: scale every Gaussian std of the policy by this (default 1: the trained "
                           "spread); as `relay finetune --explore-std`, to evaluate the policy a finetune sampled")
  parser.add_argument("--sample-temperature", type=float, default=1.0,
                      help="--sample: temperature of a mixture's component weights (default 1; as "
                           "`relay finetune --explore-temperature`)")
  parser.add_argument("--sample-level", choices=("high", "low"), default=None,
                      help="--sample, ril models: sample only this level; the other acts with its likeliest "
                           "mode (default: both sample). `high` samples the subgoal, as the paper's high level "
                           "does, and keeps the low level's deterministic actions")
  parser.add_argument("--replan", type=int, default=None,
                      help="ril models: the high level picks a new subgoal every N steps (default: every W_l, the "
                           "paper's); flat models are unaffected. Beyond the paper: re-planning more often than W_l "
                           "keeps the subgoal ahead of the low level (docs/results.md)")
  parser.add_argument("--execute-steps", type=int, default=None,
                      help="models predicting chunks of k actions: execute N of each chunk before predicting "
                           "again (1..k; default: as trained, `relay train-il --execute-steps`). 1 re-predicts "
                           "at every step; a ril model's subgoal cadence stays --replan's (docs/results.md)")
  parser.add_argument("--temporal-ensemble", type=float, default=None, metavar="M",
                      help="models predicting chunks of k actions: predict at every step and act with the "
                           "weighted mean of what the last k chunks say about this step, weight exp(-M * age in "
                           "steps) (ACT's temporal ensembling; M = 0 a plain mean, M > 0 trusts fresh chunks "
                           "more). Implies --execute-steps 1; a new subgoal starts afresh. Default: off")
  parser.add_argument("--sequential", action="store_true",
                      help="give each model the compound goal one element at a time: the current state with the "
                           "elements done so far and the next one set to done, the next asked for once the "
                           "observation shows it done; the order is the play data's most frequent one for that "
                           "set (else by which element demos did first). Beyond the paper (docs/results.md)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--plot", default=None, help="PNG bar chart of the methods")
  parser.add_argument("--video", default=None,
                      help="MP4 or GIF of one rollout of the first model on the first goal (rendered offscreen, "
                           "about 0.5 s per frame in software rendering: a 400-step rollout takes ~3 min)")
  parser.add_argument("--video-every", type=int, default=1,
                      help="--video: render every N-th step only (default 1; e.g. 4 renders a quarter of the frames)")
  parser.add_argument("--json", default=None, help="write all results as (strict) JSON here")
  add_progress_flag(parser)
  parser.add_argument("--workers", type=int, default=1,
                      help="rollouts run in this many processes (default 1; results do not depend on it)")
  parser.add_argument("--resume-log", default=None,
                      help="JSONL of finished rollouts: appended as they finish, reused on a rerun with the "
                           "same model, goals, play dataset, seed, horizon and action mode (resume an "
                           "interrupted evaluation)")


def method_names(model_dirs):
  """Each model's name in tables and plots: its directory's name, or parent/name where two share
  one (e.g. finetuned models, all RUN/model)."""
  base = [os.path.basename(os.path.normpath(m)) for m in model_dirs]
  return [b if base.count(b) == 1 else os.path.join(os.path.basename(os.path.dirname(os.path.normpath(m))), b)
          for m, b in zip(model_dirs, base)]


def check_ensemble(args: argparse.Namespace) -> None:
  """`--temporal-ensemble` must be a finite number, and it predicts every step: no other
  `--execute-steps` than 1 (shared by `relay eval` and `relay diagnose oracle`)."""
  import math  # pylint: disable=import-outside-toplevel
  if args.temporal_ensemble is None:
    return
  if not math.isfinite(args.temporal_ensemble):
    raise UsageError(f"--temporal-ensemble must be a finite number, got {args.temporal_ensemble}")
  if args.execute_steps not in (None, 1):
    raise UsageError(f"--temporal-ensemble predicts at every step: it cannot run with --execute-steps "
                     f"{args.execute_steps}")


def run(args: argparse.Namespace) -> int:
  from relay_agents import evaluation, models  # pylint: disable=import-outside-toplevel
  from relay_data import relabeled  # pylint: disable=import-outside-toplevel
  if args.rollouts <= 0 or args.goals < 0 or args.max_steps <= 0 or args.workers <= 0 or args.video_every <= 0 \
      or (args.replan is not None and args.replan <= 0) or (args.execute_steps is not None and args.execute_steps <= 0):
    raise UsageError("--rollouts, --max-steps, --workers, --video-every, --replan and --execute-steps must be "
                     "positive, --goals non-negative")
  if not (args.sample_std > 0 and args.sample_temperature > 0):  # `not > 0`: NaN is refused too
    raise UsageError("--sample-std and --sample-temperature must be positive")
  check_ensemble(args)
  exploration = (args.sample_std, args.sample_temperature)
  if exploration != (1.0, 1.0) and not args.sample:
    raise UsageError("--sample-std and --sample-temperature shape sampled actions: add --sample")
  if args.sample_level and not args.sample:
    raise UsageError("--sample-level picks the level that samples: add --sample")
  for text in args.goal or []:  # a typo fails before any model is read
    try:
      kitchen.parse_goal(text)
    except ValueError as e:
      raise UsageError(f"--goal: {e}") from e
  if args.video and not args.video.lower().endswith((".mp4", ".gif")):
    raise UsageError("--video must end in .mp4 or .gif")
  for flag, out in (("--json", args.json), ("--plot", args.plot), ("--video", args.video), ("--resume-log", args.resume_log)):
    if out:
      paths.check_output(out, flag, sources=[*args.model, args.play], overwrite=True, kind="file")
  records = {}
  for m in args.model:  # every model is checked before any rollout runs
    records[m] = models.read_record(m)
    chunks = []
    for level in records[m].levels:
      saved = models.load_policy(os.path.join(m, level))
      chunks.append(getattr(saved["config"], "action_chunk", 1))
      if args.execute_steps is not None and chunks[-1] > 1 and args.execute_steps > chunks[-1]:
        raise UsageError(f"--execute-steps {args.execute_steps}: {os.path.join(m, level)} predicts chunks of "
                         f"{chunks[-1]} actions (use 1..{chunks[-1]})")
      if os.path.exists(os.path.join(m, level, models.RESIDUAL)) and (
          args.temporal_ensemble is not None or args.execute_steps not in (None, 1)):
        flag = "--temporal-ensemble" if args.temporal_ensemble is not None else f"--execute-steps {args.execute_steps}"
        raise UsageError(f"{flag}: {os.path.join(m, level)} has a residual (finetuned with --residual), which "
                         "corrects every step's own prediction: it acts with 1 action per chunk, no ensemble")
    if args.temporal_ensemble is not None and max(chunks) <= 1:
      raise UsageError(f"--temporal-ensemble: {m} predicts one action at a time (no chunks to ensemble)")
    if args.sample_level and records[m].agent != "ril":
      raise UsageError(f"--sample-level: {m} is a flat {records[m].agent} model (one level; only ril models have "
                       "a high and a low level)")
    models.check_goal_source(records[m], m, args.play)
  if args.goal:
    goals = evaluation.named_goals(args.play, args.goal)
  else:
    goals = evaluation.goal_sets(args.play, args.goals, include_heldout=not args.no_heldout)
  if not goals:
    raise UsageError(f"no 4-element goal sets found in {args.play}")
  play_fingerprint = relabeled.fingerprint(args.play)
  order = None
  if args.sequential:
    from relay_agents import sequencing  # pylint: disable=import-outside-toplevel
    order = sequencing.element_order(args.play)
  by_method, out = {}, {}
  for model, name in zip(args.model, method_names(args.model)):
    replan = args.replan if records[model].agent == "ril" else None
    key = evaluation.log_key(models.fingerprint(model), goals, play_fingerprint, args.max_steps, args.seed,
                             args.sample, replan, sequential=args.sequential, exploration=exploration,
                             execute_steps=args.execute_steps, ensemble=args.temporal_ensemble,
                             sample_level=args.sample_level)
    sampled_levels = (args.sample_level,) if args.sample_level else None
    results = evaluation.evaluate(functools.partial(models.make_actor, model, deterministic=not args.sample,
                                                    sampled_levels=sampled_levels,
                                                    replan=replan, sequential=order, exploration=exploration,
                                                    execute_steps=args.execute_steps,
                                                    ensemble=args.temporal_ensemble),
                                  goals, args.rollouts, args.max_steps, args.seed, workers=args.workers,
                                  progress=not args.no_progress,
                                  log=evaluation.RolloutLog(args.resume_log, key),
                                  settings=models.env_settings(records[model]))
    by_method[name] = results
    print(f"== {name}")
    print(evaluation.format_table(results))
    out[name] = evaluation.to_json(results)
  if args.plot:
    print(f"plot: {evaluation.plot(by_method, args.plot)}")
  if args.video:
    model = args.model[0]
    replan = args.replan if records[model].agent == "ril" else None
    r = evaluation.rollout(models.make_actor(model, args.seed, replan=replan, sequential=order,
                                             execute_steps=args.execute_steps, ensemble=args.temporal_ensemble),
                           goals[0], args.max_steps, seed=args.seed,
                           render=True, render_every=args.video_every, settings=models.env_settings(records[model]))
    print(f"video: {evaluation.write_video(r.frames, args.video)} ({len(r.completed)} of 4 done)")
  if args.json:
    print(f"json: {atomic.write_json(args.json, out, allow_nan=False)}")
  return 0
