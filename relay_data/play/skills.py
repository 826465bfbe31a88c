"""Closed-loop scripted skills, one per kitchen element, at the pace of human play (generator 2.x).

A skill is a generator that yields one end-effector command (position, rotation, gripper) per
env step and reads the live simulation between yields, so it reacts to where the handle, door
or knob actually is (closed loop), not to a replayed trajectory. Waypoints are randomized per
episode (offsets, approach distances, how far past the completion threshold to go), so every
demonstration differs, like human play.

Pace (2.0.0): human kitchen play takes ~60 steps per subtask. A skill approaches its contact
point directly from wherever the previous one left the hand (no via points), manipulates until
the element is a random margin inside the environment's completion threshold (not to a scripted
angle the object may never reach), and backs off a few centimetres. Every phase ends on an
observable event (a pose reached, the hand or fingers stalled against something, the element's
state), never after a step count a Markovian policy could not see.
"""
from typing import Callable, Dict, Iterator, Optional, Tuple

import mujoco
import numpy as np

from relay_data import kitchen
from relay_data.play import controller as ctl

Command = Tuple[np.ndarray, Optional[np.ndarray], float]


class Scene:
  """Read-only view of the kitchen simulation for skills."""

  def __init__(self, model, data, arm: ctl.ArmController):
    self.model, self.data, self.arm = model, data, arm
    # True while the open hand makes its final approach onto a contact (set by the skills; the
    # generator perturbs execution there with the `near_contact` perturbations).
    self.final_approach = False

  def site(self, name: str) -> np.ndarray:
    return self.data.site_xpos[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, name)].copy()

  def joint(self, name: str) -> float:
    jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
    return float(self.data.qpos[self.model.jnt_qposadr[jid]])

  def anchor(self, name: str) -> np.ndarray:
    jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
    return self.data.xanchor[jid].copy()

  def body_pos(self, name: str) -> np.ndarray:
    return self.data.xpos[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)].copy()

  def element_error(self, element: str) -> float:
    """L2 distance of the element's (noise-free) state to its goal: the env's completion measure."""
    return float(np.linalg.norm(self.data.qpos[kitchen.ELEMENT_QPOS[element]] - kitchen.ELEMENT_GOALS[element]))


def done_margin(rng) -> float:
  """How far inside the completion threshold a skill takes its element before letting go: far
  enough that observation noise and a bump do not undo it, varied like a person's."""
  return kitchen.BONUS_THRESH * rng.uniform(0.3, 0.7)


def move_to(scene: Scene, target, rot=None, grip=ctl.GRIPPER_OPEN, tol=0.02, max_steps=40,
            min_steps=2, stall_tol=0.08) -> Iterator[Command]:
  """Move the hand to `target` until within `tol`, or until it has stalled within `stall_tol` of
  it (pressed against the handle, switch or door it is reaching for)."""
  target = np.asarray(target, float)
  recent = []
  for i in range(max_steps):
    pos = scene.arm.position
    err = np.linalg.norm(pos - target)
    # Stalled: moved less than 1 cm over the last 3 steps (more than observation-noise jitter).
    stalled = len(recent) >= 3 and np.linalg.norm(pos - recent[-3]) < 0.01 and err < stall_tol
    if i >= min_steps and (err < tol or stalled):
      return
    recent.append(pos)
    yield target, rot, grip


def rehome(scene: Scene, rng, max_steps: int = 15) -> Iterator[Command]:
  """Between subtasks: a short joint-space move toward the home posture, until within a random
  (loose) tolerance of it. It keeps the arm out of awkward redundant configurations that the
  next skill's straight-line approach could not leave; it ends on the state, never on a timer."""
  yield from settle_posture(scene, rng.uniform(0.25, 0.4), max_steps)


# How near the home posture (largest joint error, rad) the arm must be before the kettle skill
# starts, and the most steps it may take to get there. The loose re-home between subtasks ends
# after 15 steps wherever the arm is, which after a high element (a cabinet, the light switch, a
# knob) is often 0.6-1.9 rad off in the shoulder, elbow or wrist. From there the push, low and close
# to the robot's base, moved the kettle 4-10 cm and stalled: three tries, and 490-600-step episodes
# (4 of 4 traced). Started from home, each did the kettle on its first try (generator 2.4.0).
KETTLE_POSTURE_TOL = 0.08
KETTLE_POSTURE_STEPS = 40


