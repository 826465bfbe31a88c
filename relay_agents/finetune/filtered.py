"""Success-filtered self-imitation: finetuning without a policy gradient (variant "filtered").

Why it exists: sessions 23-29 measured that one NPG step fitted on a batch of on-policy episodes
does not improve other episodes of the same goal (`relay diagnose gradient`: other episodes share
about 1 % of the fitted direction, against 10-29 % on the test bandit), so NPG, DAPG and IRIL spend
their KL on their batch's noise. This operator needs no per-decision credit assignment: keep the
episodes that completed the whole goal and imitate the decisions the policy made in them, under
the subgoals it was commanded, alongside the relabeled demos it was trained on (filtered
behaviour cloning; self-imitation; expert iteration, with the environment's completion test as
the filter). Each `step()`:

  1. take `episodes_per_iteration` whole episodes from the trajectory table (as NPG does);
  2. keep the successful ones (every element done); their decisions per finetuned level
     (`learning.level_transitions`: the low level's input [s_t, subgoal_t] and the chunk it
     executed, NaN in the dims it did not) join the run's buffer of kept decisions (FIFO,
     `own_max_examples`);
  3. `bc_steps` Adam steps on  -[(1 - f) mean log pi(demo) + f mean log pi(kept)],  f =
     `own_fraction`, kept decisions scored by the marginal of what was executed. The plain
     networks are trained, not the narrowed ones the actors sample from: evaluation runs the plain
     policy's likeliest mode, and that is what imitation of the kept decisions moves.
  No kept decision yet: no update (continuing on the demos alone would be retraining, not
  finetuning).

It is an Acme `core.Learner` (`learning.IterationLearner`, as `learning.NPGLearner`: variables by level
name, save/restore of its whole state including the kept buffer, so a rerun resumes from it; not
bit for bit, as for dapg: the demo batches come from Reverb's unseeded sampling), used by
`run.finetune` through the builder.
"""
import os
import time
from typing import Dict, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import reverb

from relay_agents import models
from relay_agents.finetune import acting, learning, policy_io
from relay_agents.finetune.config import FinetuneConfig


def kept_decisions(transitions: Dict[str, np.ndarray], keep: np.ndarray) -> Dict[str, np.ndarray]:
  """The [N, d] inputs and actions of the valid decisions of the kept episodes (`keep`: [B] bool)."""
  rows = (np.asarray(transitions["mask"]) > 0) & np.asarray(keep, bool)[:, None]
  return {"inputs": np.asarray(transitions["inputs"], np.float32)[rows],
          "actions": np.asarray(transitions["actions"], np.float32)[rows]}


def append_fifo(buffer: Dict[str, np.ndarray], new: Dict[str, np.ndarray], capacity: int) -> Dict[str, np.ndarray]:
  """`buffer` + `new`, keeping the newest `capacity` rows."""
  if not buffer:
    return {k: v[-capacity:] for k, v in new.items()}
  return {k: np.concatenate([buffer[k], new[k]])[-capacity:] for k in buffer}


def make_bc_update(networks, optimizer: optax.GradientTransformation, own_fraction: float):
  """A jitted `update(params, opt_state, demo, own) -> (params, opt_state, demo_logp, own_logp)`:
  one Adam step on the mixed log-likelihood (see the module docstring). NaN action dims are not
  executed and integrated out (`marginal_log_prob`); a demo's full chunk scores as `log_prob`."""
  apply = networks.policy.apply
  score = networks.marginal_log_prob or networks.log_prob

  def loss(params, demo, own):
    demo_logp = jnp.mean(score(apply(params, demo["inputs"]), demo["actions"]))
    own_logp = jnp.mean(score(apply(params, own["inputs"]), own["actions"]))
    return -((1.0 - own_fraction) * demo_logp + own_fraction * own_logp), (demo_logp, own_logp)

  def update(params, opt_state, demo, own):
    (_, (demo_logp, own_logp)), grads = jax.value_and_grad(loss, has_aux=True)(params, demo, own)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, demo_logp, own_logp

  return jax.jit(update)


