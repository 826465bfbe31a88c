"""Configuration of a goal-conditioned BC agent."""
import dataclasses
from typing import Optional, Tuple

HEADS = ("gaussian", "mixture", "mse")


@dataclasses.dataclass(frozen=True)
class GoalBCConfig:
  """Hyper-parameters; defaults are small MLPs that train in minutes on a CPU.

  target: which example field the policy predicts ("action", or "subgoal" for the high level).
  use_goal: False gives plain BC (the goal is not an input).
  head: "mixture" (mixture of `num_components` diagonal Gaussians trained by log-likelihood;
    acts with the likeliest component's mean, so on multimodal play it picks a mode instead of
    averaging modes), "gaussian" (one diagonal Gaussian) or "mse".
  examples_per_item: examples per Reverb item (`relay_agents.replay`); default (None) is
    `batch_size`, so one sampled item is one whole batch. Why: the feed's CPU per SGD step is what
    slows a Reverb-fed learner on a small box, and whole-batch items pay one Reverb sample and one
    tf.data element per batch instead of one per 32 examples, the old default (measured with
    `python -m benchmarks learner`, figures in docs/benchmarks.md). Any batch size keeps the fast
    reshape path, which needs the fetch to be a whole number of items. Items are cut from
    block-shuffled examples, so one still mixes many episodes.
  end_effector: append the end-effector position (forward kinematics of the robot joints,
    `relay_data.kinematics`) of the observation and of the goal to the network's input. Kitchen
    data only; beyond the paper's observation (an option, see docs/results.md for why).
  action_chunk: k > 1 predicts the next k actions at once (action chunking); the actor executes
    `execute_steps` of them, then predicts again (and at once when its goal changes). Needs a
    relabeled dataset made with `relay relabel --action-chunk k` (its `action_chunk` field).
    Why: predicting a short open-loop plan keeps the policy from stalling on states where one
    step's action is ambiguous (measured: docs/results.md, "Why the low level fails").
  execute_steps: m, actions executed per prediction (1 <= m <= k); None: ceil(k / 2).
  """
  target: str = "action"
  use_goal: bool = True
  hidden_sizes: Tuple[int, ...] = (256, 256)
  head: str = "mixture"
  num_components: int = 5
  min_log_std: float = -5.0
  max_log_std: float = 1.0
  learning_rate: float = 1e-3
  batch_size: int = 256
  num_sgd_steps_per_step: int = 1
  table_name: str = "relabeled"
  max_replay_size: int = 1_000_000   # examples kept in Reverb (FIFO beyond): bounds memory
  examples_per_item: Optional[int] = None  # examples per Reverb item; None: batch_size (see above)
  max_in_flight_samples_per_worker: int = 512
  end_effector: bool = False
  action_chunk: int = 1
  execute_steps: Optional[int] = None

  @property
  def target_field(self) -> str:
    """The example field the network predicts: `target`, or `action_chunk` when chunking."""
    return "action_chunk" if self.target == "action" and self.action_chunk > 1 else self.target

  def __post_init__(self):
    if self.examples_per_item is None:  # resolved here, so every reader sees an int
      object.__setattr__(self, "examples_per_item", self.batch_size)
    if self.execute_steps is None:
      object.__setattr__(self, "execute_steps", -(-self.action_chunk // 2))
    if self.action_chunk < 1 or not 1 <= self.execute_steps <= self.action_chunk:
      raise ValueError(f"need action_chunk >= 1 and 1 <= execute_steps <= action_chunk, got "
                       f"{self.action_chunk} and {self.execute_steps}")
    if self.action_chunk > 1 and self.target != "action":
      raise ValueError(f"action_chunk applies to action-predicting policies, not target {self.target!r}")
    if self.target not in ("action", "subgoal"):
      raise ValueError(f"target must be 'action' or 'subgoal', got {self.target!r}")
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
    if self.num_components <= 0:
      raise ValueError(f"num_components must be positive, got {self.num_components}")
    if self.batch_size <= 0 or self.learning_rate <= 0 or self.examples_per_item <= 0:
      raise ValueError("batch_size, learning_rate and examples_per_item must be positive")
