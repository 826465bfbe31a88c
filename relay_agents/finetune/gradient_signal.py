"""Is there a policy gradient to follow? The held-out gain of one NPG step (`relay diagnose gradient`).

Why this exists: no finetuning run so far moved its policy outside the noise of evaluation
(docs/results.md, "RL finetuning"), and the learning curves alone cannot say whether the update
is wrong or its batches too small. An NPG step fitted on a batch always raises that batch's own
surrogate; an iteration improves the policy only if the step also raises the surrogate of *other*
episodes of the same policy. `held_out_gains` measures exactly that: it splits a set of on-policy
episodes into two halves, fits one NPG step (the learner's own update, `npg.make_npg_update`, with
its KL bound and head) on the first `fit` episodes of one half, and scores the linear surrogate
mean(log pi(a|x) * A) of the other half before and after the step, over several random splits
and both directions. A held-out gain near zero, or below it, means that at this batch size an
iteration follows its own batch's noise.

A step of KL delta moves other episodes' surrogate in two ways: to first order along what its
direction has in common with their gradient (proportional to sqrt(delta), since the step length
is), and to second order by the curvature of their log-likelihoods (proportional to delta: any
move away from a policy lowers the likelihood of the actions it samples). At the learner's delta
the second can hide the first. `split_orders` refits the same steps (same splits, same directions:
the NPG direction does not depend on delta) at a much smaller probe delta and solves
held_out(delta) = a sqrt(delta) + b delta for both parts.

Advantages are the learner's GAE (its segments, semi-MDP decisions and discounts) with a zero
baseline: the learner's baseline is a value network refitted at every iteration, which one set
of episodes does not give. (Measured once with a value network fitted on the fit half and used
for both halves: the held-out gains turn slightly positive, 0.5-4 % of the in-sample gain;
docs/results.md.) Each half's advantages are normalized on their own, as an iteration's are.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from relay_agents.finetune import acting, adder as adder_lib, env as env_lib, learning, npg, policy_io
from relay_agents.finetune.config import FinetuneConfig


class _Recorder(adder_lib.EpisodeWriter):
  """An `EpisodeWriter` that keeps each episode's columns in memory instead of writing to Reverb,
  so the episodes are laid out exactly as the learner reads them from the trajectory table."""

  def __init__(self, max_sequence_length: int):
    super().__init__(client=None, table="", max_sequence_length=max_sequence_length)
    self.trajectories: List = []

  def _write(self) -> None:
    self.trajectories.append(self._columns())


def collect_episodes(model: policy_io.Model, elements: Sequence[str], count: int, max_episode_steps: int,
                     seed: int = 0, progress: bool = True) -> Dict[str, np.ndarray]:
  """`count` on-policy episodes of `model` toward `elements` (its sampling actor, as finetuning's
  actors act: episode i is a function of (seed, i)), as the learner's [count, T + 1, ...] arrays."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  environment = env_lib.GoalKitchenEnv(elements, max_episode_steps=max_episode_steps, seed=seed,
                                       settings=model.env_settings)
  recorder = _Recorder(max_episode_steps + 1)
  actor = acting.fixed_actor(model, seed, recorder)
  for i in tqdm(range(count), desc="on-policy episodes", unit="episode", disable=not progress):
    acting.run_episode(environment, actor, i, seed)
  return learning.episodes_from_trajectories(recorder.trajectories)


def level_batches(model: policy_io.Model, episodes: Dict[str, np.ndarray], config: FinetuneConfig,
                  eps: Optional[float]) -> Dict[str, np.ndarray]:
  """The acting level's transitions per episode ([B, n, ...]: inputs, actions, advantages, mask),
  advantages by GAE with a zero baseline (see the module docstring), not yet normalized."""
  tr = learning.level_transitions(episodes, acting.low_name(model), model, config, eps)
  zeros = np.zeros(tr["mask"].shape, np.float32)
  adv, _ = npg.gae(tr["rewards"], zeros, zeros, tr["done"], tr["mask"], tr.get("discount", config.gamma),
                   config.gae_lambda)
  return {"inputs": tr["inputs"], "actions": tr["actions"], "advantages": adv, "mask": tr["mask"]}


