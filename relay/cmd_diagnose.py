"""Diagnose where an agent fails: the low level's ceiling under oracle subgoals, and why goal
elements are missed in evaluation rollouts.

  relay diagnose oracle --model models/ril --play data/kitchen_play/n400_s0/VERSION --episodes 12
  relay diagnose oracle --model models/ril --play DIR --indexing progress --json oracle.json
  relay diagnose failures --model models/gcbc --play DIR --goals 17 --rollouts 2 --json failures.json
  relay diagnose gradient --model models/ril --goal "microwave,kettle,light switch,slide cabinet" --episodes 64

`oracle` runs the model's low-level policy from each demo's own initial state (reset with the
demo's recorded seed) and feeds it the demo's own future states as subgoals every W_l steps, so
the high level plays no part: how many of the demo's subtasks the low level then completes is
the ceiling of the relay hierarchy on that data (relay_agents/diagnostics.py). Subgoals are
indexed by time (the demo's state at t + W_l; a low level slower than the demo falls behind) or
by progress (W_l steps past the demo state nearest to the rollout's: what a perfect high level
re-planning from the current state would ask for). The model must fit the play data (goal
space and environment settings); the kitchen is built with the model's settings.

`failures` runs evaluation rollouts of any model (the same goals and seeds as `relay eval`) and
sorts every goal element it did not finish: the hand never reached it, reached it but never moved
it (contact acquisition), or moved it without completing it. "Reached" is measured against the
play data: the hand-to-handle distance at which the demos start moving each element
(relay_agents/failures.py has the exact definitions).

`gradient` asks whether finetuning has a policy gradient to follow at a given batch size. It acts
`--episodes` on-policy episodes of the model toward `--goal` (as `relay finetune`'s actors do,
with the same reward, exploration and KL settings), fits one NPG step on `--fit` episodes of a
random half and reports how much the step raises the policy-gradient surrogate of its own
episodes and of the other half's (relay_agents/finetune/gradient_signal.py). A held-out gain
near zero or below it means an iteration of that many episodes follows its own batch's noise.
The same steps refitted at a much smaller KL (--probe-kl) split each gain into the part the
step's direction earns (first order, growing as sqrt(KL)) and the part moving at all costs
(second order, growing as KL). The first-order part on the other half over that on the step's own
episodes says how much of the fitted direction other episodes share.
"""
import argparse
import dataclasses
import os

