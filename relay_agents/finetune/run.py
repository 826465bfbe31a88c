"""A finetuning run: server, demo data, actors, learner, logs, checkpoints, the finetuned model.

    finetune(RunConfig(model_dir="models/ril", elements=[...], out_dir="runs/x", env_steps=600_000),
             FinetuneConfig(variant="dapg"))

Outputs in `out_dir`: `checkpoint.pkl` (the learner's whole state after an iteration; a rerun
resumes from it), `log.jsonl` (one record per iteration), `tensorboard/`, `curve.png` (success
rate and elements done vs env steps), `model/` (the finetuned model: a format-2 model whose
record names the model it was finetuned from, so `relay eval --model OUT/model` evaluates it),
`run.json` (settings, eps and the source model's fingerprint).

The model is read through `policy_io` (`relay_agents.models`): the environment is built with the
settings its data was recorded under, its policies see the environment's observation in their
own layout, and DAPG/IRIL's demos are the relabeled data its record names (or --demos).

Actors run in this process by default: the K actors' environments (K x `envs_per_actor`) are
lanes of one lockstep loop whose policy calls are batched (`acting.run_episodes`; episode k is
seeded by (seed, k) whichever lane acts it, so an npg run is deterministic and resumes exactly; dapg/iril also draw demo batches from Reverb,
whose uniform sampling is not seeded, so they resume from the same state but not bit for bit). With `actor_processes`, K `relay actor` processes
are started against the server's address instead; they fetch the newest parameters through the
variables table before each episode (the learner publishes after every iteration), so an episode
can be one iteration stale, and the order in which episodes arrive is not deterministic.
"""
import dataclasses
import itertools
import json
import os
import pickle
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import jax
import numpy as np
import reverb

from relay_agents.finetune import acting, env as env_lib, policy_io, replay_io, rewards
from relay_agents.finetune.builder import FinetuneBuilder
from relay_agents.finetune.config import DEFAULT_LANES, FinetuneConfig
from relay_data import atomic, goal_space, relabeled


@dataclasses.dataclass(frozen=True)
class RunConfig:
  model_dir: str
  elements: Sequence[str]
  out_dir: str
  env_steps: int
  actors: int = 1
  actor_processes: bool = False
  envs_per_actor: int = DEFAULT_LANES  # environments each actor steps in lockstep (`acting.run_episodes`)
  seed: int = 0
  demos: Optional[str] = None         # relabeled demo dataset; default: the one the record names
  progress: bool = True

  def __post_init__(self):
    if self.env_steps <= 0 or self.actors <= 0 or self.envs_per_actor <= 0:
      raise ValueError("env_steps, actors and envs_per_actor must be positive")


def calibrate_eps(demo_dir: str, quantile: float, spec: goal_space.DataSpec, max_examples: int = 50_000) -> float:
  """eps of the sparse reward from the demo windows: (s_t, g_{t+j}) pairs of the low-level
  relabeled examples, j <= W_l (see rewards.calibrate_eps); `spec` is the examples' observation
  spec (which of their dims are the goal-space state)."""
  batches = list(relabeled.load(demo_dir).take(max_examples).batch(8192).as_numpy_iterator())
  if not batches:
    raise ValueError(f"{demo_dir}: no relabeled examples to calibrate eps from")
  states = spec.goal_state(np.concatenate([b["observation"] for b in batches]))
  goals = np.concatenate([b["goal"] for b in batches])
  return rewards.calibrate_eps(states, goals, quantile)


