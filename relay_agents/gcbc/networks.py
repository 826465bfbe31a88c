"""Goal-conditioned policy networks: an MLP over normalized [s, g] with a Gaussian, mixture or MSE head.

Play is multimodal (from one state the demos go on to any of several subtasks); a unimodal
Gaussian's mean then averages the modes, which the mixture head avoids.

Normalization statistics come from the training data (`Normalization.from_examples`) and are
baked into the network as constants, so a saved parameter set plus its stats fully define the
policy. Outputs are in raw units (the network predicts normalized targets internally).

The network's input features are the policy input [s, g] itself, or, with
`config.end_effector`, [s, g] with the end-effector positions of s and of g appended
(`input_features`): computed inside the network from the joint columns, so callers still pass
[s, g] and the saved policy needs nothing else to act.

With `config.gripper_head` (kitchen actions), the fingers are a binary close/open head of their
own (`with_gripper_head`); the continuous head then models the arm dims alone.
"""
import dataclasses
from typing import Callable, Dict, Iterable, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from relay_agents import acme_compat  # noqa: F401
from acme.jax import networks as networks_lib  # pylint: disable=g-bad-import-order
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import goal_space, kinematics, kitchen


INPUT_CLIP = 10.0  # normalized inputs beyond +-10 std carry no extra signal, only instability


@dataclasses.dataclass
class Normalization:
  """Per-dimension mean/std of the policy input ([s, g]) and output."""
  input_mean: np.ndarray
  input_std: np.ndarray
  output_mean: np.ndarray
  output_std: np.ndarray

  @classmethod
  def from_arrays(cls, inputs: np.ndarray, outputs: np.ndarray, eps: float = 1e-2) -> "Normalization":
    """`eps` floors the std: nearly constant dims (e.g. object velocities at rest) would
    otherwise turn a rare large value into a huge normalized input."""
    inputs, outputs = np.asarray(inputs, np.float64), np.asarray(outputs, np.float64)
    if len(inputs) == 0:
      raise ValueError("cannot compute normalization from zero examples")
    return cls(inputs.mean(0).astype(np.float32), np.maximum(inputs.std(0), eps).astype(np.float32),
               outputs.mean(0).astype(np.float32), np.maximum(outputs.std(0), eps).astype(np.float32))

  def to_dict(self) -> Dict[str, np.ndarray]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class GoalBCNetworks:
  """The policy (for Acme's BC learner) and functions on its output."""
  policy: networks_lib.FeedForwardNetwork      # apply(params, inputs) -> head output
  log_prob: Callable                           # (output, target) -> [B]
  mean: Callable                               # output -> [B, d_out] (mixture: the likeliest mode)
  sample: Callable                             # (output, key) -> [B, d_out]
  input_dim: int
  output_dim: int
  normalization: Normalization
  # (output, target with NaN in the dims not observed) -> [B]: the log-density of the observed
  # dims alone (the marginal; both heads are diagonal, so it drops the others' factors). Finetuning
  # a chunked policy scores the m executed actions of a predicted chunk of k with it.
  marginal_log_prob: Optional[Callable] = None
  # (output, target) -> [B]: what behaviour cloning maximises, when it is not `log_prob` (the
  # gripper head weights its two classes to balance them).
  bc_log_prob: Optional[Callable] = None
  # m -> these networks computing the first m actions of each predicted chunk only (`first_actions`;
  # None: not available, e.g. a policy that predicts single actions).
  first_actions: Optional[Callable[[int], "GoalBCNetworks"]] = None
  # params -> the part of them a `first_actions` view reads (its head's columns alone; the view's
  # policy takes either). Cut once per parameter set, they spare each call reading the whole head.
  compact_params: Optional[Callable] = None


