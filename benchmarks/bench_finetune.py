"""Finetuning throughput.

1. Env steps/s of the actor fleet (`relay actor` processes writing whole episodes into Reverb,
   sampling the relay hierarchy with the shipped policy size) with 1 and 2 processes, against
   raw environment steps/s: the fleet's own episodes (same env seeds, same actions, recorded by
   rerunning the deterministic-given-seed actors in this process) replayed open-loop in this
   process, resets included, measured in the same run. Identical physics, so the ratio is the
   cost of the policy, the adder and the process boundary. Random actions were the baseline
   before: they change `mj_step`'s own cost (contacts), which made the ratio meaningless.
   A third row, the same episodes acted in this process without Reverb, splits the gap into
   the policy's share and the writes' share. Each setting is measured with one environment per
   process (`relay actor --envs 1`, as before session 38) and with the default 16 lockstep
   environments whose policy calls are batched (`--envs 16`; 8 in session 38), started as `relay
   finetune` starts them: their lanes in 2 pipelined groups when the box has a core beyond the
   actor processes (`acting.pipeline_groups`; since session 39). Since session 42 the lanes'
   batched calls compute only the executed action of each chunk, from head weights cut once per
   parameter set (`GoalPolicyFn.batch_async(executed_only=True)`). Targets: >= 0.9x with 1
   process, >= 1.8x with 2 (on a box with at least 2 free cores).
2. NPG update time per 10k on-policy decisions (the shipped low level: mixture head, 1024x3,
   chunks of 10 executing 1 since session 33, so one decision is one env step; 512x3 executing
   5 before): the jitted update (gradient, 10 CG
   iterations of KL-Hessian-vector products, step) after warm-up.
"""
import os
import subprocess
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import report
from relay_agents.finetune import acting, env as env_lib, npg, policy_io, replay_io, run as run_lib
from relay_agents.finetune.builder import FinetuneBuilder
from relay_agents.finetune.config import DEFAULT_LANES, FinetuneConfig
from relay_agents.gcbc.config import GoalBCConfig

GOAL = ["microwave", "kettle", "light switch", "slide cabinet"]
HORIZON = 80
EPISODES = 16  # measured episodes per actor (after its warm-up wave): ~3 s windows; 6 gave 1.3 s and ratios +-0.1
LANES = DEFAULT_LANES  # lockstep environments per actor in the batched rows (`relay actor --envs`, default 16)


def _random_ril_model(root: str) -> str:
  """A relay model with the shipped policy options (`GoalBCConfig()` defaults: 1024x3 MLP, mixture
  head, chunks of 10 executing 1, end-effector input; 512x3 executing 5 before session 33),
  trained for a few steps on kitchen-shaped random episodes through the real path (RLDS write,
  Beam relabeling, Reverb, model record): only its size and format matter for throughput, and a model built by hand would drift from
  the format `relay train-il` writes."""
  from pipelines import relabel as relabel_pipeline  # pylint: disable=import-outside-toplevel
  from relay_agents import train  # pylint: disable=import-outside-toplevel
  from relay_data import kitchen, relabeled, rlds_io  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  episodes = []
  for i in range(4):
    obs = rng.normal(size=(60, kitchen.OBS_DIM)).astype(np.float32) * np.float32(0.3)
    episodes.append({"observation": obs, "action": np.tanh(obs[:, :9]), "episode_id": f"e{i}"})
  src = rlds_io.write_episodes(episodes, "bench", os.path.join(root, "data"), progress=False,
                               metadata={"env_settings": kitchen.DEFAULT_SETTINGS.to_dict()})
  data = {}
  for level, cfg in (("low", relabeled.RelabelConfig("low", window=30, goals_per_step=2)),
                     ("high", relabeled.RelabelConfig("high", window=30, window_high=59, goals_per_step=2))):
    data[level] = os.path.join(root, level)
    relabel_pipeline.run_relabel(src, data[level], cfg, show_progress=False)
  out = os.path.join(root, "ril")
  train.train_agent("ril", data, out, train.TrainConfig(steps=5, progress=False), GoalBCConfig(batch_size=32))
  return out


def _env(model):
  return env_lib.GoalKitchenEnv(GOAL, env_lib.default_goal_state(GOAL), HORIZON, seed=0, settings=model.env_settings)


def _episode_indices(processes: int, lanes: int, episodes_each: int = EPISODES):
  """Per actor process, the episode indices a fleet run acts: its warm-up wave (one episode per
  lane: start-up and compilation) and `episodes_each` measured ones."""
  return [[run_lib.actor_episode_index(a, d) for d in range(lanes + episodes_each)] for a in range(processes)]


