"""A residual policy on a frozen goal-conditioned level: what finetuning can train instead of the level.

    a_t = mode(base)(s_t, g_t) + r_phi(s_t, g_t) + sigma * eps_t,    eps_t ~ N(0, I)

The base is a trained level acting deterministically (its likeliest mode, re-predicted at every
step); r_phi is a small MLP whose last layer starts at zero, so a new residual acts exactly as the
base does; sigma = exp(log_std) is one learned std per action dimension, starting at `std` times
the spread of the demos' actions (the base's output normalization). Only (phi, log_std) are trained.

Why (docs/results.md, "A residual policy over the frozen low level"): no finetuning of the whole
low level (1-2 M parameters, a mixture of chunks) moved its success, and the steps' directions
barely carry over to other episodes of the same policy (session 29). Residual RL on a frozen
behaviour-cloned policy is known to work where finetuning the base itself does not (Silver et al.
2018, "Residual Policy Learning"; Ankile et al. 2024, "From Imitation to Refinement", on chunked
policies): a small network starting at zero, exploring with its own Gaussian. Measured here
(session 35): it did not raise success either, on average over three seeds.

The composed policy is a `GoalPolicyFn` (`ResidualPolicyFn`), so every actor, evaluation and
finetuning path acts with it unchanged; its parameters are {"base": ..., "residual": ...}. It is
saved beside the base's policy.pkl as residual.pkl, and `relay_agents.models` composes the two when
it loads a level that has one.
"""
import dataclasses
import os
import pickle
from typing import Callable, Dict, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from relay_agents.gcbc import acting
from relay_agents.gcbc.networks import INPUT_CLIP, input_features, policy_inputs

FILE = "residual.pkl"  # models.RESIDUAL
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ResidualConfig:
  """hidden: the residual MLP's hidden sizes; std: its initial per-dimension std, as a fraction of
  the demos' action spread per dimension (the base policy's output normalization)."""
  hidden: Tuple[int, ...] = (256, 256)
  std: float = 0.25

  def __post_init__(self):
    if not self.hidden or any(int(h) <= 0 for h in self.hidden):
      raise ValueError(f"residual hidden sizes must be positive, got {list(self.hidden)}")
    if not (np.isfinite(self.std) and self.std > 0):
      raise ValueError(f"residual std must be a positive number, got {self.std}")
    object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


@dataclasses.dataclass
class ResidualNetworks:
  """The residual as NPG sees a policy (`finetune.npg.make_npg_update`): a diagonal Gaussian whose
  inputs are [s, g, base action] and whose mean is base action + r_phi(s, g)."""
  policy: hk.Transformed     # apply(params, [B, input_dim + action_dim]) -> (mean, log_std) [B, A] each
  log_prob: Callable         # (output, actions [B, A]) -> [B]
  sample: Callable           # (output, key) -> [B, A]
  mean: Callable             # output -> [B, A]
  input_dim: int             # width of [s, g]
  action_dim: int
  marginal_log_prob: Optional[Callable] = None  # every dimension is executed: log_prob is the marginal

  @property
  def output_dim(self) -> int:
    return self.action_dim


def make_networks(base: acting.GoalPolicyFn, base_saved: Dict, config: ResidualConfig) -> ResidualNetworks:
  """The residual of a base level (`base`: its policy function; `base_saved`: its policy.pkl dict,
  whose normalization scales the residual's inputs and sets its initial std)."""
  norm = base_saved["normalization"]
  input_dim = int(base_saved["input_dim"])
  action_dim = int(base_saved["dims"][base.config.target_field])
  features = input_features(base.config, base_saved["dims"]["observation"])
  mean_in, std_in = jnp.asarray(norm.input_mean), jnp.asarray(norm.input_std)
  init_log_std = np.log(config.std * np.asarray(norm.output_std, np.float32)[:action_dim])

  def forward(inputs):
    x, offset = inputs[:, :input_dim], inputs[:, input_dim:]
    x = jnp.clip((features(x) - mean_in) / std_in, -INPUT_CLIP, INPUT_CLIP)
    r = hk.nets.MLP(list(config.hidden) + [action_dim], name="residual")(x)
    log_std = hk.get_parameter("log_std", [action_dim], init=hk.initializers.Constant(init_log_std))
    return offset + r, jnp.broadcast_to(log_std, r.shape)

  def log_prob(output, actions):
    mean, log_std = output
    z = (actions - mean) / jnp.exp(log_std)
    return jnp.sum(-0.5 * z ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)

  def sample(output, key):
    mean, log_std = output
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)

  return ResidualNetworks(policy=hk.without_apply_rng(hk.transform(forward)), log_prob=log_prob, sample=sample,
                          mean=lambda output: output[0], input_dim=input_dim, action_dim=action_dim)


