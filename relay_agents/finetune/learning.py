"""The finetuning learner: NPG (+ the DAPG term, + IRIL relabeling) on whole on-policy episodes.

One `step()` is one NPG iteration (mjrl's `train_from_paths`):
  1. take `episodes_per_iteration` whole episodes from the trajectory table (a Reverb queue the
     actors fill; each episode is used once);
  2. per finetuned level, build its transitions: the low level acts toward the subgoal, rewarded
     by `rewards.low_level` on the state it reaches, each re-plan window a segment of its own; the
     high level picks a subgoal every W_l steps, rewarded by the task progress of that window;
     a flat (GCBC) policy acts toward the compound goal, rewarded by task progress;
  3. GAE with the level's learned value baseline, advantages normalized;
  4. the NPG step of `npg.make_npg_update`, with the DAPG term lambda_k * mean log pi(demo) on a
     batch of relabeled examples from the demo table (the low level's or the flat policy's);
  5. refit the value baseline to the GAE targets;
  6. IRIL: relabel the episodes with `relay_data.relabel.low_level_examples` (window W_l) and
     insert them into the demo table.
It is an Acme `core.Learner` and `core.VariableSource` (get_variables by level name) with
save/restore of its whole state (params, baselines, optimizer states, counters, RNG).
"""
import time
from typing import Dict, Iterator, List, Optional, Sequence

import jax
import numpy as np
import reverb

from relay_agents import acme_compat  # noqa: F401
from acme import core  # pylint: disable=g-bad-import-order
from acme.utils import loggers
from relay_agents.finetune import acting, npg, policy_io, rewards, semi_mdp
from relay_agents.finetune import networks as ft_networks
from relay_agents.finetune.config import FinetuneConfig
from relay_agents.gcbc import networks as gcbc_networks, residual as residual_lib
from relay_data import kitchen, relabel


def episodes_from_samples(samples) -> Dict[str, np.ndarray]:
  """Reverb samples of EpisodeAdder items -> dict of [B, T+1, ...] numpy arrays."""
  return episodes_from_trajectories([s.data for s in samples])


def episodes_from_trajectories(datas) -> Dict[str, np.ndarray]:
  """EpisodeAdder items (`acme.adders.reverb.base.Trajectory`) -> dict of [B, T+1, ...] arrays."""
  stack = lambda f: np.stack([np.asarray(f(d)) for d in datas])
  return {"observation": stack(lambda d: d.observation["observation"]),
          "goal": stack(lambda d: d.observation["goal"]),
          "action": stack(lambda d: d.action), "reward": stack(lambda d: d.reward),
          "subgoal": stack(lambda d: d.extras["subgoal"]), "valid": stack(lambda d: d.extras["valid"])}


def episode_lengths(episodes) -> np.ndarray:
  return np.asarray(episodes["valid"], np.float32).sum(-1).astype(np.int64)


def elements_done(episodes) -> np.ndarray:
  """[B] the task's completed elements per episode (its rewards are the completion test's)."""
  return (np.asarray(episodes["reward"], np.float32) * episodes["valid"]).sum(-1)


def take_episodes(client: reverb.Client, config: FinetuneConfig) -> Dict[str, np.ndarray]:
  """One iteration's batch: `episodes_per_iteration` whole episodes from the trajectory queue."""
  samples = list(client.sample(config.trajectory_table, config.episodes_per_iteration, emit_timesteps=False,
                               unpack_as_table_signature=True))
  return episodes_from_samples(samples)


def episode_metrics(episodes, num_elements: int) -> Dict[str, float]:
  """What every learner logs of its batch: success rate, elements done, episode length."""
  lengths, done = episode_lengths(episodes), elements_done(episodes)
  return {"episodes": len(lengths), "success_rate": float(np.mean(done >= num_elements)),
          "elements_done": float(np.mean(done)), "episode_steps": float(np.mean(lengths))}