class FilteredLearner(learning.IterationLearner):
  """Success-filtered self-imitation over a trajectory table (see the module docstring)."""

  def __init__(self, model: policy_io.Model, config: FinetuneConfig, replay_client: reverb.Client,
               eps: float, random_key, elements: Sequence[str], demo_iterator: Iterator):
    if demo_iterator is None:
      raise ValueError("variant filtered needs a demo iterator (relabeled examples)")
    super().__init__(model, [acting.low_name(model)])
    self._model, self._config, self._client, self._eps = model, config, replay_client, eps
    self._elements, self._demos = list(elements), demo_iterator
    self._optimizer = optax.adam(config.bc_learning_rate)
    self._updates = {}
    for name in self._trained:  # the plain networks: the narrowed ones are for sampling only
      networks = models.load_networks(os.path.join(model.path, name))[0]
      self._updates[name] = make_bc_update(networks, self._optimizer, config.own_fraction)
    self._opt_state = {n: self._optimizer.init(self._params[n]) for n in self._trained}
    self._kept: Dict[str, Dict[str, np.ndarray]] = {n: {} for n in self._trained}
    self._seed = int(learning.key_array(random_key).ravel()[-1])

  # --- core.Learner ---------------------------------------------------------------------------
  def save(self) -> Dict:
    return jax.device_get({"params": self._params, "opt_state": self._opt_state, "kept": self._kept,
                           "iteration": self.iteration, "env_steps": self.env_steps, "episodes": self.episodes})

  def restore(self, state: Dict) -> None:
    self._params, self._opt_state = dict(state["params"]), dict(state["opt_state"])
    self._kept = {n: dict(v) for n, v in state["kept"].items()}
    self.iteration, self.env_steps, self.episodes = state["iteration"], state["env_steps"], state["episodes"]

  def _update_level(self, name: str, episodes, keep: np.ndarray) -> Dict[str, float]:
    cfg = self._config
    transitions = learning.level_transitions(episodes, name, self._model, cfg, self._eps)
    new = kept_decisions(transitions, keep)
    if len(new["inputs"]):
      self._kept[name] = append_fifo(self._kept[name], new, cfg.own_max_examples)
    own = self._kept[name]
    out = {"kept_decisions": float(len(new["inputs"])), "own_examples": float(len(own.get("inputs", ())))}
    if not own:
      return {f"{name}/{k}": v for k, v in out.items()}
    rng = np.random.default_rng((self._seed, self.iteration))
    params, opt_state = self._params[name], self._opt_state[name]
    demo_logps, own_logps = [], []
    for _ in range(cfg.bc_steps):
      demo = next(self._demos)
      pick = rng.integers(0, len(own["inputs"]), cfg.demo_batch_size)
      batch = {"inputs": own["inputs"][pick], "actions": own["actions"][pick]}
      params, opt_state, demo_logp, own_logp = self._updates[name](params, opt_state, demo, batch)
      demo_logps.append(demo_logp)
      own_logps.append(own_logp)
    self._params[name], self._opt_state[name] = params, opt_state
    out.update(demo_log_prob=float(np.mean(demo_logps)), own_log_prob_first=float(own_logps[0]),
               own_log_prob_last=float(own_logps[-1]))
    return {f"{name}/{k}": v for k, v in out.items()}

  def step(self) -> None:
    t0 = time.time()
    episodes = learning.take_episodes(self._client, self._config)
    lengths = learning.episode_lengths(episodes)
    keep = learning.elements_done(episodes) >= len(self._elements)
    metrics = {"iteration": self.iteration, **learning.episode_metrics(episodes, len(self._elements)),
               "kept_episodes": int(keep.sum())}
    t_sample = time.time() - t0
    for name in self._trained:
      metrics.update(self._update_level(name, episodes, keep))
    self._end_iteration(metrics, lengths, t0, t_sample)