def settle_posture(scene: Scene, tol: float, max_steps: int) -> Iterator[Command]:
  """Joint-space move to the home posture until every arm joint is within `tol` of it (at most
  `max_steps`); nothing at all when it already is, as at the start of an episode."""
  for _ in range(max_steps):
    if np.abs(scene.data.qpos[ctl.ARM] - scene.arm.home).max() < tol:
      return
    yield None, None, ctl.GRIPPER_OPEN


def actuate_gripper(scene: Scene, grip: float, rot=None, max_steps: int = 10) -> Iterator[Command]:
  """Hold the hand still while the fingers move to `grip`, until they get there or stop against
  something (a handle): an observable end, unlike a fixed number of steps."""
  target = scene.arm.position
  for i in range(max_steps):
    fingers, speed = scene.data.qpos[7:9], np.abs(scene.data.qvel[7:9]).max()
    if np.abs(fingers - grip).max() < 0.006 or (i >= 2 and speed < 0.01):
      return
    yield target, rot, grip


def retreat(scene: Scene, rng, grip=ctl.GRIPPER_OPEN) -> Iterator[Command]:
  """Let go and back off a few centimetres toward the robot, keeping the hand's orientation
  (turning it while still in contact would disturb the object)."""
  rot = scene.arm.rotation
  yield from actuate_gripper(scene, grip, rot, max_steps=6)
  back = scene.arm.position + np.array([rng.uniform(-0.02, 0.02), -rng.uniform(0.06, 0.12),
                                        rng.uniform(0.0, 0.04)])
  yield from move_to(scene, back, rot=rot, grip=grip, tol=0.04, max_steps=10)


def approach(scene: Scene, rng, contact: np.ndarray, rot=None, standoff=(0.08, 0.14),
             tol=0.04, contact_steps=40) -> Iterator[Command]:
  """Straight to a point in front of (toward the robot from) `contact`, then onto it."""
  yield from move_to(scene, contact + [0.0, -rng.uniform(*standoff), 0.0], rot=rot, tol=tol)
  scene.final_approach = True
  try:
    yield from move_to(scene, contact, rot=rot, tol=0.015, max_steps=contact_steps)
  finally:
    scene.final_approach = False


def follow_arc(scene: Scene, element: str, joint: str, contact: np.ndarray, direction: float,
               lead: float, grip: float, margin: float, max_steps: int,
               rotate_gripper: float = 0.0) -> Iterator[Command]:
  """Drive a hinge by moving `contact` (a point on the moving part, at the joint's current angle)
  around the joint axis, always `lead` radians ahead of where the part is now (closed loop), until
  the element is `margin` from its goal or the part stops following. `rotate_gripper` is the
  fraction of the part's rotation the hand turns with it."""
  pivot = scene.anchor(joint)
  start = scene.joint(joint)
  radial = contact - pivot
  rot0 = scene.arm.rotation
  last, still, ahead = start, 0, 0.0
  for _ in range(max_steps):
    angle = scene.joint(joint)
    if scene.element_error(element) < margin:
      return
    still = still + 1 if abs(angle - last) < 1e-3 else 0
    if still >= 6:  # the part no longer follows (slipped off, or against a stop)
      return
    last = angle
    # A ratchet: the command never swings back. Following the part's angle alone, a handle slipping
    # in the fingers let the door sag, the command followed it and the hand shut the door again
    # (half the microwave openings of generator 2.0.0 were undone within 30 steps).
    ahead = max(ahead, direction * (angle - start) + lead)
    target = pivot + ctl.rot_z(direction * ahead) @ radial
    rot = ctl.rot_z(rotate_gripper * (angle - start)) @ rot0 if rotate_gripper else None
    yield target, rot, grip


