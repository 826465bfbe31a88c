"""Make one model from several trained ones: a level that acts with the mean of their policies.

  relay ensemble --model models/s0/ril --model models/s10/ril --model models/s20/ril --out models/ril_ens
  relay eval --model models/ril_ens --play data/kitchen_play/n400_s0/VERSION --goals 17

The models must be of one agent trained on data of one layout, goal space, environment settings
and windows (e.g. `relay train-il` with different --seed). The ensembled level (--levels; default
the RIL low level, or a flat model's one policy) acts with the mean of the members' actions, each
computed as that member alone would (deterministic mode, chunk, --execute-steps); every other
level is the first model's. Why the low level: relay IL low levels of different seeds fit the
data equally well but follow imperfect subgoals very differently, and a seed's closed-loop result
follows its low level (docs/results.md, session 40: three 1,600-episode low levels averaged did
2.57 elements against 2.02 alone; at the 400-episode table's setting 2-3 members did no better,
1.92-2.05 against 2.10). Beyond the paper, which trains one low level.

The output is a model directory like any other (`relay eval`, `relay diagnose` take it); it copies
the members' policies (not their learner checkpoints) and names its sources and their
fingerprints in agent.json. `relay finetune` refuses it: finetune a member, then ensemble.
"""
import argparse

from relay.cli import UsageError
from relay_data import paths
from relay_data.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", action="append", required=True,
                      help="a trained model dir (repeat: at least 2; the first one's other levels are kept)")
  parser.add_argument("--out", required=True, help="the ensemble's model dir")
  parser.add_argument("--levels", default=None,
                      help="comma-separated levels to ensemble (default: low for ril, the policy of a flat model)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out model")


def run(args: argparse.Namespace) -> int:
  import os  # pylint: disable=import-outside-toplevel
  from relay_agents import ensemble, models  # pylint: disable=import-outside-toplevel
  if len(args.model) < 2:
    raise UsageError(f"give at least 2 models (--model twice or more), got {len(args.model)}")
  for model in args.model:
    paths.check_directory_arg(model, "--model")
    paths.check_output(args.out, "--out", sources=[model], kind="model")
  if os.path.exists(args.out) and not args.overwrite:
    raise UsageError(f"--out {args.out} already exists (pass --overwrite to replace it)")
  if os.path.exists(args.out) and os.listdir(args.out) and not os.path.isfile(os.path.join(args.out, models.RECORD)):
    raise UsageError(f"--out {args.out} exists and is not a model; --overwrite replaces only a model directory")
  levels = None if args.levels is None else [x.strip() for x in args.levels.split(",") if x.strip()]
  if levels is not None and not levels:
    raise UsageError("--levels names no level")
  try:
    out = ensemble.make_ensemble(args.model, args.out, levels, overwrite=args.overwrite)
  except DataError:
    raise  # a missing or broken model: one line naming its file, exit 1
  except ValueError as e:
    raise UsageError(str(e)) from e
  record = models.read_record(out)
  for level, members in sorted(record.members.items()):
    print(f"{level}: the mean of {len(members)} members ({', '.join(args.model)})")
  print(f"model: {out}")
  return 0
