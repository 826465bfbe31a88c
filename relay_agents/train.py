"""Train relay IL agents and the baselines from relabeled datasets, through Reverb.

    relay train-il --agent ril --low out/low --high out/high --out models/ril
    relay train-il --agent gcbc --data out/flat --out models/gcbc

A policy is trained per level: its relabeled dataset is streamed into a Reverb table (a local
server, or `reverb_address` for a server elsewhere), Acme's BC learner reads batches from it,
scalars go to TensorBoard (`<out>/tensorboard`), checkpoints to `<out>/<level>/checkpoint.pkl`
(resumed automatically), and the final policy to `<out>/<level>/policy.pkl`.
"""
import dataclasses
import functools
import hashlib
import json
import os
import pickle
import time
from typing import Dict, Optional

import jax
import numpy as np
import reverb
import tensorflow as tf

from relay_agents import acme_compat  # noqa: F401
from acme.utils import loggers  # pylint: disable=g-bad-import-order
from relay_agents import replay
from relay_agents.gcbc import acting, builder as gcbc_builder, learning, networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import atomic, relabeled, rlds_io

AGENTS = {
    # agent -> {level: (relabel level expected, GoalBCConfig overrides)}
    "ril": {"low": ("low", {}), "high": ("high", {"target": "subgoal"})},
    "gcbc": {"policy": ("flat", {})},
    "gcbc-norelabel": {"policy": ("final-goal", {})},
    "bc": {"policy": ("bc", {"use_goal": False})},
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 5000
  seed: int = 0
  log_every: int = 100
  checkpoint_every: int = 1000
  reverb_address: Optional[str] = None   # host:port of a running server; None starts one here
  progress: bool = True


class _TensorBoardLogger(loggers.Logger):
  def __init__(self, logdir: str, prefix: str, every: int):
    self._writer = tf.summary.create_file_writer(logdir)
    self._prefix, self._every, self._n = prefix, every, 0
    self.last: Dict[str, float] = {}

  def write(self, data):
    self._n += 1
    self.last = {k: float(np.asarray(v)) for k, v in data.items() if np.asarray(v).shape == ()}
    if self._n % self._every == 0:
      with self._writer.as_default():
        for k, v in self.last.items():
          tf.summary.scalar(f"{self._prefix}/{k}", v, step=self._n)

  def close(self):
    self._writer.flush()


def _atomic_pickle(obj, path: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    pickle.dump(obj, f)
  os.replace(tmp, path)


def _load_examples(path: str, max_examples: int) -> Dict[str, np.ndarray]:
  return relabeled.read_arrays(path, max_examples)


def train_policy(data_dir: str, config: GoalBCConfig, train: TrainConfig, out_dir: str) -> Dict:
  """Trains one goal-conditioned policy; returns a summary (losses, steps, timings)."""
  os.makedirs(out_dir, exist_ok=True)
  dims = replay.ExampleDims.of(data_dir).dims
  sample = _load_examples(data_dir, 100_000)
  norm = gcbc_networks.stats_from_examples([sample], config)
  input_dim = dims["observation"] + (dims["goal"] if config.use_goal else 0)
  networks = gcbc_networks.make_networks(input_dim, dims[config.target], config, norm)
  builder = gcbc_builder.GoalBCBuilder(config, dims)

  server = None
  address = train.reverb_address
  if address is None:
    server, address = replay.start_server(builder.make_replay_tables())
  try:
    fed = replay.feed(address, config.table_name, data_dir, sorted(dims),
                      config.examples_per_item, limit=config.max_replay_size, progress=train.progress,
                      seed=train.seed,
                      total=relabeled.num_examples(data_dir))
    client = replay.connect(address)
    logger = _TensorBoardLogger(os.path.join(os.path.dirname(out_dir), "tensorboard"),
                                os.path.basename(out_dir), train.log_every)
    learner = builder.make_learner(jax.random.PRNGKey(train.seed), networks,
                                   builder.make_dataset_iterator(client), logger=logger)
    ckpt = os.path.join(out_dir, "checkpoint.pkl")
    start = 0
    if os.path.exists(ckpt):
      with open(ckpt, "rb") as f:
        saved = pickle.load(f)
      learner.restore(saved["state"])
      start = saved["step"]
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    losses = []
    t0 = time.time()
    for step in tqdm(range(start, train.steps), desc=f"training {os.path.basename(out_dir)}",
                     disable=not train.progress, leave=False):
      learner.step()
      losses.append(logger.last["loss"])
      if (step + 1) % train.checkpoint_every == 0 or step + 1 == train.steps:
        _atomic_pickle({"state": jax.device_get(learner.save()), "step": step + 1}, ckpt)
    logger.close()
    params = learning.params_of(learner)
    _atomic_pickle({"params": params, "normalization": norm, "config": config, "dims": dims,
                    "input_dim": input_dim, "source": data_dir}, os.path.join(out_dir, "policy.pkl"))
    return {"examples_fed": fed, "steps": train.steps, "resumed_from": start,
            "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-50:])) if losses else None,
            "steps_per_s": (train.steps - start) / max(time.time() - t0, 1e-9)}
  finally:
    if server is not None:
      server.stop()


def load_policy(level_dir: str) -> acting.GoalPolicy:
  """The trained policy in `level_dir`; cached per file version, so an evaluation that builds an
  actor per rollout loads and jit-compiles each policy once."""
  path = os.path.join(level_dir, "policy.pkl")
  stat = os.stat(path)
  return _load_policy(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_policy(path: str, mtime_ns: int, size: int) -> acting.GoalPolicy:  # pylint: disable=unused-argument
  with open(path, "rb") as f:
    saved = pickle.load(f)
  config = saved["config"]
  networks = gcbc_networks.make_networks(saved["input_dim"], saved["dims"][config.target], config,
                                         saved["normalization"])
  return acting.GoalPolicy(networks, saved["params"], config)


def check_dataset_level(agent: str, level: str, data_dir: str) -> None:
  expected = AGENTS[agent][level][0]
  lineage = relabeled.read_lineage(data_dir)
  got = lineage.get("config", {}).get("level")
  if got != expected:
    raise ValueError(f"{agent} {level} policy needs a '{expected}' relabeled dataset; {data_dir} is "
                     f"'{got}' (make one with: relay relabel --level {expected} ...)")


def train_agent(agent: str, data: Dict[str, str], out_dir: str, train: TrainConfig,
                config: GoalBCConfig = GoalBCConfig(), replan_every: Optional[int] = None) -> Dict:
  """Trains every policy of `agent` (see AGENTS) and writes `<out_dir>/agent.json`."""
  if agent not in AGENTS:
    raise ValueError(f"unknown agent {agent!r}; known: {', '.join(AGENTS)}")
  if set(data) != set(AGENTS[agent]):
    raise ValueError(f"{agent} needs datasets for {sorted(AGENTS[agent])}, got {sorted(data)}")
  for level, path in data.items():
    check_dataset_level(agent, level, path)
  if agent == "ril" and replan_every is None:
    replan_every = relabeled.read_lineage(data["low"])["config"]["window"]
  summary = {"agent": agent, "replan_every": replan_every, "levels": {}}
  for level, path in data.items():
    level_config = dataclasses.replace(config, **AGENTS[agent][level][1])
    summary["levels"][level] = train_policy(path, level_config, train, os.path.join(out_dir, level))
  atomic.write_json(os.path.join(out_dir, "agent.json"), summary)  # last: marks the agent complete
  return summary


def model_fingerprint(model_dir: str) -> str:
  """Content hash of a trained agent (agent.json and every policy.pkl): names it in eval logs."""
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(model_dir)):
    for name in sorted(files):
      if name in ("agent.json", "policy.pkl"):
        with open(os.path.join(root, name), "rb") as f:
          h.update(os.path.relpath(os.path.join(root, name), model_dir).encode() + f.read())
  return h.hexdigest()[:16]


def make_actor(model_dir: str, seed: int = 0, deterministic: bool = True):
  """The acting policy of a trained agent directory (hierarchical for ril, flat otherwise)."""
  with open(os.path.join(model_dir, "agent.json")) as f:
    meta = json.load(f)
  if meta["agent"] == "ril":
    return acting.HierarchicalActor(load_policy(os.path.join(model_dir, "high")),
                                    load_policy(os.path.join(model_dir, "low")),
                                    replan_every=meta["replan_every"], seed=seed, deterministic=deterministic)
  return acting.FlatActor(load_policy(os.path.join(model_dir, "policy")), seed=seed, deterministic=deterministic)