def residual_batches(level: policy_io.Level, batches: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """`level_batches` of a level with a residual (`gcbc.residual`), as its learner scores them: the
  inputs carry the base's mode action, the actions are the executed ones (a chunk's first)."""
  from relay_agents.gcbc import residual  # pylint: disable=import-outside-toplevel
  a_dim = level.residual_networks.action_dim
  base = residual.make_base_actions(level.fn.base, a_dim)
  inputs = np.asarray(batches["inputs"], np.float32)
  flat = residual.augment(base, level.params["base"], inputs.reshape((-1, inputs.shape[-1])))
  actions = np.nan_to_num(np.asarray(batches["actions"], np.float32)[..., :a_dim])
  return dict(batches, inputs=flat.reshape(inputs.shape[:-1] + (flat.shape[-1],)), actions=actions)


@dataclasses.dataclass
class Gain:
  """One fit size: mean surrogate gains of a step on its own episodes and on the held-out half."""
  fit: int                # episodes the step was fitted on
  in_sample: float
  held_out: float
  held_out_se: float      # standard error over the splits x 2 directions
  fits: int               # how many steps were fitted (splits x 2)

  @property
  def ratio(self) -> float:
    return self.held_out / self.in_sample if self.in_sample else float("nan")


def held_out_gains(networks, head: str, params, batches: Dict[str, np.ndarray], fit_sizes: Sequence[int],
                   kl_delta: float, splits: int = 3, seed: int = 0) -> List[Gain]:
  """For each fit size k: one NPG step on k episodes of a random half, its surrogate gain on those
  episodes and on every episode of the other half (see the module docstring).

  `batches` are [B, n, ...] arrays (inputs, actions, advantages, mask), one row per episode; each
  k must be at most B // 2. `networks`/`params`/`head` are the level's (a `GoalBCNetworks`).
  """
  count = len(batches["mask"])
  half = count // 2
  if half < 1 or not fit_sizes or any(not 1 <= k <= half for k in fit_sizes):
    raise ValueError(f"fit sizes must be in 1..{half} (half of {count} episodes), got {list(fit_sizes)}")
  if splits < 1:
    raise ValueError(f"splits must be positive, got {splits}")
  if not np.any(np.asarray(batches["advantages"]) * np.asarray(batches["mask"])):
    raise ValueError("every advantage is zero (no transition earned a reward), so there is no policy gradient "
                     "to measure: act more or longer episodes, or widen the reward")
  apply = networks.policy.apply
  log_prob = networks.marginal_log_prob or networks.log_prob
  update = npg.make_npg_update(networks, head, kl_delta)

  @jax.jit
  def surrogate(p, on):
    lp = log_prob(apply(p, on["inputs"]), on["actions"])
    return jnp.sum(lp * on["advantages"] * on["mask"]) / jnp.maximum(jnp.sum(on["mask"]), 1.0)

  def batch(rows):
    flat = lambda x: np.asarray(x, np.float32).reshape((-1,) + np.shape(x)[2:])
    pick = {k: np.asarray(v)[rows] for k, v in batches.items()}
    return {"inputs": flat(pick["inputs"]), "actions": flat(pick["actions"]), "mask": flat(pick["mask"]),
            "advantages": flat(npg.normalize(pick["advantages"], pick["mask"]))}

  rng = np.random.default_rng(seed)
  orders = [rng.permutation(count) for _ in range(splits)]
  out = []
  for k in fit_sizes:
    ins, held = [], []
    for order in orders:
      a, b = order[:half], order[half:2 * half]
      for fit_rows, test_rows in ((a, b), (b, a)):
        on, test = batch(fit_rows[:k]), batch(test_rows)
        no_demo = {"inputs": on["inputs"][:1], "actions": np.nan_to_num(on["actions"][:1])}
        new, stats = update(params, on, no_demo, np.float32(0.0), jax.random.PRNGKey(len(ins)))
        ins.append(float(stats.surrogate_after - stats.surrogate_before))
        held.append(float(surrogate(new, test) - surrogate(params, test)))
    out.append(Gain(fit=k, in_sample=float(np.mean(ins)), held_out=float(np.mean(held)),
                    held_out_se=float(np.std(held) / np.sqrt(len(held))), fits=len(held)))
  return out


@dataclasses.dataclass
class Orders:
  """One fit size's surrogate gains at the learner's KL split into first-order (direction) and
  second-order (curvature) parts, from measurements at two KL bounds (`split_orders`)."""
  fit: int
  held_out_first: float   # a sqrt(kl): what the step's direction gains on the other half
  held_out_second: float  # b kl: what moving that far costs the other half
  in_sample_first: float  # the same split of the step's gain on its own episodes

  @property
  def alignment(self) -> float:
    """held-out / own first-order gain: the share of the fitted direction that other episodes of
    the same policy would also follow (1: all of it; ~0: it fits its own batch's noise)."""
    return self.held_out_first / self.in_sample_first if self.in_sample_first else float("nan")


def _solve(kl: float, probe_kl: float, at_kl: float, at_probe: float):
  """(a sqrt(kl), b kl) from gain(d) = a sqrt(d) + b d measured at d = kl and d = probe_kl."""
  r = np.sqrt(probe_kl / kl)  # gain(probe) = r * first + r^2 * second, gain(kl) = first + second
  second = (at_probe - r * at_kl) / (r * r - r)
  return at_kl - second, second


def split_orders(at_kl: Sequence[Gain], at_probe: Sequence[Gain], kl: float, probe_kl: float) -> List[Orders]:
  """Splits the gains of `held_out_gains(..., kl)` into first- and second-order parts, given the
  gains of the same call at `probe_kl` (same batches, fit sizes, splits and seed)."""
  if not 0 < probe_kl < kl:
    raise ValueError(f"the probe KL must be in (0, {kl:g}), got {probe_kl:g}")
  if [g.fit for g in at_kl] != [g.fit for g in at_probe]:
    raise ValueError("the two measurements must have the same fit sizes")
  out = []
  for big, small in zip(at_kl, at_probe):
    held_first, held_second = _solve(kl, probe_kl, big.held_out, small.held_out)
    own_first, _ = _solve(kl, probe_kl, big.in_sample, small.in_sample)
    out.append(Orders(fit=big.fit, held_out_first=held_first, held_out_second=held_second,
                      in_sample_first=own_first))
  return out