def slide_cabinet(scene: Scene, rng) -> Iterator[Command]:
  handle = scene.site("slide_site")
  side = handle + [-rng.uniform(0.07, 0.09), 0.0, rng.uniform(-0.02, 0.02)]
  yield from approach(scene, rng, side)
  margin = done_margin(rng)
  push = side.copy()
  for _ in range(40):  # push the door to the right, a lead ahead of where it is now
    if scene.element_error("slide cabinet") < margin:
      break
    push[0] = scene.arm.position[0] + rng.uniform(0.06, 0.08)
    yield push, None, ctl.GRIPPER_OPEN
  yield from retreat(scene, rng)


def microwave(scene: Scene, rng) -> Iterator[Command]:
  handle = scene.site("microhandle_site") + [0, 0, rng.uniform(0.04, 0.06)]
  yield from approach(scene, rng, handle)
  yield from actuate_gripper(scene, ctl.GRIPPER_CLOSED)
  yield from follow_arc(scene, "microwave", "microwave", scene.arm.position, -1.0,
                        lead=rng.uniform(0.07, 0.09), grip=ctl.GRIPPER_CLOSED, margin=done_margin(rng),
                        max_steps=50, rotate_gripper=DOOR_GRIPPER_TURN)
  yield from retreat(scene, rng)


def light_switch(scene: Scene, rng) -> Iterator[Command]:
  tip = scene.site("light_site")
  contact = tip + [rng.uniform(0.035, 0.05), 0.0, rng.uniform(-0.015, 0.0)]
  yield from approach(scene, rng, contact)
  yield from follow_arc(scene, "light switch", "light_switch", contact, -1.0, lead=rng.uniform(0.75, 0.85),
                        grip=ctl.GRIPPER_OPEN, margin=done_margin(rng), max_steps=30)
  yield from retreat(scene, rng)


# How much the hand turns with a door it pulls open (a fraction of the door's rotation). Generator
# 2.x up to 2.1.0 turned it fully with the door: the handle then slipped out of the closing fingers
# a third of the way open in 8 of 20 microwave and 8 of 20 hinge-cabinet skills run from reset
# under the `dart` perturbation, and each such subtask was retried (0.25 retries per subtask, the
# main reason the pace stayed above the target). A hand that keeps its orientation holds on: 19 of
# 20 each, and the arc is ~25 steps shorter (generator 2.2.0).
DOOR_GRIPPER_TURN = 0.0


# How near the hinge cabinet's handle the hand must be before its fingers close, and how many
# approaches it makes to get there. Generator 2.2.0 closed them wherever the final approach ended
# (its step limit, or a stall against the door): 6 of the 7 failed hinge tries in 40 of its
# episodes closed 4.6-32 cm from the handle, on air, while every try that opened the door closed
# within 1.5 cm. Each failure cost a whole retry of the subtask, much of the episode-length tail
# (generator 2.3.0).
GRASP_REACH = 0.02
GRASP_APPROACHES = 3


def grasp(scene: Scene, rng, handle: np.ndarray, reach: float, approaches: int,
          **approach_options) -> Iterator[Command]:
  """Approach `handle` and close the fingers on it once the hand is within `reach` of it; a hand
  that ended farther away (stalled against the door, or out of steps) backs off to a standoff and
  approaches again, at most `approaches` times in all. Ends on the observable hand-to-handle
  distance, as every phase does. `approach_options` go to `approach`."""
  for _ in range(approaches):
    yield from approach(scene, rng, handle, **approach_options)
    if np.linalg.norm(scene.arm.position - handle) < reach:
      break
  yield from actuate_gripper(scene, ctl.GRIPPER_CLOSED)


def hinge_cabinet(scene: Scene, rng) -> Iterator[Command]:
  """Grasp the right door's handle and swing it open in one continuous arc."""
  handle = scene.site("hinge_site2") + [0, 0, rng.uniform(-0.07, -0.05)]
  yield from grasp(scene, rng, handle, GRASP_REACH, GRASP_APPROACHES)
  yield from follow_arc(scene, "hinge cabinet", "right_hinge_cabinet", scene.arm.position, 1.0,
                        lead=rng.uniform(0.17, 0.21), grip=ctl.GRIPPER_CLOSED, margin=done_margin(rng),
                        max_steps=70, rotate_gripper=DOOR_GRIPPER_TURN)
  yield from retreat(scene, rng)


