"""Run the benchmarks: `python -m benchmarks [relabel] [pipeline] [generate] [learner] [finetune]`."""
import importlib
import sys
import textwrap

import relay  # noqa: F401  (process env defaults)

ALL = ["relabel", "pipeline", "generate", "learner", "finetune"]


def _describe(name: str) -> str:
  """The first paragraph of a benchmark module's docstring (what it measures against what)."""
  doc = (importlib.import_module(f"benchmarks.bench_{name}").__doc__ or "").strip()
  indent = " " * 12  # the width of "  NAME      " before it
  return textwrap.fill(" ".join(doc.split("\n\n")[0].split()), 96, initial_indent=indent,
                       subsequent_indent=indent)[len(indent):]


def main(argv):
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__.strip() + "\n\nPrints ratios measured in one run against a named baseline (this box is noisy:\n"
          "compare ratios, not seconds); figures and targets are in docs/benchmarks.md.\n\nbenchmarks:")
    for name in ALL:
      print(f"  {name:9s} {_describe(name)}")
    return 0
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