def level_transitions(episodes, level: str, model: policy_io.Model, config: FinetuneConfig, eps: float):
  """[B, n] arrays of one level's transitions: inputs, actions, rewards, done, mask, elapsed."""
  env_obs, goal, act = episodes["observation"], episodes["goal"], episodes["action"]
  obs = model.observation(env_obs)  # the policy's inputs are in the model's layout
  horizon = obs.shape[1] - 1
  valid = np.asarray(episodes["valid"], np.float32)
  env_reward = np.asarray(episodes["reward"], np.float32)[:, :horizon] * valid[:, :horizon]
  if level == "high":
    w = model.cadence
    t = np.arange(0, horizon, w)
    mask = valid[:, t]
    nxt = np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], 1)
    return {"inputs": np.concatenate([obs[:, t], goal[:, t]], -1), "actions": episodes["subgoal"][:, t],
            "rewards": rewards.window_sums(env_reward, w), "done": mask * (1 - nxt), "mask": mask,
            "elapsed": np.broadcast_to(t / horizon, mask.shape).astype(np.float32)}
  t = np.arange(horizon)
  mask = valid[:, :horizon]
  last = mask * (1 - valid[:, 1:horizon + 1])
  # `w`: the segments the policy decides in (a chunked policy predicts anew at each one's start:
  # the actor's re-plans); `segment`: the segments its return is summed over (no bootstrapping
  # across their ends). The same for the subgoal rewards; the task reward spans the episode.
  if model.hierarchical:
    w, subgoal = model.cadence, episodes["subgoal"][:, :horizon]
    if config.reward == "task":  # the task's progress, as a flat policy's
      segment, reward = horizon, env_reward
    else:
      reached = kitchen.goal_state_from_observation(env_obs[:, 1:])
      segment, reward = w, rewards.low_level(config.reward, reached, subgoal, eps) * mask
  else:
    w = segment = horizon
    subgoal, reward = goal[:, :horizon], env_reward
  boundary = ((t + 1) % segment == 0).astype(np.float32)[None]
  steps = {"inputs": np.concatenate([obs[:, :horizon], subgoal], -1), "actions": act[:, :horizon],
           "rewards": reward, "done": np.maximum(boundary * mask, last), "mask": mask,
           "elapsed": np.broadcast_to((t % segment) / segment, mask.shape).astype(np.float32)}
  policy = model.levels[level].config
  if policy.action_chunk > 1:  # one transition per decision: a chunk acts m steps open-loop
    return semi_mdp.to_decisions(steps, w, policy.execute_steps, policy.action_chunk, config.gamma)
  return steps


def relabeled_examples(episodes, window: int, goals_per_step: int, seed: int,
                       observation_fn=None, action_chunk: int = 1) -> Dict[str, np.ndarray]:
  """IRIL: every episode relabeled as low-level examples (the same function as the demos, with
  the level's `action_chunk`), with observations in the model's layout (`observation_fn` of the
  env's; None: as they are)."""
  parts = []
  for b, length in enumerate(episode_lengths(episodes)):
    if length < 1:
      continue
    states = episodes["observation"][b, :length + 1]
    observations = states if observation_fn is None else observation_fn(states)
    parts.append(relabel.low_level_examples(observations, kitchen.goal_state_from_observation(states),
                                            episodes["action"][b, :length + 1], window, goals_per_step,
                                            seed=seed * 1009 + b, action_chunk=action_chunk))
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in parts[0]}


def key_array(key) -> np.ndarray:
  """A JAX PRNG key as a numpy array (typed or legacy keys), for checkpoints and seeds."""
  return np.asarray(jax.random.key_data(key) if hasattr(jax.random, "key_data") else key)