# How near a stove knob the hand must be before its fingers close (the knob's body keeps a hand that
# reached it 3.8-4.9 cm from its site). Generator 2.3.0 closed them wherever the 20-step final
# approach ended; the failed knob turns traced (top burner, 2 of 2) had closed on air 9-13 cm short,
# from a slow, awkward arm posture, and the retry cost 100-120 steps (generator 2.4.0).
KNOB_REACH = 0.06


def turn_knob(scene: Scene, rng, element: str, site: str, joint: str) -> Iterator[Command]:
  """Grasp a stove knob from the front and turn it by rotating the gripper about the knob axis."""
  knob = scene.site(site)
  hold = knob + rng.uniform(-0.005, 0.005, size=3)
  yield from grasp(scene, rng, hold, KNOB_REACH, GRASP_APPROACHES, standoff=(0.08, 0.12), tol=0.02,
                   contact_steps=20)
  axis = np.array([0.0, -1.0, 0.0])  # Knob joint axis in the world frame (points at the robot).
  rot0, start = scene.arm.rotation, scene.joint(joint)
  lead, margin = rng.uniform(0.3, 0.4), done_margin(rng)
  goal = kitchen.ELEMENT_GOALS[element][0]
  for _ in range(45):
    angle = scene.joint(joint)
    if scene.element_error(element) < margin:
      break
    # Lead the knob, but never command past the goal (the knob would overshoot it).
    yield hold, ctl.rot_about(axis, max(angle - lead, goal) - start) @ rot0, ctl.GRIPPER_CLOSED
  yield from retreat(scene, rng)


def bottom_burner(scene: Scene, rng) -> Iterator[Command]:
  return turn_knob(scene, rng, "bottom burner", "knob2_site", "knob_Joint_2")


def top_burner(scene: Scene, rng) -> Iterator[Command]:
  return turn_knob(scene, rng, "top burner", "knob4_site", "knob_Joint_4")


KETTLE_GOAL_XY = kitchen.ELEMENT_GOALS["kettle"][:2]


def kettle(scene: Scene, rng) -> Iterator[Command]:
  """Push the kettle from behind onto the back burner, steering toward its goal (closed loop),
  starting from the home posture (KETTLE_POSTURE_TOL)."""
  yield from settle_posture(scene, KETTLE_POSTURE_TOL, KETTLE_POSTURE_STEPS)
  goal = KETTLE_GOAL_XY + rng.uniform(-0.02, 0.02, size=2)
  z = scene.body_pos("kettle")[2] + rng.uniform(0.04, 0.06)
  standoff = 0.122 + 0.04  # kettle half-width + finger clearance

  def behind(offset):
    k = scene.body_pos("kettle")[:2]
    direction = (goal - k) / max(np.linalg.norm(goal - k), 1e-6)
    return np.r_[k - direction * offset, z]

  start = behind(standoff)
  yield from move_to(scene, start + [0, -0.06, 0.06], tol=0.04)
  scene.final_approach = True
  try:
    yield from move_to(scene, start, tol=0.03)
  finally:
    scene.final_approach = False
  push, margin = rng.uniform(0.08, 0.11), done_margin(rng)
  best = np.inf
  for _ in range(40):
    err = scene.element_error("kettle")
    # Stop at the margin, or once pushing on only makes it worse (the kettle past its spot or
    # turning on the burner): pushing on used to carry it back out of the completion threshold.
    if err < margin or (err < kitchen.BONUS_THRESH and err > best + 0.01):
      break
    best = min(best, err)
    yield behind(standoff - push), None, ctl.GRIPPER_OPEN
  yield from retreat(scene, rng)


# element -> skill; every kitchen element has one.
SKILLS: Dict[str, Callable[[Scene, np.random.Generator], Iterator[Command]]] = {
    "microwave": microwave,
    "kettle": kettle,
    "light switch": light_switch,
    "slide cabinet": slide_cabinet,
    "hinge cabinet": hinge_cabinet,
    "bottom burner": bottom_burner,
    "top burner": top_burner,
}