def input_features(config: GoalBCConfig, observation_dim: Optional[int]) -> Callable:
  """[B, input_dim] policy inputs -> the network's input features (numpy or jax arrays).

  With `config.end_effector`, appends the end-effector position of the observation (its first 9
  columns are the robot joints) and, for goal-conditioned policies, of the goal (the goal space's
  first 9 columns are too): the kitchen's layouts (`relay_data.kitchen`). With `config.goal_delta`,
  then appends g - s (the observation's goal-space dims, `goal_space.kitchen_goal_indices`) and,
  with the end effector, ee(g) - ee(s). With `config.goal_elements`, the goal's raw dims are
  replaced by the completion masks (0/1 per kitchen element) of g and of s, and only the
  observation's end effector is appended."""
  if not config.end_effector and not config.goal_delta and not config.goal_elements and config.velocities:
    return lambda inputs: inputs
  if observation_dim is None:
    raise ValueError("end_effector, goal_delta, goal_elements and velocities-off features need the observation "
                     "width (observation_dim)")
  starts = [0] + ([observation_dim] if config.use_goal and not config.goal_elements else [])
  goal_dims = (list(goal_space.kitchen_goal_indices(observation_dim))
               if config.goal_delta or config.goal_elements or not config.velocities else None)

  def observed(inputs):
    """The observation's part of the input: all of it, or its positions alone (velocities off)."""
    return inputs[..., :observation_dim] if config.velocities else inputs[..., goal_dims]

  def features(inputs):
    xp = np if isinstance(inputs, np.ndarray) else jnp
    if config.goal_elements:
      masks = [kitchen.completion_mask(x, xp=xp).astype(inputs.dtype)
               for x in (inputs[..., observation_dim:], inputs[..., goal_dims])]
      parts = [observed(inputs)] + masks
      if config.end_effector:
        parts.append(kinematics.kitchen_end_effector(inputs[..., :kinematics.ROBOT_JOINTS], xp))
      return xp.concatenate(parts, axis=-1)
    parts = [inputs if config.velocities else xp.concatenate([observed(inputs), inputs[..., observation_dim:]], axis=-1)]
    if config.end_effector:
      ee = [kinematics.kitchen_end_effector(inputs[..., s:s + kinematics.ROBOT_JOINTS], xp) for s in starts]
      parts += ee
    if config.goal_delta:
      parts.append(inputs[..., observation_dim:] - inputs[..., goal_dims])
      if config.end_effector:
        parts.append(ee[1] - ee[0])
    return xp.concatenate(parts, axis=-1)
  return features


def subgoal_residual_base(config: GoalBCConfig, observation_dim: Optional[int]) -> Optional[Callable]:
  """With `config.subgoal_residual`: [B, input_dim] policy inputs -> [B, goal dim] the observation's
  goal-space state, which the predicted subgoal is a displacement from (None without it)."""
  if not config.subgoal_residual:
    return None
  if config.target != "subgoal":
    raise ValueError(f"subgoal_residual needs a subgoal-predicting policy, not target {config.target!r}")
  if observation_dim is None:
    raise ValueError("subgoal_residual needs the observation width (observation_dim)")
  dims = np.asarray(goal_space.kitchen_goal_indices(observation_dim))
  return lambda inputs: inputs[..., dims]