class _Outputs:
  """log.jsonl + TensorBoard + learning curve."""

  def __init__(self, out_dir: str, resume_iteration: int):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.path = os.path.join(out_dir, "log.jsonl")
    self.records = []
    if os.path.exists(self.path):  # keep what the checkpoint covers; drop a torn or later tail
      with open(self.path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except ValueError:
            continue
          if rec.get("iteration", 1 << 30) < resume_iteration:
            self.records.append(rec)
      atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
    self._tf = tf
    self._writer = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard"))

  def write(self, record: Dict) -> None:
    self.records.append(record)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    with self._writer.as_default():
      for k, v in record.items():
        if isinstance(v, (int, float)) and k not in ("iteration", "env_steps"):
          self._tf.summary.scalar(k, v, step=record["env_steps"])
    self._writer.flush()


def plot_curve(records: List[Dict], png_path: str, num_elements: int, title: str = "") -> str:
  """Success rate and elements done vs env steps (plus the acting level's mean reward per step,
  which moves before the task metrics do)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  steps = [r["env_steps"] for r in records]
  reward_key = next((k for k in ("low/reward", "policy/reward") if k in records[0]), None)
  panels = [("success_rate", "success rate (all elements done)", 1.0),
            ("elements_done", "elements done per episode", num_elements)]
  if reward_key:
    panels.append((reward_key, f"{reward_key.split('/')[0]}-level reward per step", None))
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  for ax, (key, label, top) in zip(axes, panels):
    ax.plot(steps, [r[key] for r in records], marker=".")
    ax.set_xlabel("env steps")
    ax.set_title(label)
    if top is not None:
      ax.set_ylim(0, top)
  if title:
    fig.suptitle(title)
  return atomic.save_figure(fig, png_path)


def resolve_eps(model: policy_io.Model, config: FinetuneConfig, demos: Optional[str] = None):
  """(eps of the low-level reward, the demo dataset or None): eps is `config.eps`, or calibrated
  from the demo windows (`calibrate_eps`) for a relay model's sparse or element-wise reward. The
  demo dataset, what DAPG/IRIL imitate, is checked against the model (`policy_io.check_demos`)
  whenever it is used or given."""
  calibrate = config.eps is None and model.hierarchical and config.reward in ("sparse", "element-wise")
  demo_dir = None
  if config.uses_demos or calibrate or demos:
    demo_dir = policy_io.check_demos(model, acting.low_name(model), demos)
  eps = calibrate_eps(demo_dir, config.eps_quantile, model.spec) if calibrate else config.eps
  return eps, demo_dir


def _atomic_pickle(obj, path: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    pickle.dump(obj, f)
  os.replace(tmp, path)


def actor_spec(run: RunConfig, config: FinetuneConfig, goal_state: np.ndarray, model_fingerprint: str) -> Dict:
  """What an actor process needs to act in this run (read from the spec table)."""
  return {"model": os.path.abspath(run.model_dir), "model_fingerprint": model_fingerprint,
          "elements": list(run.elements),
          "goal_state": np.asarray(goal_state, float).tolist(), "seed": run.seed,
          "max_episode_steps": config.max_episode_steps, "episodes_per_iteration": config.episodes_per_iteration,
          "trajectory_table": config.trajectory_table, "variables_table": config.variables_table,
          "explore_std": config.explore_std, "explore_temperature": config.explore_temperature,
          "replan": config.replan, "execute_steps": config.execute_steps,
          "residual": None if config.residual is None else list(config.residual), "residual_std": config.residual_std}


def actor_command(address: str, actor_id: int, processes: int, envs: int = DEFAULT_LANES) -> List[str]:
  """The `relay actor` command line of actor `actor_id` of `processes` on this machine: its lane
  groups pipelined when the machine has a core to spare (`acting.pipeline_groups`)."""
  return [sys.executable, "-m", "relay", "actor", "--reverb-address", address, "--actor-id", str(actor_id),
          "--envs", str(envs), "--groups", str(acting.pipeline_groups(processes))]


def start_actor_processes(address: str, count: int, log_dir: str, envs: int = DEFAULT_LANES) -> List[subprocess.Popen]:
  procs = []
  for i in range(count):
    log = open(os.path.join(log_dir, f"actor{i}.log"), "w")  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(actor_command(address, i, count, envs), stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait_for_episodes(client, table: str, count: int, procs, out_dir: str) -> None:
  while client.server_info()[table].current_size < count:
    for p in procs:
      if p.poll() is not None:
        raise RuntimeError(f"actor process {p.pid} exited with {p.returncode} (see {out_dir}/actor*.log)")
    time.sleep(0.05)


def _check_same_run(path: str, record: Dict) -> None:
  """A rerun resumes only the run it checkpointed: same model (path and content), goal, seed and
  hyper-parameters."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  if old.get("model_fingerprint") != record["model_fingerprint"]:
    raise ValueError(f"{path}: the checkpointed run finetuned model {old.get('model_fingerprint')}, "
                     f"{record['run']['model_dir']} is now {record['model_fingerprint']} (retrained?); use another "
                     "--out or delete that run to start over")
  defaults = {"run": {}, "config": dataclasses.asdict(FinetuneConfig())}  # settings added since that run
  for section, keys in (("run", ("model_dir", "elements", "seed", "demos")), ("config", None)):
    for key in keys or sorted(set(old.get(section, {})) | set(record[section])):
      if old.get(section, {}).get(key, defaults[section].get(key)) != record[section].get(key):
        raise ValueError(f"{path}: the checkpointed run used {key}={old.get(section, {}).get(key)!r}, this one "
                         f"{record[section].get(key)!r}; use another --out or delete that run to start over")


def finetune(run: RunConfig, config: FinetuneConfig) -> Dict:
  """Runs (or resumes) finetuning until `run.env_steps` env steps; returns a summary."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  elements = env_lib.parse_goal(",".join(run.elements))
  model = policy_io.load_model(run.model_dir, config.explore_std, config.explore_temperature, config.replan,
                               config.execute_steps, config.residual_config)
  builder = FinetuneBuilder(config, model)
  eps, demo_dir = resolve_eps(model, config, run.demos)
  os.makedirs(run.out_dir, exist_ok=True)
  envs = [env_lib.GoalKitchenEnv(elements, max_episode_steps=config.max_episode_steps, seed=run.seed,
                                 settings=model.env_settings)]
  goal_state = envs[0].goal_state
  record = json.loads(json.dumps({"run": dataclasses.asdict(run), "config": dataclasses.asdict(config), "eps": eps,
                                   "goal_state": goal_state.tolist(), "demos": demo_dir,
                                   "model_fingerprint": model.fingerprint,
                                   "env_settings": model.env_settings.to_dict()}))
  if os.path.exists(os.path.join(run.out_dir, "checkpoint.pkl")):
    _check_same_run(os.path.join(run.out_dir, "run.json"), record)
  atomic.write_json(os.path.join(run.out_dir, "run.json"), record)

  server, address = replay_io.start_server(builder.make_replay_tables())
  client = replay_io.connect(address)
  procs: List[subprocess.Popen] = []
  try:
    demo_iterator = inserter = None
    if config.uses_demos:
      builder.feed_demos(address, demo_dir, run.progress, run.seed)
      demo_iterator = builder.make_demo_iterator(address)
      inserter = builder.make_demo_inserter(address)
    learner = builder.make_learner(jax.random.PRNGKey(run.seed), client, eps, elements,
                                   demo_iterator=demo_iterator, demo_inserter=inserter)
    ckpt = os.path.join(run.out_dir, "checkpoint.pkl")
    if os.path.exists(ckpt):
      try:
        with open(ckpt, "rb") as f:
          learner.restore(pickle.load(f))
      except (pickle.UnpicklingError, EOFError, KeyError) as e:
        raise ValueError(f"{ckpt}: unreadable checkpoint ({e}); delete it to start over") from e
    outputs = _Outputs(run.out_dir, learner.iteration)
    names = acting.variable_names(model)
    acting.publish_spec(client, config.spec_table, actor_spec(run, config, goal_state, model.fingerprint))
    acting.publish_variables(client, config.variables_table, learner.iteration, learner.get_variables(names))

    actors = []
    if run.actor_processes:
      procs = start_actor_processes(address, run.actors, run.out_dir, run.envs_per_actor)
    else:  # every actor's environments are lanes of one lockstep loop, each lane its own writer
      lanes = min(run.actors * run.envs_per_actor, config.episodes_per_iteration)
      envs = env_lib.lanes(lanes, elements, goal_state, config.max_episode_steps, run.seed,
                           settings=model.env_settings, first=envs[0])
      actors = builder.make_actors([run.seed + i for i in range(lanes)], learner,
                                   [builder.make_adder(client) for _ in range(lanes)])

    bar = tqdm(total=run.env_steps, initial=min(learner.env_steps, run.env_steps), unit="env step",
               desc=f"finetune {config.variant}", disable=not run.progress)
    while learner.env_steps < run.env_steps:
      if actors:  # in-process acting: the iteration's episodes through the lanes
        first = learner.episodes
        for _ in acting.run_episodes(envs, actors, range(first, first + config.episodes_per_iteration), run.seed,
                                     groups=acting.pipeline_groups(1)):
          pass
      else:  # the processes act by themselves; wait for a batch (noticing if they die)
        _wait_for_episodes(client, config.trajectory_table, config.episodes_per_iteration, procs, run.out_dir)
      before = learner.env_steps
      learner.step()
      acting.publish_variables(client, config.variables_table, learner.iteration, learner.get_variables(names))
      _atomic_pickle(learner.save(), ckpt)
      outputs.write({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in learner.last.items()})
      bar.update(min(learner.env_steps, run.env_steps) - min(before, run.env_steps))
      bar.set_postfix(success=f"{learner.last['success_rate']:.2f}", elements=f"{learner.last['elements_done']:.2f}")
    bar.close()
    params = dict(zip(learner.trained, learner.get_variables(learner.trained)))
    policy_io.save_model(model, params, os.path.join(run.out_dir, "model"),
                         {"goal": list(elements), "variant": config.variant, "levels": learner.trained,
                          "env_steps": learner.env_steps, "iterations": learner.iteration, "seed": run.seed,
                          "reward": config.reward, "eps": eps, "demos": demo_dir, "replan": config.replan,
                          "execute_steps": config.execute_steps,
                          "residual": None if config.residual is None else list(config.residual)})
    curve = plot_curve(outputs.records, os.path.join(run.out_dir, "curve.png"), len(elements),
                       f"{config.variant} on {'+'.join(elements)}") if outputs.records else None
    last = outputs.records[-1] if outputs.records else {}
    return {"iterations": learner.iteration, "env_steps": learner.env_steps, "eps": eps, "curve": curve,
            "success_rate": last.get("success_rate"), "elements_done": last.get("elements_done"),
            "first": outputs.records[0] if outputs.records else None}
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        p.kill()
    server.stop()


def actor_episode_index(actor_id: int, done: int) -> int:
  """The episode index (env and actor seeds) of the `done`-th episode of actor process `actor_id`:
  (i + 1) * 2^20 + done, disjoint from the in-process actors' indices and from each other."""
  return (actor_id + 1) * (1 << 20) + done


def run_actor(address: str, actor_id: int = 0, episodes: Optional[int] = None,
              model_dir: Optional[str] = None, envs: int = DEFAULT_LANES, groups: Optional[int] = None) -> int:
  """An actor process: reads the run's spec from the server at `address`, then acts episode after
  episode with the newest published parameters, writing each into the trajectory table, until
  `episodes` are done or the server goes away. Returns the number of episodes written.

  `envs` > 1 steps that many environments in lockstep, one policy call per level for all of them
  (`acting.run_episodes`): the process acts the same episode indices a one-environment actor
  would, several at a time (no more lanes than the run's episodes per iteration, or `episodes`).
  `groups`: lane groups whose network calls overlap the others' environment steps (None:
  `acting.PIPELINE_GROUPS`, which assumes a core to spare; 1 when none is)."""
  if envs <= 0:
    raise ValueError(f"envs must be positive, got {envs}")
  if groups is not None and groups <= 0:
    raise ValueError(f"groups must be positive, got {groups}")
  from relay_agents import acme_compat  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from acme.jax import variable_utils  # pylint: disable=import-outside-toplevel
  client = replay_io.connect(address)
  spec = acting.read_spec(address, FinetuneConfig.spec_table)
  residual = None if spec.get("residual") is None else FinetuneConfig(
      residual=tuple(spec["residual"]), residual_std=spec.get("residual_std", 0.25)).residual_config
  model = policy_io.load_model(model_dir or spec["model"], spec.get("explore_std", 1.0),
                               spec.get("explore_temperature", 1.0), spec.get("replan"), spec.get("execute_steps"),
                               residual)
  if spec.get("model_fingerprint") not in (None, model.fingerprint):
    raise ValueError(f"model {model.path} is {model.fingerprint}, the run at {address} finetunes "
                     f"{spec['model_fingerprint']}: point --model at the run's model")
  config = FinetuneConfig(max_episode_steps=spec["max_episode_steps"],
                          episodes_per_iteration=spec["episodes_per_iteration"],
                          trajectory_table=spec["trajectory_table"], variables_table=spec["variables_table"])
  builder = FinetuneBuilder(config, model)
  names = acting.variable_names(model)
  source = acting.ReverbVariableSource(address, config.variables_table,
                                       [model.levels[n].params for n in names])
  source.bind_names(names)
  variables = variable_utils.VariableClient(source, names)  # one fetch serves every lane
  envs = min(envs, config.episodes_per_iteration, episodes or envs)
  actors = [acting.FinetuneActor(model, variables, builder.make_adder(client), seed=actor_id) for _ in range(envs)]
  environments = env_lib.lanes(envs, spec["elements"], np.asarray(spec["goal_state"], np.float32),
                               config.max_episode_steps, seed=spec["seed"], settings=model.env_settings)
  indices = (actor_episode_index(actor_id, d) for d in (range(episodes) if episodes is not None else
                                                          itertools.count()))
  done = 0
  try:
    for _ in acting.run_episodes(environments, actors, indices, spec["seed"], groups=groups):
      done += 1
  except (reverb.errors.DeadlineExceededError, reverb.errors.ReverbError, RuntimeError) as e:
    print(f"actor {actor_id}: server gone ({type(e).__name__}); stopping after {done} episodes")
  return done
