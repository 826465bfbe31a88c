"""Run the main job on a small default and print the result.

Stages: stack check (`relay doctor`), then each pipeline stage that has landed. The output
directory keeps every artifact so each stage can be rerun by hand with the printed command.
"""
import argparse
import os
import time

from relay import doctor


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--out", default="demo_out", help="directory for every demo artifact (default: demo_out)")
  parser.add_argument("--seed", type=int, default=0, help="seed for every stage (default: 0)")


def run(args: argparse.Namespace) -> int:
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  print("== [1] stack check (relay doctor)", flush=True)
  results = doctor.run_checks()
  print(doctor.format_table(results))
  if not all(r.ok for r in results):
    print("demo stopped: the stack check failed (see FAIL rows above)")
    return 1
  print(f"demo finished in {time.time() - start:.0f}s")
  return 0
