"""Run the benchmarks: `python -m benchmarks [relabel] [pipeline] [generate] [learner] [finetune]`."""
import importlib
import sys

import relay  # noqa: F401  (process env defaults)

ALL = ["relabel", "pipeline", "generate", "learner", "finetune"]


def main(argv):
  names = argv or ALL
  unknown = [n for n in names if n not in ALL]
  if unknown:
    print(f"unknown benchmark(s) {unknown}; choose from {ALL}", file=sys.stderr)
    return 2
  for name in names:
    print(f"\n== benchmark: {name}", flush=True)
    importlib.import_module(f"benchmarks.bench_{name}").main()
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
