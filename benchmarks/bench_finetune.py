"""Finetuning throughput.

1. Env steps/s of the actor fleet (`relay actor` processes writing whole episodes into Reverb,
   sampling the relay hierarchy with the shipped policy size) with 1 and 2 processes, against
   raw environment steps/s (the same goal env stepped with random actions in this process,
   measured in the same run). Targets: >= 0.9x with 1 process, >= 1.8x with 2 (on a box with
   at least 2 free cores).
2. NPG update time per 10k on-policy samples (the shipped mixture head, 256x256): the jitted
   update (gradient, 10 CG iterations of KL-Hessian-vector products, step) after warm-up.
"""
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import report
from relay_agents.finetune import acting, env as env_lib, npg, policy_io, replay_io
from relay_agents.finetune.builder import FinetuneBuilder
from relay_agents.finetune.config import FinetuneConfig
from relay_agents.gcbc import networks as gcbc_networks
from relay_agents.gcbc.config import GoalBCConfig

GOAL = ["microwave", "kettle", "light switch", "slide cabinet"]
HORIZON = 80


def _random_ril_model(root: str) -> str:
  """A relay model with the shipped network sizes and random weights (throughput only)."""
  rng = np.random.default_rng(0)
  obs = rng.normal(size=(1000, 59)).astype(np.float32)
  goal = rng.normal(size=(1000, 30)).astype(np.float32)
  for level, target, out in (("low", "action", rng.uniform(-1, 1, (1000, 9))), ("high", "subgoal", goal)):
    config = GoalBCConfig(target=target, action_chunk=1)
    norm = gcbc_networks.Normalization.from_arrays(np.concatenate([obs, goal], -1), out)
    nets = gcbc_networks.make_networks(89, out.shape[1], config, norm)
    os.makedirs(os.path.join(root, level))
    with open(os.path.join(root, level, "policy.pkl"), "wb") as f:
      pickle.dump({"params": jax.device_get(nets.policy.init(jax.random.PRNGKey(0))), "normalization": norm,
                   "config": config, "dims": {"observation": 59, "goal": 30, target: out.shape[1]},
                   "input_dim": 89, "source": None}, f)
  with open(os.path.join(root, "agent.json"), "w") as f:
    json.dump({"agent": "ril", "replan_every": 30}, f)
  return root


def raw_env_steps_per_s(steps: int = 1000) -> float:
  env = env_lib.GoalKitchenEnv(GOAL, max_episode_steps=HORIZON)
  rng = np.random.default_rng(0)
  env.reset()
  start, n = time.perf_counter(), 0
  while n < steps:
    if env.step(rng.uniform(-1, 1, 9)).last():
      env.reset()
    n += 1
  return n / (time.perf_counter() - start)


def fleet_env_steps_per_s(model_dir: str, processes: int, episodes_each: int = 3) -> float:
  """Starts `processes` actors against a fresh server; times the episodes after each actor's
  first (start-up and compilation excluded) by the table's insert count."""
  model = policy_io.load_model(model_dir)
  total = processes * (episodes_each + 1)
  config = FinetuneConfig(variant="npg", episodes_per_iteration=total, max_episode_steps=HORIZON)
  builder = FinetuneBuilder(config, model)
  server, address = replay_io.start_server(builder.make_replay_tables())
  procs = []
  try:
    client = replay_io.connect(address)
    acting.publish_spec(client, config.spec_table, {
        "model": model_dir, "elements": GOAL, "goal_state": env_lib.default_goal_state(GOAL).tolist(), "seed": 0,
        "max_episode_steps": HORIZON, "episodes_per_iteration": total,
        "trajectory_table": config.trajectory_table, "variables_table": config.variables_table})
    names = acting.variable_names(model)
    acting.publish_variables(client, config.variables_table, 0, [model.levels[n].params for n in names])
    procs = [subprocess.Popen([sys.executable, "-m", "relay", "actor", "--reverb-address", address,
                               "--actor-id", str(i), "--episodes", str(episodes_each + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(processes)]
    size = lambda: client.server_info()[config.trajectory_table].current_size
    while size() < processes:  # every actor has written its first (warm-up) episode
      time.sleep(0.05)
    start, first = time.perf_counter(), size()
    while size() < total:
      if any(p.poll() not in (None, 0) for p in procs):
        raise RuntimeError("an actor process failed")
      time.sleep(0.05)
    return (total - first) * HORIZON / (time.perf_counter() - start)
  finally:
    for p in procs:
      p.wait(timeout=60)
    server.stop()


def npg_seconds_per_10k(model_dir: str, n: int = 10_000, repeats: int = 3) -> float:
  low = policy_io.load_model(model_dir).levels["low"]
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(n, 89)).astype(np.float32)
  actions = np.asarray(low.networks.sample(low.networks.policy.apply(low.params, inputs), jax.random.PRNGKey(0)))
  on = {"inputs": inputs, "actions": actions, "advantages": rng.normal(size=n).astype(np.float32),
        "mask": np.ones(n, np.float32)}
  demo = {"inputs": inputs[:256], "actions": actions[:256]}
  update = npg.make_npg_update(low.networks, low.config.head, 0.01)
  jax.block_until_ready(update(low.params, on, demo, 0.1, jax.random.PRNGKey(1)))
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(update(low.params, on, demo, 0.1, jax.random.PRNGKey(i)))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 10_000 / n


def main():
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = _random_ril_model(os.path.join(tmp, "ril"))
    raw_before = raw_env_steps_per_s()
    fleet = {k: fleet_env_steps_per_s(model_dir, k) for k in (1, 2)}
    raw = (raw_before + raw_env_steps_per_s()) / 2  # before and after: load on the box drifts
    report("actor fleet, 1 process", fleet[1], "raw env steps", raw, ">= 0.9x")
    report("actor fleet, 2 processes", fleet[2], "raw env steps", raw, ">= 1.8x")
    print(f"NPG update (mixture head, 256x256, 10 CG iterations): {npg_seconds_per_10k(model_dir):.2f} s per 10k "
          f"samples  (cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
  main()