class IterationLearner(core.Learner):
  """What every finetuning learner shares (`run.finetune` drives any of them): the model's
  parameters by level name, the levels it trains, and the counters of iterations, env steps and
  episodes, with `last`, the newest iteration's metrics."""

  def __init__(self, model: policy_io.Model, trained: Sequence[str]):
    self._names = acting.variable_names(model)
    self._trained = list(trained)
    self._params = {n: model.levels[n].params for n in self._names}
    self.iteration, self.env_steps, self.episodes = 0, 0, 0
    self.last: Dict[str, float] = {}

  @property
  def trained(self) -> List[str]:
    """The levels this learner updates (the others keep the model's parameters)."""
    return list(self._trained)

  def get_variables(self, names: Sequence[str]) -> List:
    return [self._params[n] for n in names]

  def _end_iteration(self, metrics: Dict, lengths: np.ndarray, t0: float, t_sample: float) -> None:
    self.iteration += 1
    self.env_steps += int(lengths.sum())
    self.episodes += len(lengths)
    metrics.update(env_steps=self.env_steps, time_sample_s=t_sample, time_update_s=time.time() - t0 - t_sample)
    self.last = metrics


class NPGLearner(IterationLearner):
  """NPG / DAPG / IRIL-RPL learner over a trajectory table (see the module docstring)."""

  def __init__(self, model: policy_io.Model, config: FinetuneConfig, replay_client: reverb.Client,
               eps: float, random_key, elements: Sequence[str],
               demo_iterator: Optional[Iterator] = None, demo_inserter=None,
               logger: Optional[loggers.Logger] = None):
    if config.uses_demos and demo_iterator is None:
      raise ValueError(f"variant {config.variant} needs a demo iterator (relabeled examples)")
    self._model, self._config, self._client, self._eps = model, config, replay_client, eps
    self._elements, self._demos, self._insert = list(elements), demo_iterator, demo_inserter
    self._logger = logger or loggers.NoOpLogger()
    super().__init__(model, [acting.low_name(model)] + (["high"] if model.hierarchical and config.finetune == "both"
                                                        else []))
    key, *value_keys = jax.random.split(random_key, 1 + len(self._trained))
    self._updates, self._value_nets, self._value_fits = {}, {}, {}
    self._value_params, self._value_opt, self._base_actions = {}, {}, {}
    for name, vkey in zip(self._trained, value_keys):
      level = model.levels[name]
      networks, head = level.networks, level.config.head
      if level.residual_networks is not None:  # NPG on the residual alone (gcbc.residual): a Gaussian
        networks, head = level.residual_networks, "gaussian"
        self._base_actions[name] = residual_lib.make_base_actions(level.fn.base, networks.action_dim)
      self._updates[name] = npg.make_npg_update(networks, head, config.kl_delta,
                                                config.cg_iters, config.cg_damping, config.fisher_samples)
      vnet = ft_networks.make_value_network(level.networks.input_dim, level.networks.normalization,
                                            config.value_hidden,
                                            gcbc_networks.input_features(level.config, level.dims["observation"]))
      optimizer, fit = ft_networks.make_value_fit(vnet, config.value_learning_rate, config.value_batch_size,
                                                  config.value_epochs)
      self._value_nets[name], self._value_fits[name] = vnet, fit
      self._value_params[name] = vnet.init(vkey)
      self._value_opt[name] = optimizer.init(self._value_params[name])
    self._value_apply = {n: jax.jit(v.apply) for n, v in self._value_nets.items()}
    self._key = key_array(key)

  # --- core.Learner ---------------------------------------------------------------------------
  def save(self) -> Dict:
    return jax.device_get({"params": self._params, "value_params": self._value_params,
                           "value_opt": self._value_opt, "iteration": self.iteration,
                           "env_steps": self.env_steps, "episodes": self.episodes, "key": self._key})

  def restore(self, state: Dict) -> None:
    self._params = dict(state["params"])
    self._value_params, self._value_opt = dict(state["value_params"]), dict(state["value_opt"])
    self.iteration, self.env_steps, self.episodes = state["iteration"], state["env_steps"], state["episodes"]
    self._key = np.asarray(state["key"])

  def _next_key(self):
    key, sub = jax.random.split(jax.numpy.asarray(self._key))
    self._key = np.asarray(key)
    return sub

  def _demo_batch(self, name: str):
    if not self._config.uses_demos or name == "high":  # the DAPG term is the acting level's
      d_in = self._model.levels[name].networks.input_dim
      d_out = self._model.levels[name].networks.output_dim
      return {"inputs": np.zeros((1, d_in), np.float32), "actions": np.zeros((1, d_out), np.float32)}, 0.0
    return next(self._demos), self._config.demo_weight(self.iteration)

  def _update_level(self, name: str, episodes) -> Dict[str, float]:
    cfg = self._config
    tr = level_transitions(episodes, name, self._model, cfg, self._eps)
    b, n = tr["mask"].shape
    flat = lambda x: np.asarray(x, np.float32).reshape((b * n,) + np.shape(x)[2:])
    inputs, elapsed, mask = flat(tr["inputs"]), flat(tr["elapsed"]), flat(tr["mask"])
    values = np.asarray(self._value_apply[name](self._value_params[name], inputs, elapsed)).reshape(b, n)
    next_values = np.concatenate([values[:, 1:], np.zeros((b, 1), np.float32)], 1)
    gamma = tr.get("discount", cfg.gamma)  # a chunked policy's decisions last several steps
    adv, targets = npg.gae(tr["rewards"], values, next_values, tr["done"], tr["mask"], gamma, cfg.gae_lambda)
    on = {"inputs": inputs, "actions": flat(tr["actions"]), "advantages": flat(npg.normalize(adv, tr["mask"])),
          "mask": mask}
    demo, weight = self._demo_batch(name)
    if name in self._base_actions:  # the residual's inputs carry the base's action; it scores executed actions
      base = self._params[name]["base"]
      a_dim = self._model.levels[name].residual_networks.action_dim
      # (padding rows carry NaN actions, which a masked Gaussian log-likelihood would still propagate)
      on = dict(on, inputs=residual_lib.augment(self._base_actions[name], base, on["inputs"]),
                actions=np.nan_to_num(on["actions"][:, :a_dim]))
      demo = {"inputs": residual_lib.augment(self._base_actions[name], base, demo["inputs"]),
              "actions": np.asarray(demo["actions"], np.float32)[:, :a_dim]}
      new, stats = self._updates[name](self._params[name]["residual"], on, demo, np.float32(weight),
                                       self._next_key())
      self._params[name] = {"base": base, "residual": new}
    else:
      self._params[name], stats = self._updates[name](self._params[name], on, demo, np.float32(weight),
                                                      self._next_key())
    seed = int(np.asarray(self._next_key())[-1])
    self._value_params[name], self._value_opt[name], value_loss = self._value_fits[name](
        self._value_params[name], self._value_opt[name], inputs, elapsed, flat(targets), mask, seed)
    out = {k: float(v) for k, v in stats._asdict().items()}
    if not (cfg.uses_demos and name != "high"):  # no demo term for this level: its stats mean nothing
      out = {k: v for k, v in out.items() if not k.startswith("demo_")}
    out.update(value_loss=value_loss, demo_weight=float(weight),
               # per env step (a chunked policy's decision rewards are sums over its steps,
               # discounted within the chunk: at most 1 - gamma**m off)
               reward=float((tr["rewards"] * tr["mask"]).sum() / max(tr.get("steps", tr["mask"]).sum(), 1)))
    return {f"{name}/{k}": v for k, v in out.items()}

  def step(self) -> None:
    t0 = time.time()
    cfg = self._config
    episodes = take_episodes(self._client, cfg)
    lengths = episode_lengths(episodes)
    metrics = {"iteration": self.iteration, **episode_metrics(episodes, len(self._elements))}
    t_sample = time.time() - t0
    for name in self._trained:
      metrics.update(self._update_level(name, episodes))
    if cfg.variant == "iril" and self._insert is not None and self._model.window:
      examples = relabeled_examples(episodes, self._model.window, cfg.iril_goals_per_step, self.iteration,
                                    self._model.observation,
                                    self._model.levels[acting.low_name(self._model)].config.action_chunk)
      metrics["iril_inserted"] = self._insert(examples) if examples else 0
    self._end_iteration(metrics, lengths, t0, t_sample)
    self._logger.write(metrics)
