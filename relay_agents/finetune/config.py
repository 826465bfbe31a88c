"""Configuration of RL finetuning (NPG-, DAPG- and IRIL-RPL, and success-filtered self-imitation)."""
import dataclasses
from typing import Optional, Tuple

VARIANTS = ("npg", "dapg", "iril", "filtered")
REWARDS = ("sparse", "euclidean", "element-wise", "task")
LEVELS = ("low", "both")


# Environments per actor, stepped in lockstep with one policy call per level for all (`acting.run_episodes`).
# Why 16: a call reads the 1024x3 policy's ~12 MB of weights anew after the environments' steps
# have evicted them from the caches, whatever the batch, so more lanes pay that over more env
# steps; at 24 and 32 the lanes' own MuJoCo states evict more than the batch saves (the lanes share
# one kitchen model, `env.lanes`). Idle box, session 39 (`python -m benchmarks finetune` against
# session 38's code, alternated, and the same functions in a loop): 1 process 0.89-0.93x of raw
# env steps (16 lanes in 2 pipelined groups, `acting.PIPELINE_GROUPS`) against 0.82-0.83x (8 lanes);
# 2 processes 1.63-1.79x (one group each) against 1.52-1.53x. 8 until session 38, 1 before. A run
# never makes more lanes than an iteration's episodes (8 by default): 16 apply from 16 per iteration.
DEFAULT_LANES = 16


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Hyper-parameters of one finetuning run (defaults follow mjrl's NPG/DAPG where they exist).

  variant: "npg" (policy gradient only), "dapg" (plus lambda-weighted log-likelihood of relabeled
    demo examples, lambda_k = lambda0 * lambda1**k at iteration k) or "iril" (dapg, plus every
    batch of on-policy trajectories relabeled with `relay_data.relabel` and inserted into the
    demo table); or "filtered" (beyond the paper, no policy gradient: behaviour cloning on the
    relabeled demos plus the decisions of the run's successful episodes, `finetune.filtered`).
  own_fraction, bc_steps, bc_learning_rate, own_max_examples: "filtered" only. Each iteration takes
    `bc_steps` Adam steps on batches of `demo_batch_size` demo examples and as many kept decisions,
    weighted 1 - own_fraction and own_fraction; the newest `own_max_examples` kept decisions are
    sampled from.
  finetune: "low" (the paper: finetuning the low level alone is enough) or "both".
  reward: low-level reward for reaching the commanded subgoal (see `rewards`); `eps` is the sparse
    radius in goal space (None: calibrated from the demo windows, `eps_quantile`). "task" rewards
    the low level by the task's progress instead, over the whole episode, as a flat policy is
    (beyond the paper: for an actor that re-plans so often that no subgoal is ever reached).
  replan: the actors' high level picks a new subgoal every `replan` steps (None: every W_l, the
    paper's); the high level's decisions and the low level's segments follow it. Beyond the paper,
    as `relay eval --replan`: a model that acts best re-planning every step is finetuned acting so.
  execute_steps: a level predicting chunks of k actions executes this many of each (1..k) before
    predicting again (None: as trained), as `relay eval --execute-steps`; the learner scores the
    decisions on that schedule (`semi_mdp`) and the finetuned model keeps it as its own.
  kl_delta: bound on the mean KL between consecutive policies; the step is scaled so that the
    quadratic KL estimate 0.5 * x^T F x equals it (mjrl's normalized step is 2 * kl_delta).
  fisher_samples: actions drawn per state from the old policy to measure a mixture step's KL
    (Monte Carlo; the step itself uses an analytic KL bound, see `npg`).
  residual: hidden sizes of a residual policy over the acting level's frozen mode (`gcbc.residual`;
    None: the level itself is finetuned, the paper's). With it NPG, the KL bound and the DAPG term
    apply to the residual alone, the base re-predicts at every step (execute_steps 1), and
    `explore_std`/`explore_temperature` (which narrow the base's own distribution) do not apply:
    the residual explores with its own Gaussian, whose std starts at `residual_std` times the
    demos' action spread per dimension and is learned. Beyond the paper (docs/results.md).
  explore_std, explore_temperature: the finetuned policy's distribution is the trained one with
    every std times `explore_std` and its mixture logits divided by `explore_temperature`
    (`gcbc.networks.with_exploration`): actors sample from it and NPG, KL and DAPG score it. 1, 1
    is the behaviour-cloned spread; smaller explores near the likeliest mode, which is what
    deterministic evaluation runs. The finetuned weights are evaluated without it.
  """
  variant: str = "dapg"
  finetune: str = "low"
  reward: str = "sparse"
  eps: Optional[float] = None
  eps_quantile: float = 0.25
  replan: Optional[int] = None
  execute_steps: Optional[int] = None
  episodes_per_iteration: int = 8
  max_episode_steps: int = 280
  gamma: float = 0.995
  gae_lambda: float = 0.97
  kl_delta: float = 0.01
  cg_iters: int = 10
  cg_damping: float = 1e-4
  fisher_samples: int = 4
  explore_std: float = 1.0
  explore_temperature: float = 1.0
  residual: Optional[Tuple[int, ...]] = None
  residual_std: float = 0.25
  lambda0: float = 0.1
  lambda1: float = 0.95
  demo_batch_size: int = 256
  demo_max_examples: int = 200_000
  iril_goals_per_step: int = 4
  own_fraction: float = 0.5
  bc_steps: int = 200
  bc_learning_rate: float = 1e-4
  own_max_examples: int = 100_000
  value_hidden: Tuple[int, ...] = (64, 64)
  value_learning_rate: float = 1e-3
  value_epochs: int = 2
  value_batch_size: int = 64
  trajectory_table: str = "trajectories"
  demo_table: str = "relabeled"
  variables_table: str = "variables"
  spec_table: str = "actor_spec"

  def __post_init__(self):
    for name, choices in (("variant", VARIANTS), ("finetune", LEVELS), ("reward", REWARDS)):
      if getattr(self, name) not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
    for name in ("episodes_per_iteration", "max_episode_steps", "cg_iters", "fisher_samples",
                 "demo_batch_size", "value_epochs", "value_batch_size", "iril_goals_per_step", "kl_delta",
                 "explore_std", "explore_temperature", "bc_steps", "bc_learning_rate",
                 "own_max_examples", "residual_std"):
      if not getattr(self, name) > 0:  # `not > 0`, not `<= 0`: a NaN kl_delta is refused too
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
      raise ValueError("gamma must be in (0, 1] and gae_lambda in [0, 1]")
    if not 0 < self.own_fraction <= 1:
      raise ValueError(f"own_fraction must be in (0, 1], got {self.own_fraction}")
    if self.variant == "filtered" and self.finetune != "low":
      raise ValueError("variant filtered finetunes the low level alone (finetune low): the demo table holds "
                       "that level's examples only")
    if self.replan is not None and not self.replan > 0:
      raise ValueError(f"replan must be positive, got {self.replan}")
    if self.execute_steps is not None and not self.execute_steps > 0:
      raise ValueError(f"execute_steps must be positive, got {self.execute_steps}")
    if self.residual is not None:
      if not self.residual or any(not int(h) > 0 for h in self.residual):
        raise ValueError(f"residual hidden sizes must be positive, got {list(self.residual)}")
      if self.variant == "filtered":
        raise ValueError("variant filtered trains the level's own networks by behaviour cloning; a residual is "
                         "trained by the policy-gradient variants (npg, dapg, iril)")
      if self.execute_steps not in (None, 1):
        raise ValueError(f"a residual corrects every executed action, so its base re-predicts at every step: "
                         f"execute_steps must be 1, got {self.execute_steps}")
    if self.eps is not None and not self.eps > 0:
      raise ValueError(f"eps must be positive, got {self.eps}")
    if not 0 < self.eps_quantile < 1:
      raise ValueError(f"eps_quantile must be in (0, 1), got {self.eps_quantile}")

  @property
  def residual_config(self):
    """The `gcbc.residual.ResidualConfig` of a residual run, else None."""
    if self.residual is None:
      return None
    from relay_agents.gcbc import residual  # pylint: disable=import-outside-toplevel
    return residual.ResidualConfig(tuple(self.residual), self.residual_std)

  @property
  def uses_demos(self) -> bool:
    return self.variant in ("dapg", "iril", "filtered")

  def demo_weight(self, iteration: int) -> float:
    """lambda_k = lambda0 * lambda1**k (mjrl's DAPG schedule); 0 for plain NPG."""
    return self.lambda0 * self.lambda1 ** iteration if self.variant in ("dapg", "iril") else 0.0