def make_networks(input_dim: int, output_dim: int, config: GoalBCConfig,
                  normalization: Normalization, observation_dim: Optional[int] = None) -> GoalBCNetworks:
  """`observation_dim` (the width of s in [s, g]) is needed by `config.end_effector`,
  `config.goal_delta` and `config.subgoal_residual` only."""
  norm = jax.tree_util.tree_map(jnp.asarray, normalization.to_dict())
  features = input_features(config, observation_dim)

  out_mean, out_log_std = norm["output_mean"], jnp.log(norm["output_std"])
  k = config.num_components
  residual_of = subgoal_residual_base(config, observation_dim)

  def continuous_head(h, base, d):
    # d: the output dims computed, the first d of `output_dim` (all but at acting time: `first_actions`).
    std, shift, log_shift = norm["output_std"][:d], out_mean[:d], out_log_std[:d]
    if config.head == "mixture":  # (logits [B,k], means [B,k,d], log_stds [B,k,d])
      logits = hk.Linear(k, name="logits")(h)
      mean = hk.Linear(k * d, name="mean")(h).reshape(-1, k, d)
      log_std = hk.Linear(k * d, name="log_std")(h).reshape(-1, k, d)
      log_std = jnp.clip(log_std, config.min_log_std, config.max_log_std)
      mean = mean * std + shift
      return logits, mean if base is None else mean + base[:, None, :], log_std + log_shift
    mean = hk.Linear(d, name="mean")(h)
    log_std = hk.Linear(d, name="log_std")(h)
    log_std = jnp.clip(log_std, config.min_log_std, config.max_log_std)
    # Back to raw units: predictions are made in normalized target space.
    mean = mean * std + shift
    return mean if base is None else mean + base, log_std + log_shift

  def forward(inputs, d=output_dim):
    x = jnp.clip((features(inputs) - norm["input_mean"]) / norm["input_std"], -INPUT_CLIP, INPUT_CLIP)
    h = hk.nets.MLP(list(config.hidden_sizes), activate_final=True, name="torso")(x)
    base = residual_of(inputs) if residual_of is not None else None
    if config.gripper_head:  # + (close logit [B], the observed fingers [B, 2] the action is relative to)
      return continuous_head(h, base, d) + (hk.Linear(1, name="gripper")(h)[:, 0], inputs[:, kitchen.FINGERS])
    return continuous_head(h, base, d)

  transformed = hk.without_apply_rng(hk.transform(forward))
  dummy = jnp.zeros((1, input_dim), jnp.float32)
  policy = networks_lib.FeedForwardNetwork(
      init=lambda key: transformed.init(key, dummy),
      apply=lambda params, inputs, is_training=False, key=None: transformed.apply(params, inputs))

  def head_params(params, d):
    """The parameters of the head's first d output dims per component (a slice of each
    component's columns of the mean and log-std layers; the torso and the logits as they are).
    Parameters already cut to d are returned as they are."""
    rows = k if config.head == "mixture" else 1

    def cut(x):
      if x.shape[-1] == rows * d:
        return x
      return x.reshape(x.shape[:-1] + (rows, output_dim))[..., :d].reshape(x.shape[:-1] + (rows * d,))
    return {name: (jax.tree_util.tree_map(cut, value) if name in ("mean", "log_std") else value)
            for name, value in params.items()}

  def gaussian_log_prob(mean, log_std, target, seen=None):
    z = (target - mean) / jnp.exp(log_std)
    per_dim = -0.5 * z ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
    return jnp.sum(per_dim if seen is None else jnp.where(seen, per_dim, 0.0), axis=-1)

  def noise(key, mean):
    """Standard normal noise for a sample of `mean` [B, d]: drawn for all `output_dim` dims and
    cut to d, so the first actions of a chunk (`first_actions`) get the noise the whole chunk's
    sample gives them."""
    return jax.random.normal(key, (mean.shape[0], output_dim))[:, :mean.shape[-1]]

  def observed(target):
    """NaN marks a dim not observed: (target with those dims zeroed, their mask); zeroed, not
    left NaN, so that no NaN reaches a gradient through the masked branch."""
    seen = ~jnp.isnan(target)
    return jnp.where(seen, target, 0.0), seen

  if config.head == "mixture":
    def log_prob(output, target):
      logits, mean, log_std = output
      per_component = gaussian_log_prob(mean, log_std, target[:, None, :])
      return jax.nn.logsumexp(jax.nn.log_softmax(logits) + per_component, axis=-1)

    def marginal_log_prob(output, target):
      logits, mean, log_std = output
      target, seen = observed(target)
      per_component = gaussian_log_prob(mean, log_std, target[:, None, :], seen[:, None, :])
      return jax.nn.logsumexp(jax.nn.log_softmax(logits) + per_component, axis=-1)

    def mode(output):
      """The mean of the most probable component: a deterministic action that is one of the
      modes, never the average of two (e.g. halfway between two subtasks)."""
      logits, mean, _ = output
      return jnp.take_along_axis(mean, jnp.argmax(logits, -1)[:, None, None], axis=1)[:, 0]

    def sample(output, key):
      logits, mean, log_std = output
      k1, k2 = jax.random.split(key)
      idx = jax.random.categorical(k1, logits)[:, None, None]
      pick = lambda x: jnp.take_along_axis(x, idx, axis=1)[:, 0]
      return pick(mean) + jnp.exp(pick(log_std)) * noise(k2, pick(mean))
  else:
    def log_prob(output, target):
      return gaussian_log_prob(*output, target)

    def marginal_log_prob(output, target):
      return gaussian_log_prob(*output, *observed(target))

    mode = lambda output: output[0]

    def sample(output, key):
      mean, log_std = output
      return mean + jnp.exp(log_std) * noise(key, mean)

  def first_actions(m: int) -> GoalBCNetworks:
    """These networks computing only the first m actions of each predicted chunk of k: what an
    actor executing m per prediction acts with. The policy takes the full parameters or their
    `compact_params`; its output, mode and samples are those of the full head's first m actions
    (the same noise: `noise` draws it for the whole chunk). Why: the head's mean and log-std layers
    are 30 % of the shipped low level's multiply-adds and 3.7 of its 12.5 MB of weights (1024x3,
    5 components, chunks of 10 of 9-d actions), of which an actor re-predicting every step uses a
    tenth."""
    if not 1 <= m <= config.action_chunk:
      raise ValueError(f"m must be in 1..{config.action_chunk}, got {m}")
    d = output_dim // config.action_chunk * m
    sliced = networks_lib.FeedForwardNetwork(
        init=policy.init,
        apply=lambda params, inputs, is_training=False, key=None: transformed.apply(head_params(params, d), inputs, d))
    view = dataclasses.replace(networks, policy=sliced, output_dim=d, first_actions=None, marginal_log_prob=None,
                               compact_params=lambda params: head_params(params, d))
    if config.gripper_head:
      return with_gripper_head(view, dataclasses.replace(config, action_chunk=m, execute_steps=m))
    return view

  networks = GoalBCNetworks(policy=policy, log_prob=log_prob, mean=mode, sample=sample,
                            input_dim=input_dim, output_dim=output_dim, normalization=normalization,
                            marginal_log_prob=marginal_log_prob)
  if config.action_chunk > 1:
    networks.first_actions = first_actions
  return with_gripper_head(networks, config) if config.gripper_head else networks


