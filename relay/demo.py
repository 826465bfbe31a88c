"""Run the main job on a small default and print the result.

  [1] stack check (relay doctor)
  [2] generate scripted kitchen play           (relay generate)
  [3] relabel for both levels with Beam        (relay relabel --level low / high)
  [4] train relay IL, both levels, via Reverb  (relay train-il --agent ril)
  [5] evaluate on multi-stage kitchen goals    (relay eval)

Every artifact stays under --out, and each stage prints the equivalent CLI command, so any
stage can be rerun by hand at a larger size. Sizes here are small so the demo runs in minutes
on 2 CPU cores; the numbers it prints are a smoke check, not a result (see docs/results.md).
The smallest run (about a minute and a half):
  relay demo --episodes 2 --steps 50 --goals 1 --rollouts 1 --max-steps 50 --skip-doctor
Third-party log output (Reverb, TensorFlow, worker processes) goes to a log file, named at the end.
"""
import argparse
import os
import shlex
import time

from relay import cli, doctor
from relay_data import paths, quiet
from relay_data.play import generator


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--out", default="demo_out", help="directory for every demo artifact (default: demo_out)")
  parser.add_argument("--seed", type=int, default=0, help="seed for every stage (default: 0)")
  parser.add_argument("--episodes", type=int, default=12, help="play episodes to generate (default 12)")
  parser.add_argument("--steps", type=int, default=1500, help="learner steps per level (default 1500)")
  parser.add_argument("--goals", type=int, default=3, help="frequent goal sets to evaluate (default 3)")
  parser.add_argument("--rollouts", type=int, default=2, help="rollouts per goal (default 2)")
  parser.add_argument("--max-steps", type=int, default=400, help="evaluation horizon (default 400)")
  parser.add_argument("--skip-doctor", action="store_true", help="skip the stack check")


def _stage(title: str, argv) -> None:
  print(f"\n== {title}\n$ relay {' '.join(shlex.quote(a) for a in argv)}", flush=True)
  code = cli.main(list(argv))
  if code != 0:
    raise SystemExit(f"demo stopped: stage '{title}' failed (exit {code})")


SCALE_NOTE = """\
What these figures mean: this demo trains on {episodes} play episodes for {steps} learner steps
per level and evaluates {rollouts} rollout(s) of {max_steps} steps per goal, so success rates of
0% are expected: they show that every stage runs end to end, not how well relay IL works.
Full-scale results (400 episodes, 30,000 learner steps per policy, 17 demo goals + 3 held-out,
RIL against GCBC and BC baselines, three seeds at 20 rollouts per goal, RL finetuning, and the
targets still missed) are in docs/results.md; `bash scripts/results.sh` reproduces them."""


def run(args: argparse.Namespace) -> int:
  for flag in ("episodes", "steps", "goals", "rollouts", "max_steps"):
    if getattr(args, flag) <= 0:
      raise cli.UsageError(f"--{flag.replace('_', '-')} must be positive")
  paths.check_directory_arg(args.out, "--out")
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  start = time.time()
  if not args.skip_doctor:
    print("== [1] stack check (relay doctor)", flush=True)
    results = doctor.run_checks()
    print(doctor.format_table(results))
    if not all(r.ok for r in results):
      print("demo stopped: the stack check failed (see FAIL rows above)")
      return 1
  data_dir = os.path.join(out, "data")
  name = f"n{args.episodes}_s{args.seed}"
  play = os.path.join(data_dir, "kitchen_play", name, generator.GENERATOR_VERSION)
  if os.path.exists(os.path.join(play, "dataset_info.json")):
    print(f"\n== [2] play data: reusing {play}")
  else:
    _stage("[2] generate play data", ["generate", "--episodes", str(args.episodes), "--seed", str(args.seed),
                                       "--data-dir", data_dir])
  relabeled = {}
  for level, extra in (("low", ["--window", "30", "--goals-per-step", "4"]),
                       ("high", ["--window", "30", "--window-high", "400", "--goals-per-step", "4"])):
    relabeled[level] = os.path.join(out, "relabeled", level)
    _stage(f"[3] relabel ({level} level)", ["relabel", "--source", play, "--level", level, *extra,
                                            "--seed", str(args.seed), "--output", relabeled[level], "--overwrite"])
  model = os.path.join(out, "models", "ril")
  if os.path.exists(model):
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(model)
  _stage("[4] train relay IL (both levels, via Reverb)",
         ["train-il", "--agent", "ril", "--low", relabeled["low"], "--high", relabeled["high"], "--out", model,
          "--steps", str(args.steps), "--seed", str(args.seed)])
  _stage("[5] evaluate on kitchen goals",
         ["eval", "--model", model, "--play", play, "--goals", str(args.goals), "--rollouts", str(args.rollouts),
          "--max-steps", str(args.max_steps), "--seed", str(args.seed), "--workers", "2",
          "--json", os.path.join(out, "eval.json")])
  print(f"\ndemo finished in {time.time() - start:.0f}s; artifacts in {out}")
  print(SCALE_NOTE.format(episodes=args.episodes, steps=args.steps, rollouts=args.rollouts,
                          max_steps=args.max_steps))
  if quiet.log_path():
    print(f"third-party log output (Reverb, TensorFlow, workers): {quiet.log_path()}")
  return 0
