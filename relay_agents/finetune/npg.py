"""Natural policy gradient math in JAX (pure functions), after mjrl's `npg_cg` / `dapg`.

One update of a policy with parameters theta, from on-policy transitions (inputs, actions,
advantages, mask) and optionally a batch of demo examples:

  g      = grad[ mean_on(log pi(a|x) * A) + lambda * mean_demo(log pi(a_d|x_d)) ]    (DAPG if lambda > 0)
  x      = F^{-1} g                 by conjugate gradient on Fisher-vector products (+ damping)
  alpha  = sqrt(2 delta / x^T F x)  so the quadratic KL estimate 0.5 alpha^2 x^T F x equals delta
  theta <- theta + alpha x

mjrl uses g^T x in place of x^T F x (equal when CG converges); x^T F x is what the quadratic
KL estimate is, so we take it (one more Fisher-vector product).

The metric F is the Hessian at theta of the mean over on-policy states of an analytic KL
between the old and the new policy, and F v is its Hessian-vector product (forward over reverse
mode). For the Gaussian head that KL is exact. The mixture head has no closed-form KL; we use
the chain-rule upper bound
  KL(sum_k p_k N_k || sum_k q_k M_k) <= KL(p || q) + sum_k p_k KL(N_k || M_k),
whose Hessian is positive semi-definite and dominates the mixture's Fisher, so a step whose
quadratic estimate of the bound equals delta moves the true KL by at most about delta (the step
is conservative, never larger). We first estimated the mixture's Fisher from score outer
products of sampled actions; on a trained, sharply peaked policy it was too noisy for the step
(measured KL 36x the bound with 4 samples per state), which the bound is not. The log-
likelihood of the mixture is all the policy gradient itself needs. `mean_kl` measures the KL of
a step (analytic for the Gaussian; Monte Carlo with fresh samples from the old policy for the
mixture).
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


class NPGStats(NamedTuple):
  alpha: jnp.ndarray           # step length along x = F^{-1} g
  quadratic_kl: jnp.ndarray    # 0.5 alpha^2 x^T F x (= delta up to rounding)
  kl_bound: jnp.ndarray        # the analytic KL (mixture: its upper bound) after the step
  kl: jnp.ndarray              # measured mean KL(old || new) on the on-policy states
  surrogate_before: jnp.ndarray
  surrogate_after: jnp.ndarray
  demo_log_prob_before: jnp.ndarray
  demo_log_prob_after: jnp.ndarray
  grad_norm: jnp.ndarray
  cg_residual: jnp.ndarray
  cg_solved: jnp.ndarray       # g.x / x^T F x: 1 when CG has solved F x = g (the natural gradient)


def conjugate_gradient(matvec: Callable, b: jnp.ndarray, iters: int, x0=None):
  """Solves A x = b for symmetric positive-definite A given as `matvec`; fixed `iters` steps
  (jit-friendly). Returns (x, ||b - A x||)."""
  x = jnp.zeros_like(b) if x0 is None else x0
  r = b - matvec(x)
  p, rr = r, r @ r

  def body(_, carry):
    x, r, p, rr = carry
    ap = matvec(p)
    a = rr / (p @ ap + 1e-20)
    x, r = x + a * p, r - a * ap
    rr_new = r @ r
    p = r + (rr_new / (rr + 1e-20)) * p
    return x, r, p, rr_new

  x, r, _, _ = jax.lax.fori_loop(0, iters, body, (x, r, p, rr))
  return x, jnp.linalg.norm(b - matvec(x))


def gaussian_kl(old_output, new_output):
  """KL(old || new) per state of diagonal Gaussians given as (mean, log_std)."""
  mo, lso = old_output
  mn, lsn = new_output
  return jnp.sum(lsn - lso + (jnp.exp(2 * lso) + (mo - mn) ** 2) / (2 * jnp.exp(2 * lsn)) - 0.5, -1)


def mixture_kl_bound(old_output, new_output):
  """Upper bound on KL(old || new) per state of Gaussian mixtures (logits, means, log_stds):
  KL of the mixing weights plus the weight-averaged KL of matched components."""
  lo, mo, so = old_output
  ln, mn, sn = new_output
  po, log_po, log_pn = jax.nn.softmax(lo), jax.nn.log_softmax(lo), jax.nn.log_softmax(ln)
  return jnp.sum(po * (log_po - log_pn), -1) + jnp.sum(po * gaussian_kl((mo, so), (mn, sn)), -1)


def _masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_npg_update(networks, head: str, kl_delta: float, cg_iters: int = 10, damping: float = 1e-4,
                    fisher_samples: int = 4):
  """A jitted `update(params, on, demo, demo_weight, key) -> (new_params, NPGStats)`.

  `fisher_samples` actions per state measure the mixture's KL after the step (`NPGStats.kl`).

  on: dict inputs [N, d_in], actions [N, d_out], advantages [N], mask [N] (padding is 0);
    NaN in an action's dims means not executed (a chunk's tail: its marginal is scored).
  demo: dict inputs [M, d_in], actions [M, d_out] (relabeled demo examples; any M >= 1).

  For a chunked policy the analytic KL (and so the step) is that of the whole predicted chunk,
  which bounds the KL of the executed actions' marginal from above: the step stays conservative.
  """
  apply, log_prob = networks.policy.apply, networks.log_prob
  # On-policy actions of a chunked policy carry NaN in the chunk's unexecuted dims: they are
  # scored by the marginal of what was executed (finetune.semi_mdp); full rows score as log_prob.
  marginal = networks.marginal_log_prob or log_prob

  def logp(params, inputs, actions):
    return marginal(apply(params, inputs), actions)

  def sample_actions(output, key):
    keys = jax.random.split(key, fisher_samples)
    return jax.vmap(lambda k: networks.sample(output, k))(keys)  # [S, N, d]

  # "gaussian" and "mse" heads both output (mean, log_std): a diagonal Gaussian policy.
  analytic_kl = mixture_kl_bound if head == "mixture" else gaussian_kl

  def make_fvp(params, inputs, mask):
    flat, unravel = ravel_pytree(params)
    old = jax.lax.stop_gradient(apply(params, inputs))

    def mean_kl_to(f):
      return _masked_mean(analytic_kl(old, apply(unravel(f), inputs)), mask)
    grad_kl = jax.grad(mean_kl_to)
    return lambda v: jax.jvp(grad_kl, (flat,), (v,))[1]

  def mean_kl(old_params, new_params, inputs, mask, key):
    old, new = apply(old_params, inputs), apply(new_params, inputs)
    if head != "mixture":
      return _masked_mean(gaussian_kl(old, new), mask)
    actions = sample_actions(old, key)  # [S, N, d]
    diff = jax.vmap(lambda a: log_prob(old, a) - log_prob(new, a))(actions)
    return _masked_mean(jnp.mean(diff, 0), mask)

  def update(params, on, demo, demo_weight, key):

    def surrogate(p):
      return _masked_mean(logp(p, on["inputs"], on["actions"]) * on["advantages"], on["mask"])

    def demo_log_prob(p):
      return jnp.mean(logp(p, demo["inputs"], demo["actions"]))

    objective = lambda p: surrogate(p) + demo_weight * demo_log_prob(p)
    g, unravel = ravel_pytree(jax.grad(objective)(params))
    fvp = make_fvp(params, on["inputs"], on["mask"])
    # From x0 = 0, as mjrl's cg_solve: warm-started at g, CG on a trained 512x3 mixture policy
    # had g.x / x^T F x = 0.004 after 10 iterations (x ~ the top-curvature part of g; the
    # KL-normalized step then moved the surrogate ~250x less than the solved step), from 0: 1.004.
    x, residual = conjugate_gradient(lambda v: fvp(v) + damping * v, g, cg_iters)
    xfx = jnp.maximum(x @ fvp(x), 1e-20)
    alpha = jnp.sqrt(2.0 * kl_delta / xfx)
    new_params = jax.tree_util.tree_map(lambda p, d: p + d, params, unravel(alpha * x))
    new_output = apply(new_params, on["inputs"])
    stats = NPGStats(alpha=alpha, quadratic_kl=0.5 * alpha ** 2 * xfx,
                     kl_bound=_masked_mean(analytic_kl(apply(params, on["inputs"]), new_output), on["mask"]),
                     kl=mean_kl(params, new_params, on["inputs"], on["mask"], key),
                     surrogate_before=surrogate(params), surrogate_after=surrogate(new_params),
                     demo_log_prob_before=demo_log_prob(params), demo_log_prob_after=demo_log_prob(new_params),
                     grad_norm=jnp.linalg.norm(g), cg_residual=residual, cg_solved=(g @ x) / xfx)
    return new_params, stats

  return jax.jit(update)


def gae(rewards, values, next_values, done, mask, gamma: float, lam: float):
  """Generalized advantage estimation over [B, T] arrays (numpy).

  done[b, t] = 1 ends a segment after transition t (no bootstrapping across it: a re-plan window
  for the low level, the episode for the high level); mask = 0 marks padding. `gamma` is a
  scalar or a [B, T] discount per transition (a semi-MDP decision of n steps: gamma**n).
  Returns (advantages, value targets), zero where mask is 0.
  """
  rewards, values, next_values, done, mask = (np.asarray(x, np.float32) for x in
                                              (rewards, values, next_values, done, mask))
  gamma = np.broadcast_to(np.asarray(gamma, np.float32), rewards.shape)
  adv = np.zeros_like(rewards)
  running = np.zeros(rewards.shape[0], np.float32)
  for t in reversed(range(rewards.shape[1])):
    cont = 1.0 - done[:, t]
    delta = rewards[:, t] + gamma[:, t] * next_values[:, t] * cont - values[:, t]
    running = (delta + gamma[:, t] * lam * cont * running) * mask[:, t]
    adv[:, t] = running
  return adv, (adv + values) * mask


def normalize(advantages, mask):
  """(A - mean) / std over the unmasked entries (mjrl normalizes advantages per batch)."""
  advantages, mask = np.asarray(advantages, np.float32), np.asarray(mask, np.float32)
  n = max(mask.sum(), 1.0)
  mean = (advantages * mask).sum() / n
  std = np.sqrt((((advantages - mean) * mask) ** 2).sum() / n)
  return (advantages - mean) / (std + 1e-6) * mask
