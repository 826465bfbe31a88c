"""A finetuning actor in its own process, pointed at a running finetune's Reverb server.

  relay actor --reverb-address HOST:PORT [--actor-id I] [--episodes N] [--envs E] [--groups G]

It reads the run's description (model directory, goal, horizon) from the server, then acts
episode after episode with the newest parameters the learner published there, writing each whole
episode into the trajectory table. `relay finetune --actor-processes` starts these itself; start
more by hand (on this or another machine that sees the model directory) to scale out.

With --envs E the process steps E environments in lockstep and calls each policy level once for
all of them: the network's cost is paid once per E env steps instead of at every step, which is
most of what separates an actor from the raw environment's speed (`python -m benchmarks finetune`).
With --groups G (default 2) the environments form G groups: one group's policy call runs on a
core the environments leave free while the next group's environments step. Pass --groups 1 when
as many actor processes as cores run (`relay finetune --actor-processes` does).
"""
import argparse
import sys

from relay.cli import UsageError
from relay_data.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--reverb-address", required=True, help="HOST:PORT of the finetune run's Reverb server")
  parser.add_argument("--actor-id", type=int, default=0, help="this actor's index: seeds its episodes (default 0)")
  parser.add_argument("--episodes", type=int, default=None, help="stop after N episodes (default: until the server stops)")
  from relay_agents.finetune.config import DEFAULT_LANES  # pylint: disable=import-outside-toplevel
  parser.add_argument("--envs", type=int, default=DEFAULT_LANES,
                      help=f"environments stepped in lockstep, their policy calls batched (default {DEFAULT_LANES}; "
                           "at most the run's episodes per iteration)")
  parser.add_argument("--groups", type=int, default=None,
                      help="split the environments into G groups whose policy calls run while the other groups' "
                           "environments step (default 2: the network uses a core the environments leave free; "
                           "pass 1 when as many actor processes as cores run, as `relay finetune` does)")
  parser.add_argument("--model", default=None,
                      help="model directory, if not at the path the run recorded (it must be the same model: "
                           "its fingerprint is checked against the run's)")


def run(args: argparse.Namespace) -> int:
  if ":" not in args.reverb_address:
    raise UsageError(f"--reverb-address must be HOST:PORT, got {args.reverb_address!r}")
  if args.episodes is not None and args.episodes <= 0:
    raise UsageError("--episodes must be positive")
  if args.actor_id < 0:
    raise UsageError("--actor-id must be >= 0")
  if args.envs <= 0:
    raise UsageError("--envs must be positive")
  if args.groups is not None and args.groups <= 0:
    raise UsageError("--groups must be positive")
  # Heavy (JAX, Reverb, MuJoCo): imported only once the flags are known good, so a typo fails fast.
  from relay_agents.finetune import run as run_lib  # pylint: disable=import-outside-toplevel
  try:
    done = run_lib.run_actor(args.reverb_address, args.actor_id, args.episodes, args.model, args.envs,
                                args.groups)
  except ConnectionError as e:
    print(f"relay actor: error: {e}", file=sys.stderr)
    return 1
  except DataError:
    raise  # a broken model or dataset: one line naming the file, exit 1
  except ValueError as e:
    raise UsageError(str(e)) from e
  print(f"actor {args.actor_id}: {done} episodes written")
  return 0