def gripper_closes(finger_action, fingers):
  """Whether a kitchen finger action commands the closed hand: its target (the measured fingers +
  ACTION_SCALE_DT * action) is nearer 0 than `kitchen.GRIPPER_OPEN`. Exact for the scripted
  expert's labels, whose targets are 0 or GRIPPER_OPEN."""
  return fingers + finger_action * kitchen.ACTION_SCALE_DT < 0.5 * kitchen.GRIPPER_OPEN


def with_gripper_head(base: GoalBCNetworks, config: GoalBCConfig) -> GoalBCNetworks:
  """`base`'s functions for an output with the gripper head's (close logit, fingers) appended:
  the continuous head scores and acts the arm dims only; the fingers of every chunk step follow
  the binary head, scored on the class that the first step's label commands."""
  action_dim = base.output_dim // config.action_chunk
  if action_dim != kitchen.ACTION_DIM:
    raise ValueError(f"gripper_head needs {kitchen.ACTION_DIM}-d kitchen actions, got {action_dim}")
  finger_cols = np.concatenate([np.arange(action_dim)[kitchen.FINGERS] + j * action_dim
                                for j in range(config.action_chunk)])
  first = kitchen.FINGERS.start  # label of the chunk's first step, relative to the observed fingers

  def split(output):
    return output[:-2], output[-2], output[-1]

  def class_log_prob(logit, closes):
    return jnp.where(closes, jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit))

  def scores(output, target):
    """(arm log-density, log-probability of the commanded finger class, the class) per example."""
    rest, logit, fingers = split(output)
    closes = gripper_closes(target[:, first], fingers[:, 0])
    arm = base.marginal_log_prob(rest, target.at[:, finger_cols].set(jnp.nan))
    return arm, class_log_prob(logit, closes), closes

  def log_prob(output, target):
    arm, grip, _ = scores(output, target)
    return arm + grip

  def bc_log_prob(output, target):
    """Both classes weigh half of the batch's gripper term, however rare closing is in it."""
    arm, grip, closes = scores(output, target)
    frac = jnp.clip(jnp.mean(closes), 1e-3, 1 - 1e-3)
    return arm + jnp.where(closes, 0.5 / frac, 0.5 / (1 - frac)) * grip

  def act(rest_action, close, fingers):
    target = jnp.where(close, 0.0, kitchen.GRIPPER_OPEN)[:, None]
    finger_action = jnp.clip((target - fingers) / kitchen.ACTION_SCALE_DT, -1.0, 1.0)
    return rest_action.at[:, finger_cols].set(jnp.tile(finger_action, (1, config.action_chunk)))

  def mode(output):
    rest, logit, fingers = split(output)
    return act(base.mean(rest), logit > 0, fingers)

  def sample(output, key):
    rest, logit, fingers = split(output)
    k1, k2 = jax.random.split(key)
    return act(base.sample(rest, k1), jax.random.bernoulli(k2, jax.nn.sigmoid(logit)), fingers)

  # No marginal: finetuning scores executed chunks, which the finger class is not defined over.
  return dataclasses.replace(base, log_prob=log_prob, mean=mode, sample=sample, marginal_log_prob=None,
                             bc_log_prob=bc_log_prob)