def init_params(networks: ResidualNetworks, key) -> Dict:
  """Fresh residual parameters whose output layer is zero: the composed policy acts as its base."""
  params = networks.policy.init(key, jnp.zeros((1, networks.input_dim + networks.action_dim), jnp.float32))
  last = sorted(k for k in params if k.startswith("residual/"))[-1]
  params = dict(params)
  params[last] = jax.tree_util.tree_map(jnp.zeros_like, params[last])
  return params


def make_base_actions(base: acting.GoalPolicyFn, action_dim: int) -> Callable:
  """A jitted `(base_params, inputs [B, input_dim]) -> [B, A]`: the base's mode action for each row
  (the first of its predicted chunk), as `ResidualPolicyFn` computes it one row at a time."""
  networks = base.networks

  def first(params, inputs):
    return networks.mean(networks.policy.apply(params, inputs))[:, :action_dim]
  return jax.jit(first)


def augment(base_actions: Callable, base_params, inputs: np.ndarray) -> np.ndarray:
  """[s, g] rows -> [s, g, base action] rows: the residual's inputs (`ResidualNetworks.policy`)."""
  inputs = np.asarray(inputs, np.float32)
  return np.concatenate([inputs, np.asarray(base_actions(base_params, inputs))], -1)


class ResidualPolicyFn(acting.GoalPolicyFn):
  """base mode + residual, as a `GoalPolicyFn` with params {"base": ..., "residual": ...}.

  Deterministic: base mode + r_phi; sampling: plus sigma * eps (only the residual explores: the
  base always acts with its mode). A chunked base is re-predicted at every step and only the first
  action of its chunk is used (execute_steps 1), so the residual corrects every executed action.
  """

  def __init__(self, base: acting.GoalPolicyFn, residual: ResidualNetworks):  # pylint: disable=super-init-not-called
    self.base, self.residual = base, residual
    self.networks = base.networks
    self.config = dataclasses.replace(base.config, execute_steps=1) if base.config.action_chunk > 1 else base.config
    self.deterministic, self.ensemble = base.deterministic, None
    networks, use_goal, a_dim = base.networks, base.config.use_goal, residual.action_dim

    def act(params, observation, goal, key, deterministic):
      inputs = policy_inputs(observation, goal, use_goal, jnp.concatenate)[None]
      chunk = networks.mean(networks.policy.apply(params["base"], inputs))[0]
      output = residual.policy.apply(params["residual"], jnp.concatenate([inputs, chunk[None, :a_dim]], -1))
      first = jnp.where(deterministic, residual.mean(output)[0], residual.sample(output, key)[0])
      return chunk.at[:a_dim].set(first)

    self._compile(act)

  def with_execute_steps(self, execute_steps: Optional[int], ensemble: Optional[float] = None):
    if ensemble is not None or execute_steps not in (None, 1):
      raise ValueError("a policy with a residual acts on every step's own prediction: it executes 1 action per "
                       "chunk and cannot ensemble chunks")
    return self


def save(level_dir: str, params, config: ResidualConfig) -> str:
  """Writes residual.pkl into a level's directory (inside a model being written atomically)."""
  from relay_agents import models  # pylint: disable=import-outside-toplevel
  path = os.path.join(level_dir, FILE)
  models.save_pickle(path, {"format": FORMAT, "params": jax.device_get(params), "hidden": list(config.hidden),
                            "std": config.std})
  return path


def load(level_dir: str) -> Optional[Tuple[Dict, ResidualConfig]]:
  """(params, config) of a level's residual, or None when it has none; a one-line DataError for a
  file that is not one."""
  from relay_data.errors import DataError  # pylint: disable=import-outside-toplevel
  path = os.path.join(level_dir, FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      saved = pickle.load(f)
    return saved["params"], ResidualConfig(tuple(saved["hidden"]), float(saved["std"]))
  except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as e:
    raise DataError(f"cannot be read (residual policy; truncated or corrupt?): {e}", path=path) from e


def compose(base: acting.GoalPolicyFn, base_saved: Dict, base_params, residual: Tuple[Dict, ResidualConfig]):
  """(ResidualPolicyFn, {"base", "residual"} params) of a base level and its loaded residual."""
  params, config = residual
  return ResidualPolicyFn(base, make_networks(base, base_saved, config)), {"base": base_params, "residual": params}


def hidden_sizes(text: str) -> Tuple[int, ...]:
  """'256,256' -> (256, 256) (a CLI flag's value); ValueError naming the text otherwise."""
  try:
    sizes = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ValueError(f"residual hidden sizes must be comma-separated positive integers, got {text!r}") from None
  if not sizes or any(s <= 0 for s in sizes):
    raise ValueError(f"residual hidden sizes must be comma-separated positive integers, got {text!r}")
  return sizes


__all__: Sequence[str] = ["ResidualConfig", "ResidualNetworks", "ResidualPolicyFn", "make_networks", "init_params",
                          "make_base_actions", "augment", "save", "load", "compose", "hidden_sizes"]