from relay.cli import UsageError, add_progress_flag
from relay_data import atomic, paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="diagnose_command", metavar="ACTION", required=True)
  oracle = sub.add_parser("oracle", help="the low level's ceiling under the demos' own subgoals",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  oracle.add_argument("--model", required=True, help="a relay (ril) model directory (its low level is run)")
  oracle.add_argument("--play", required=True, help="play (RLDS) dataset whose demos give the start states and subgoals")
  oracle.add_argument("--episodes", type=int, default=12, help="demos to run, from the first (default 12)")
  oracle.add_argument("--start", type=int, default=0, help="index of the first demo (default 0)")
  oracle.add_argument("--indexing", choices=("time", "progress"), default="time",
                      help="subgoal indexing (default time; see above)")
  oracle.add_argument("--extra-steps", type=int, default=300,
                      help="steps allowed beyond each demo's own length (default 300)")
  oracle.add_argument("--sample", action="store_true", help="sample actions instead of the likeliest mode")
  oracle.add_argument("--execute-steps", type=int, default=None,
                      help="a low level predicting chunks of k actions executes N of each (1..k) before "
                           "predicting again (default: as trained); as `relay eval --execute-steps`")
  oracle.add_argument("--temporal-ensemble", type=float, default=None, metavar="M",
                      help="a low level predicting chunks acts with a temporal ensemble of its last k chunks, "
                           "weight exp(-M * age); as `relay eval --temporal-ensemble` (default: off)")
  oracle.add_argument("--json", default=None, help="write per-demo results and the summary as JSON here")
  add_progress_flag(oracle)

  fail = sub.add_parser("failures", help="why evaluation rollouts miss goal elements (not reached / not engaged / not done)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  fail.add_argument("--model", required=True, help="a trained model directory (any agent)")
  fail.add_argument("--play", required=True, help="play (RLDS) dataset: the goals, and the demos' reach radii")
  fail.add_argument("--goals", type=int, default=17, help="most frequent demo goals (default 17, the paper's)")
  fail.add_argument("--no-heldout", action="store_true", help="leave out the held-out goal sets")
  fail.add_argument("--rollouts", type=int, default=2, help="rollouts per goal (default 2)")
  fail.add_argument("--max-steps", type=int, default=400, help="rollout horizon (default 400)")
  fail.add_argument("--seed", type=int, default=0, help="evaluation seed, as `relay eval --seed` (default 0)")
  fail.add_argument("--demos", type=int, default=100, help="demos that set the reach radii (default the first 100)")
  fail.add_argument("--json", default=None, help="write the radii, per-rollout outcomes and the summary as JSON here")
  add_progress_flag(fail)

  grad = sub.add_parser("gradient", help="whether an NPG step on k episodes improves other episodes (finetuning's signal)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  _add_gradient_arguments(grad)


def _add_gradient_arguments(grad: argparse.ArgumentParser) -> None:
  from relay_agents.finetune.config import REWARDS, FinetuneConfig  # pylint: disable=import-outside-toplevel
  d = FinetuneConfig()
  grad.add_argument("--model", required=True, help="a trained ril or goal-conditioned flat model (its acting level is scored)")
  grad.add_argument("--goal", required=True, help="the compound goal, comma-separated, as `relay finetune --goal`")
  grad.add_argument("--episodes", type=int, default=64, help="on-policy episodes to act, split in halves (default 64)")
  grad.add_argument("--fit", default="8,32",
                    help="comma-separated batch sizes (episodes) to fit a step on, each at most half of --episodes "
                         "(default 8,32: finetuning's default iteration and four times it)")
  grad.add_argument("--splits", type=int, default=3, help="random splits into halves, each used both ways (default 3)")
  grad.add_argument("--max-episode-steps", type=int, default=400, help="episode horizon (default 400)")
  grad.add_argument("--reward", default=d.reward, choices=list(REWARDS), help=f"low-level reward (default {d.reward})")
  grad.add_argument("--replan", type=int, default=None,
                    help="ril models: the high level picks a subgoal every N steps (default W_l), as `relay finetune --replan`")
  grad.add_argument("--execute-steps", type=int, default=None,
                    help="a level predicting chunks of k actions executes N of each (1..k) before predicting again "
                         "(default: as trained), as `relay finetune --execute-steps`: the episodes are acted, and "
                         "their decisions scored, on that schedule")
  grad.add_argument("--residual", default=None, metavar="HIDDEN",
                    help="measure a step on a new residual of these hidden sizes over the low level's frozen mode "
                         "instead of on the level itself, as `relay finetune --residual` trains (default: off)")
  grad.add_argument("--residual-std", type=float, default=d.residual_std,
                    help=f"--residual: its std as a fraction of the demos' action spread (default {d.residual_std:g})")
  grad.add_argument("--eps", type=float, default=None, help="sparse radius (default: calibrated as `relay finetune` does)")
  grad.add_argument("--kl", type=float, default=d.kl_delta, help=f"KL bound of the step (default {d.kl_delta:g})")
  grad.add_argument("--probe-kl", type=float, default=None,
                    help="a much smaller KL bound the same steps are refitted at, to split each gain into its "
                         "first-order part (the step's direction) and its second-order part (the cost of moving "
                         "at all): default --kl / 100")
  grad.add_argument("--explore-std", type=float, default=d.explore_std,
                    help=f"as `relay finetune --explore-std` (default {d.explore_std:g})")
  grad.add_argument("--explore-temperature", type=float, default=d.explore_temperature,
                    help=f"as `relay finetune --explore-temperature` (default {d.explore_temperature:g})")
  grad.add_argument("--seed", type=int, default=0, help="seed of the episodes and the splits (default 0)")
  grad.add_argument("--json", default=None, help="write the settings and the gains as JSON here")
  add_progress_flag(grad)


def run(args: argparse.Namespace) -> int:
  if args.diagnose_command == "failures":
    return run_failures(args)
  if args.diagnose_command == "gradient":
    return run_gradient(args)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from relay_agents import diagnostics, models  # pylint: disable=import-outside-toplevel
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  if args.episodes <= 0 or args.start < 0 or args.extra_steps < 0 or (args.execute_steps is not None
                                                                       and args.execute_steps <= 0):
    raise UsageError("--episodes and --execute-steps must be positive, --start and --extra-steps non-negative")
  from relay.cmd_eval import check_ensemble  # pylint: disable=import-outside-toplevel
  check_ensemble(args)
  if args.json:
    paths.check_output(args.json, "--json", sources=[args.model, args.play], overwrite=True, kind="file")
  record = models.read_record(args.model)
  if record.agent != "ril" or "low" not in record.levels:
    raise UsageError(f"--model {args.model} is a '{record.agent}' model; the oracle runs a relay (ril) low level")
  play = rlds_io.resolve_dataset_dir(args.play)
  rlds_io.require_episodes(play, "--play")
  models.check_goal_source(record, args.model, play)
  policy = models.load_level_policy(args.model, "low", deterministic=not args.sample,
                                    execute_steps=args.execute_steps, ensemble=args.temporal_ensemble)
  settings, obs_fn = models.env_settings(record), models.observation_fn(record)
  rows = []
  episodes = rlds_io.iter_episodes(play, args.start, args.start + args.episodes)
  for i, episode in enumerate(tqdm(episodes, total=args.episodes, desc="oracle rollouts", unit="demo",
                                    disable=args.no_progress)):
    result = diagnostics.oracle_subgoal_rollout(
        policy, episode, record.window, max_steps=len(episode["goal_state"]) + args.extra_steps,
        seed=args.start + i, observation_fn=obs_fn, settings=settings, indexing=args.indexing)
    rows.append({"episode": args.start + i, "episode_id": str(episode.get("episode_id", "")),
                 "demo_subtasks": result.demo_subtasks, "completed": result.completed, "done": result.done,
                 "steps": result.steps, "arm_error_first_replan": result.arm_error[1] if len(result.arm_error) > 1 else None})
    tqdm.write(f"  demo {args.start + i}: {result.done}/{len(result.demo_subtasks)} "
               f"({', '.join(result.completed) or 'none'}) in {result.steps} steps")
  if not rows:
    raise UsageError(f"--play {args.play} has no episodes from --start {args.start}")
  done = np.array([r["done"] for r in rows])
  summary = {"model": args.model, "play": play, "indexing": args.indexing, "window": record.window,
             "episodes": len(rows), "mean_done": float(done.mean()), "all_done": float(np.mean(done == 4)),
             "counts": np.bincount(done, minlength=5).tolist(), "sample": args.sample}
  print(f"oracle ceiling ({args.indexing}-indexed subgoals, W_l={record.window}, {len(rows)} demos): "
        f"{summary['mean_done']:.2f} subtasks of the demo's 4 done on average; all 4 in {summary['all_done']:.0%}; "
        f"demos by subtasks done (0..4): {summary['counts']}")
  if args.json:
    atomic.write_json(args.json, {"summary": summary, "episodes": rows})
    print(f"json: {args.json}")
  return 0


def run_failures(args: argparse.Namespace) -> int:
  from relay_agents import evaluation, failures, models  # pylint: disable=import-outside-toplevel
  from relay_data import rlds_io  # pylint: disable=import-outside-toplevel
  if args.goals < 0 or args.rollouts <= 0 or args.max_steps <= 0 or args.demos <= 0:
    raise UsageError("--rollouts, --max-steps and --demos must be positive, --goals non-negative")
  if args.json:
    paths.check_output(args.json, "--json", sources=[args.model, args.play], overwrite=True, kind="file")
  record = models.read_record(args.model)
  if not record.data_spec.observation.evaluable:
    raise UsageError(f"--model {args.model} was trained on non-kitchen data; failures are measured in the kitchen")
  play = rlds_io.resolve_dataset_dir(args.play)
  rlds_io.require_episodes(play, "--play")
  models.check_goal_source(record, args.model, play)
  goals = evaluation.goal_sets(play, args.goals, include_heldout=not args.no_heldout)
  if not goals:
    raise UsageError(f"--play {args.play} has no four-element goals to evaluate")
  geometry = failures.ElementGeometry()
  radii, found = failures.demo_reach_radii(play, geometry, args.demos)
  if not radii:
    raise UsageError(f"--play {args.play}: no demo moved any element, so no reach radius can be set")
  rows = failures.run_anatomy(args.model, goals, args.rollouts, args.max_steps, args.seed, geometry, radii,
                              progress=not args.no_progress)
  summary = failures.summarize(rows)
  print(f"{len(rows)} rollouts of {args.model} ({len(goals)} goals x {args.rollouts}, {args.max_steps} steps); "
        f"goal elements by outcome:")
  print(failures.format_summary(summary, radii))
  if args.json:
    atomic.write_json(args.json, {"model": args.model, "play": play, "seed": args.seed, "max_steps": args.max_steps,
                                  "radii": radii, "demo_engagements": {e: len(d) for e, d in found.items()},
                                  "summary": summary, "rollouts": [r.to_json() for r in rows]})
    print(f"json: {args.json}")
  return 0


def _fit_sizes(text: str):
  try:
    sizes = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise UsageError(f"--fit must be comma-separated episode counts, got {text!r}") from None
  if not sizes:
    raise UsageError("--fit needs at least one episode count")
  return sizes


def run_gradient(args: argparse.Namespace) -> int:
  import numpy as np  # pylint: disable=import-outside-toplevel
  from relay_agents.finetune import acting, gradient_signal, policy_io  # pylint: disable=import-outside-toplevel
  from relay_agents.gcbc import residual as residual_lib  # pylint: disable=import-outside-toplevel
  from relay_agents.finetune import env as env_lib, run as run_lib  # pylint: disable=import-outside-toplevel
  from relay_agents.finetune.config import FinetuneConfig  # pylint: disable=import-outside-toplevel
  from relay_data.errors import DataError  # pylint: disable=import-outside-toplevel
  sizes = _fit_sizes(args.fit)
  if args.episodes < 2 or args.splits < 1 or args.max_episode_steps < 1:
    raise UsageError("--episodes must be at least 2, --splits and --max-episode-steps positive")
  probe_kl = args.kl / 100 if args.probe_kl is None else args.probe_kl
  if args.kl > 0 and not 0 < probe_kl < args.kl:  # a bad --kl itself is refused by FinetuneConfig below
    raise UsageError(f"--probe-kl must be positive and below --kl {args.kl:g}, got {probe_kl:g}")
  if any(not 1 <= k <= args.episodes // 2 for k in sizes):
    raise UsageError(f"--fit sizes must be in 1..{args.episodes // 2} (half of --episodes {args.episodes}), got {args.fit}")
  if args.json:
    paths.check_output(args.json, "--json", sources=[args.model], overwrite=True, kind="file")
  try:
    elements = env_lib.parse_goal(args.goal)
    residual = None if args.residual is None else residual_lib.hidden_sizes(args.residual)
    config = FinetuneConfig(reward=args.reward, eps=args.eps, kl_delta=args.kl, max_episode_steps=args.max_episode_steps,
                            explore_std=args.explore_std, explore_temperature=args.explore_temperature,
                            replan=args.replan, execute_steps=args.execute_steps, residual=residual,
                            residual_std=args.residual_std)
    model = policy_io.load_model(args.model, config.explore_std, config.explore_temperature, config.replan,
                                 config.execute_steps, config.residual_config)
    eps, _ = run_lib.resolve_eps(model, config)
  except DataError:
    raise  # a broken model or its demos gone: one line naming the file, exit 1
  except ValueError as e:  # a model finetuning cannot act with (e.g. goal-free BC), a bad setting
    raise UsageError(str(e)) from None
  episodes = gradient_signal.collect_episodes(model, elements, args.episodes, args.max_episode_steps, args.seed,
                                              progress=not args.no_progress)
  done = episodes["reward"].sum(-1)
  level = model.levels[acting.low_name(model)]
  batches = gradient_signal.level_batches(model, episodes, config, eps)
  networks, head, params = level.networks, level.config.head, level.params
  if level.residual_networks is not None:  # the residual's Gaussian, its inputs carrying the base's action
    batches = gradient_signal.residual_batches(level, batches)
    networks, head, params = level.residual_networks, "gaussian", level.params["residual"]
  try:
    gains, probed = (gradient_signal.held_out_gains(networks, head, params, batches, sizes,
                                                    kl, args.splits, args.seed) for kl in (config.kl_delta, probe_kl))
  except ValueError as e:
    raise UsageError(f"{args.episodes} episodes of {args.max_episode_steps} steps: {e}") from None
  print(f"{args.episodes} on-policy episodes of {args.model} toward {', '.join(elements)}: "
        f"{done.mean():.2f} elements done on average, {np.mean(done >= len(elements)):.0%} success"
        + (f"; sparse eps {eps:.3f}" if eps is not None else ""))
  print(f"one NPG step (KL {config.kl_delta:g}) fitted on k episodes, surrogate gain (mean over {gains[0].fits} fits):")
  for g in gains:
    print(f"  k = {g.fit:4d}: on its own episodes {g.in_sample:+.5f}, on the other half's "
          f"{g.held_out:+.5f} +- {g.held_out_se:.5f}  (held-out / own {g.ratio:+.3f})")
  orders = gradient_signal.split_orders(gains, probed, config.kl_delta, probe_kl)
  print(f"the held-out gain split by refitting the same steps at KL {probe_kl:g}: first order (the step's direction) "
        f"+ second order (the cost of moving):")
  for o in orders:
    print(f"  k = {o.fit:4d}: {o.held_out_first:+.5f} {o.held_out_second:+.5f}  (first-order held-out / own "
          f"{o.alignment:+.3f})")
  if args.json:
    atomic.write_json(args.json, {"model": args.model, "goal": list(elements), "episodes": args.episodes,
                                  "seed": args.seed, "eps": eps, "config": dataclasses.asdict(config),
                                  "elements_done": float(done.mean()),
                                  "gains": [dict(dataclasses.asdict(g), ratio=g.ratio) for g in gains],
                                  "probe_kl": probe_kl,
                                  "gains_at_probe_kl": [dict(dataclasses.asdict(g), ratio=g.ratio) for g in probed],
                                  "orders": [dict(dataclasses.asdict(o), alignment=o.alignment) for o in orders]})
    print(f"json: {args.json}")
  return 0