def _lanes(model, lanes: int):
  environments = env_lib.lanes(lanes, GOAL, env_lib.default_goal_state(GOAL), HORIZON, seed=0,
                               settings=model.env_settings)
  return environments, acting.fixed_actors(model, lanes)


def record_fleet_episodes(model, processes: int, lanes: int, episodes_each: int = EPISODES):
  """The fleet's episodes acted in this process as its processes act them (untimed): [(env episode
  index, [steps, 9] actions)]."""
  out = []
  for indices in _episode_indices(processes, lanes, episodes_each):
    environments, actors = _lanes(model, lanes)
    out += [(i, r["actions"]) for i, r in acting.run_episodes(environments, actors, indices, 0, record=True)]
  return out


def in_process_steps_per_s(model, episodes, lanes: int) -> float:
  """The same episodes sampled in this process by `lanes` lockstep actors (policy + env, no Reverb)."""
  environments, actors = _lanes(model, lanes)
  groups = acting.pipeline_groups(1)  # as `relay finetune` acts in its own process
  for _ in acting.run_episodes(environments, actors, [episodes[0][0]] * lanes, 0, groups=groups):  # compile
    pass
  steps, start = 0, time.perf_counter()
  for _, result in acting.run_episodes(environments, actors, [i for i, _ in episodes], 0, groups=groups):
    steps += result["steps"]
  return steps / (time.perf_counter() - start)


def replay_steps_per_s(model, episodes) -> float:
  """The same episodes' actions stepped open-loop from the same resets (the raw environment)."""
  environment, steps = _env(model), 0
  start = time.perf_counter()
  for index, actions in episodes:
    environment.episode_index = index
    environment.reset()
    for action in actions:
      environment.step(action)
    steps += len(actions)
  return steps / (time.perf_counter() - start)


def fleet_env_steps_per_s(model_dir: str, processes: int, lanes: int, episodes_each: int = EPISODES) -> float:
  """Starts `processes` actors of `lanes` environments each against a fresh server; times the
  episodes after every actor's warm-up wave (start-up and compilation excluded) by the table's
  insert count."""
  model = policy_io.load_model(model_dir)
  total = processes * (lanes + episodes_each)
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
    # As `relay finetune --actor-processes` starts them (lane groups pipelined if a core is spare).
    procs = [subprocess.Popen(run_lib.actor_command(address, i, processes, lanes) +
                              ["--episodes", str(lanes + episodes_each)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(processes)]
    size = lambda: client.server_info()[config.trajectory_table].current_size
    while size() < processes * lanes:  # every actor has written its warm-up wave (about: lanes end together)
      if any(p.poll() not in (None, 0) for p in procs):
        raise RuntimeError("an actor process failed")
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
  actions = np.array(low.networks.sample(low.networks.policy.apply(low.params, inputs), jax.random.PRNGKey(0)))
  executed = low.config.execute_steps * (actions.shape[1] // low.config.action_chunk)
  on_actions = actions.copy()
  on_actions[:, executed:] = np.nan  # a chunk's unexecuted tail, as the learner's decisions have it
  on = {"inputs": inputs, "actions": on_actions, "advantages": rng.normal(size=n).astype(np.float32),
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
    model_dir = _random_ril_model(tmp)
    model = policy_io.load_model(model_dir)
    for lanes in (1, LANES):
      # The 2-process fleet's episodes include the 1-process one's; only the measured ones are replayed.
      episodes = record_fleet_episodes(model, 2, lanes)
      raw_before = replay_steps_per_s(model, episodes)
      local = in_process_steps_per_s(model, episodes, lanes)
      fleet = {k: fleet_env_steps_per_s(model_dir, k, lanes) for k in (1, 2)}
      raw = (raw_before + replay_steps_per_s(model, episodes)) / 2  # before and after: load on the box drifts
      tag = f"{lanes} env{'s' if lanes > 1 else ''} per actor"
      report(f"in-process actor, no Reverb, {tag}", local, "raw env steps (replayed fleet actions)", raw, "-")
      report(f"actor fleet, 1 process, {tag}", fleet[1], "raw env steps (replayed fleet actions)", raw, ">= 0.9x")
      report(f"actor fleet, 2 processes, {tag}", fleet[2], "raw env steps (replayed fleet actions)", raw, ">= 1.8x")
    print(f"NPG update (shipped low level, 10 CG iterations): {npg_seconds_per_10k(model_dir):.2f} s per 10k "
          f"decisions  (cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
  main()
