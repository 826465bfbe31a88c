"""Networks of finetuning: the GCBC policies being finetuned (relay_agents.gcbc.networks) and a
learned value baseline per finetuned level.

The value baseline V(x) takes the policy's input ([s, g_l] for the low level, [s, g_h] for the
high level) plus the fraction of the segment elapsed (time in the re-plan window, or in the
episode), since rewards are collected within finite segments. Inputs are normalized with the
policy's own input statistics, so the baseline sees the same scale the policy does.
"""
import dataclasses
from typing import Callable, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from relay_agents.gcbc.networks import INPUT_CLIP, Normalization


@dataclasses.dataclass
class ValueNetwork:
  init: Callable         # key -> params
  apply: Callable        # (params, inputs [B, d], elapsed [B]) -> [B]


def make_value_network(input_dim: int, normalization: Normalization, hidden: Tuple[int, ...],
                       features: Callable = lambda inputs: inputs) -> ValueNetwork:
  """`features`: the policy's input features ([s, g] -> what `normalization` describes, e.g. with
  the end-effector positions appended: `gcbc.networks.input_features`), so the value sees what
  the policy sees."""
  mean, std = jnp.asarray(normalization.input_mean), jnp.asarray(normalization.input_std)

  def forward(inputs, elapsed):
    x = jnp.clip((features(inputs) - mean) / std, -INPUT_CLIP, INPUT_CLIP)
    x = jnp.concatenate([x, elapsed[:, None]], -1)
    return hk.nets.MLP(list(hidden) + [1], name="value")(x)[:, 0]

  t = hk.without_apply_rng(hk.transform(forward))
  dummy = (jnp.zeros((1, input_dim), jnp.float32), jnp.zeros((1,), jnp.float32))
  return ValueNetwork(init=lambda key: t.init(key, *dummy), apply=t.apply)


def make_value_fit(value: ValueNetwork, learning_rate: float, batch_size: int, epochs: int):
  """`fit(params, opt_state, inputs, elapsed, targets, mask, seed) -> (params, opt_state, loss)`:
  `epochs` passes of Adam minibatches over the unmasked rows (a fixed-size jitted step; rows are
  permuted by `seed`, so the fit is deterministic)."""
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def sgd_step(params, opt_state, inputs, elapsed, targets, weights):
    def loss_fn(p):
      err = value.apply(p, inputs, elapsed) - targets
      return jnp.sum(weights * err ** 2) / jnp.maximum(jnp.sum(weights), 1.0)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  def fit(params, opt_state, inputs, elapsed, targets, mask, seed: int):
    rows = np.flatnonzero(np.asarray(mask) > 0)
    losses = []
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
      order = rng.permutation(rows)
      for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:  # pad to the fixed size (weight 0): one compiled step
          weights[len(idx):] = 0.0
          idx = np.resize(idx, batch_size)
        params, opt_state, loss = sgd_step(params, opt_state, inputs[idx], elapsed[idx], targets[idx], weights)
        losses.append(float(loss))
    return params, opt_state, float(np.mean(losses)) if losses else float("nan")

  return optimizer, fit
