"""Configuration of a goal-conditioned BC agent."""
import dataclasses
from typing import Optional, Tuple

import numpy as np

from relay_data import relabel

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
    data only; beyond the paper's observation. None ("auto", the default) is resolved by
    `relay_agents.train` from the data: on for kitchen data, off otherwise.
  action_chunk: k > 1 predicts the next k actions at once (action chunking); the actor executes
    `execute_steps` of them, then predicts again (and at once when its goal changes). Needs a
    relabeled dataset made with the same `action_chunk` (its `action_chunk` field; `relay
    relabel`'s default matches this one). None: `relabel.DEFAULT_ACTION_CHUNK` for action
    targets, 1 for subgoals. Why: predicting a short open-loop plan keeps the policy from
    stalling on states where one step's action is ambiguous.
  execute_steps: m, actions executed per prediction (1 <= m <= k); None: 1, the chunk is
    re-predicted at every step and only its first action acted on (closed loop; the rest of the
    chunk is a training target). Why: at the paper's cadence (a subgoal every W_l = 30 steps) RIL
    does 1.85 elements executing 1 against 1.41 executing 5 (512x3, three seeds), and BC and GCBC
    gain or hold too (docs/results.md, session 31). Until session 33 the default was ceil(k / 2).
  gripper_head: kitchen action policies only. The fingers get their own binary head (close or
    open, from the hidden layer) instead of two dims of the continuous head, which then models
    the 7 arm joints alone. The class is the finger target the label commands (measured finger +
    ACTION_SCALE_DT * action: 0 or `kitchen.GRIPPER_OPEN`), learnt with class-balanced
    cross-entropy; the actor turns the predicted class into the finger action that commands it
    from the observed fingers, for every executed step of a chunk (the class of the chunk's first
    step: a close starts at the next prediction at the latest). Why: rollouts close the hand
    early, beside the handle; with the fingers two dims among 90 of the arm's mixture components,
    the close is decided by whichever component fits the arm best. Measured (docs/results.md,
    session 13): on the training demos' own states it closes 1-2 steps early a little less often
    (14-22 % vs 24-30 %), and rollouts do no better.

  goal_delta: goal-conditioned kitchen policies only. Appends the goal minus the observation's
    goal-space part (g - s, the 30 robot and object positions) to the network's input, and with
    `end_effector` the end-effector displacement to the goal's (ee(g) - ee(s)). Why: [s, g] are
    normalized over the whole dataset, so the few centimetres between a state and a subgoal 30
    steps ahead are a small difference of two large inputs; given explicitly, with a
    normalization of its own, the displacement is on the scale of the action it calls for.
  subgoal_residual: the RIL high level (target "subgoal", kitchen data) predicts the subgoal as a
    displacement from the observation's goal-space state (its mean is s + the predicted residual;
    normalized by the residuals' own statistics). Why: an absolute 30-d subgoal normalized over
    the whole dataset's range is predicted ~6 cm off at a handle (docs/results.md, session 16),
    and the dims the next 30 steps leave alone (most objects) must be reproduced exactly; a
    residual is zero there and small elsewhere.
  goal_noise: goal-conditioned action policies on kitchen data (the RIL low level; GCBC as an
    ablation). The std (rad) of Gaussian noise added to the goal's 7 arm joints in every
    imitation training batch (`data.with_goal_noise`), fresh each batch; evaluation and the DAPG demo
    term see exact goals. Why: the RIL low level is trained on exact future states as goals, but
    acts on the high level's predictions, which are off by 0.11-0.19 rad per arm joint (about 5 cm
    at the hand, median; teacher-forced, docs/results.md session 20); noisy goals teach it to act
    toward a subgoal it can only approximately reach, as the relay hierarchy needs. Measured: no
    gain over two seeds (STD 0.1: 1.20 elements against 1.29; docs/results.md, session 20).
  goal_elements: goal-conditioned kitchen policies (the RIL high level; GCBC as an ablation). The
    goal enters the network only as its element completion mask (which of the 7 elements the goal
    has done, by the environment's own test), beside the observation's own mask; the goal's 30
    raw dims (and its end effector) are left out. None ("auto", the default) is resolved by
    `relay_agents.train`: on for the RIL high level on kitchen data, off otherwise; the RIL low
    level never takes it (it must reach its full subgoal). Why: plain BC, which sees no goal at
    all, chains more elements than the goal-conditioned policies, so the 30-d goal state looked
    more like a distraction than guidance: a compound task asks which elements end up done, not
    where the arm or the untouched objects are. Measured (docs/results.md, "The goal as its
    elements", session 25): the RIL high level with it lifts relay IL from 1.01 ± 0.10 to 1.42 ±
    0.12 elements (three seeds, the same low level), while flat GCBC with it stops following its
    goal. Beyond the paper
    (whose goal is the state).
  lr_decay_steps: None (the default) keeps Adam's learning rate constant; N decays it along a
    cosine from `learning_rate` to 0 over N steps (`relay train-il` and `train.train_agent` set
    N to the training's steps unless told `--lr-decay none`, `TrainConfig.lr_decay`). Why: at a constant rate the weights end wherever the last batches left them, and
    how well one seed chains a compound goal moves with them: continuing the seed-1 RIL low level
    on its own demos at a tenth of the rate for 6,800 steps took it from 13 % to 46 % on the
    headline goal (docs/results.md, session 30). Beyond the paper.
  velocities: False leaves the observation's velocity dims out of the network's input (kitchen
    data: the observation's goal-space dims, robot and object positions, are kept; the goal is
    unchanged). Why: consecutive demo actions are smooth, so the observed joint velocities
    (which the previous action set) predict the next action almost alone: the RIL low level's
    arm-action R^2 on demo states falls from 0.91 to 0.57 with them zeroed. A policy that leans
    on them can copy its own motion, and stall when it has stopped ("copycat" agents, Wen et al.
    2020). The paper's 30-d observation has none. Measured (docs/results.md, session 41): the RIL
    low level without them does 1.84 elements against 2.00 with them (three seeds), so the
    default keeps them; the option is the paper's-observation ablation without rewriting data.
  weight_decay: 0 (the default) trains with Adam; w > 0 with AdamW, decoupled weight decay w (each
    step shrinks every weight by learning rate x w, with the same schedule). Why: behaviour-cloned
    low levels of one dataset fit it equally well yet follow subgoals closed-loop very differently
    (docs/results.md, session 40), the mark of weights shaped by what the data leaves
    unconstrained; decay pulls those toward zero. Beyond the paper. Measured (docs/results.md,
    session 43; the RIL low level, three seeds, W 0.05): oracle ceiling 2.81 against 2.57 of 4,
    full successes 162 against 147 of 1,020, elements on the demo goals level (1.99 against
    2.00); so the default stays 0.

  Defaults are what measured best (docs/results.md, "Policy options in the agent" and session
  32's "A wider network"): a 1024x3 MLP (RIL at the paper's cadence, executing 1: 2.29 elements
  and 24.1 % success against 1.85 and 10.1 % at 512x3, three seeds; the default was 512x3 until
  session 33), chunks of 10 actions executing 1, the end-effector input. The paper's plain MLP is
  `GoalBCConfig(hidden_sizes=(256, 256), action_chunk=1, end_effector=False)`.
  """
  target: str = "action"
  use_goal: bool = True
  hidden_sizes: Tuple[int, ...] = (1024, 1024, 1024)
  head: str = "mixture"
  num_components: int = 5
  min_log_std: float = -5.0
  max_log_std: float = 1.0
  learning_rate: float = 1e-3
  batch_size: int = 256
  num_sgd_steps_per_step: int = 1
  table_name: str = "relabeled"
  max_replay_size: int = 1_000_000   # examples fed to Reverb (a seeded subset beyond, warned): bounds memory
  examples_per_item: Optional[int] = None  # examples per Reverb item; None: batch_size (see above)
  max_in_flight_samples_per_worker: int = 512
  end_effector: Optional[bool] = None
  action_chunk: Optional[int] = None
  execute_steps: Optional[int] = None
  gripper_head: bool = False
  goal_delta: bool = False
  subgoal_residual: bool = False
  goal_noise: float = 0.0
  goal_elements: Optional[bool] = None
  lr_decay_steps: Optional[int] = None
  velocities: bool = True
  weight_decay: float = 0.0

  # What a config pickled before an option existed behaved as (see __setstate__).
  _LEGACY = {"end_effector": False, "action_chunk": 1, "execute_steps": 1, "gripper_head": False,
             "goal_delta": False, "subgoal_residual": False, "goal_noise": 0.0, "goal_elements": False, "lr_decay_steps": None,
             "velocities": True, "weight_decay": 0.0}

  def __setstate__(self, state):
    """Unpickling a policy saved before an option existed gives it the value it was trained with."""
    self.__dict__.update({**self._LEGACY, **state})

  @property
  def target_field(self) -> str:
    """The example field the network predicts: `target`, or `action_chunk` when chunking."""
    return "action_chunk" if self.target == "action" and self.action_chunk > 1 else self.target

  def __post_init__(self):
    if self.examples_per_item is None:  # resolved here, so every reader sees an int
      object.__setattr__(self, "examples_per_item", self.batch_size)
    if self.action_chunk is None:
      object.__setattr__(self, "action_chunk", relabel.DEFAULT_ACTION_CHUNK if self.target == "action" else 1)
    if self.execute_steps is None:
      object.__setattr__(self, "execute_steps", 1)
    if self.action_chunk < 1 or not 1 <= self.execute_steps <= self.action_chunk:
      raise ValueError(f"need action_chunk >= 1 and 1 <= execute_steps <= action_chunk, got "
                       f"{self.action_chunk} and {self.execute_steps}")
    if self.action_chunk > 1 and self.target != "action":
      raise ValueError(f"action_chunk applies to action-predicting policies, not target {self.target!r}")
    if self.target not in ("action", "subgoal"):
      raise ValueError(f"target must be 'action' or 'subgoal', got {self.target!r}")
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
    if self.gripper_head and (self.target != "action" or self.head == "mse"):
      raise ValueError("gripper_head needs an action policy with a likelihood head (mixture or gaussian)")
    if not self.goal_noise >= 0:
      raise ValueError(f"goal_noise must be >= 0, got {self.goal_noise}")
    if self.goal_noise and (not self.use_goal or self.target != "action"):
      raise ValueError("goal_noise applies to goal-conditioned action policies (the RIL low level, GCBC)")
    if self.goal_delta and not self.use_goal:
      raise ValueError("goal_delta needs a goal-conditioned policy (use_goal)")
    if self.goal_elements and not self.use_goal:
      raise ValueError("goal_elements needs a goal-conditioned policy (use_goal)")
    if self.goal_elements and self.goal_delta:
      raise ValueError("goal_elements leaves the goal's raw dims out, so goal_delta (g - s) cannot be added")
    if self.num_components <= 0:
      raise ValueError(f"num_components must be positive, got {self.num_components}")
    if self.batch_size <= 0 or self.learning_rate <= 0 or self.examples_per_item <= 0:
      raise ValueError("batch_size, learning_rate and examples_per_item must be positive")
    if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
      raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
    if self.lr_decay_steps is not None and not self.lr_decay_steps > 0:
      raise ValueError(f"lr_decay_steps must be positive, got {self.lr_decay_steps}")

  def optimizer(self):
    """Adam at `learning_rate`, constant or cosine-decayed to 0 over `lr_decay_steps`; AdamW
    with `weight_decay` when it is positive."""
    import optax  # pylint: disable=import-outside-toplevel
    rate = (self.learning_rate if self.lr_decay_steps is None
            else optax.cosine_decay_schedule(self.learning_rate, self.lr_decay_steps))
    if self.weight_decay:
      return optax.adamw(rate, weight_decay=self.weight_decay)
    return optax.adam(rate)