def with_exploration(base: GoalBCNetworks, std_scale: float = 1.0, temperature: float = 1.0) -> GoalBCNetworks:
  """`base` with its output distribution narrowed for on-policy finetuning: every Gaussian std
  times `std_scale`, and a mixture's component logits divided by `temperature` (-> 0: the
  likeliest component almost surely).

  Behaviour cloning fits the demos' whole spread, and acting on it samples far worse than the
  likeliest mode (2.1.0 flat GCBC on the headline goal: 0.80 elements sampled, 2.10 deterministic;
  drawing the component alone costs 0.45, the noise of the likeliest one 0.95). A policy gradient
  then improves that sampled policy, not the deterministic one that is evaluated. mjrl's DAPG
  likewise explores with a std of its own choosing, not a fitted one. The transform acts on the
  head's output, so `sample`, `log_prob`, `marginal_log_prob` (and hence NPG's KL and the DAPG
  term) all describe the one narrowed distribution; the likeliest mode (`mean`) is unchanged,
  and the parameters are the same, so a finetuned model evaluates with the plain networks. A
  gripper head's finger class is left as it is.
  """
  if not (std_scale > 0 and temperature > 0):
    raise ValueError(f"std_scale and temperature must be positive, got {std_scale}, {temperature}")
  if std_scale == 1.0 and temperature == 1.0:
    return base
  log_scale = float(np.log(std_scale))

  def narrow(output):
    # Heads: mixture (logits, means, log_stds), Gaussian (mean, log_std), either + a gripper
    # head's (close logit, fingers), which are kept as they are.
    cut = len(output) - 2 if len(output) >= 4 else len(output)
    head, rest = output[:cut], output[cut:]
    if len(head) == 3:  # mixture: (logits, means, log_stds)
      logits, mean, log_std = head
      return (logits / temperature, mean, log_std + log_scale) + tuple(rest)
    mean, log_std = head
    return (mean, log_std + log_scale) + tuple(rest)

  apply = base.policy.apply
  policy = networks_lib.FeedForwardNetwork(
      init=base.policy.init, apply=lambda params, inputs, *a, **k: narrow(apply(params, inputs, *a, **k)))
  first = None if base.first_actions is None else (
      lambda m: with_exploration(base.first_actions(m), std_scale, temperature))
  return dataclasses.replace(base, policy=policy, first_actions=first)


def policy_inputs(observation, goal, use_goal: bool, concat=np.concatenate):
  """The policy input: [s, g], or s alone for plain BC (`concat`: np/jnp/tf concatenation)."""
  return concat([observation, goal], -1) if use_goal else observation


def stats_from_examples(examples: Iterable[Dict[str, np.ndarray]], config: GoalBCConfig,
                        max_examples: int = 200_000) -> Normalization:
  """Normalization of the network's input features and target from (up to `max_examples`)
  relabeled examples."""
  inputs, outputs, n = [], [], 0
  for ex in examples:
    features = input_features(config, ex["observation"].shape[-1])
    inputs.append(features(policy_inputs(ex["observation"], ex.get("goal"), config.use_goal)))
    base = subgoal_residual_base(config, ex["observation"].shape[-1])
    outputs.append(ex[config.target_field] - (base(ex["observation"]) if base is not None else 0.0))
    n += len(outputs[-1])
    if n >= max_examples:
      break
  return Normalization.from_arrays(np.concatenate(inputs), np.concatenate(outputs))
