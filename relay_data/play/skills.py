"""Closed-loop scripted skills, one per kitchen element.

A skill is a generator that yields one end-effector command (position, rotation, gripper) per
env step and reads the live simulation between yields, so it reacts to where the handle, door
or knob actually is (closed loop), not to a replayed trajectory. Waypoints are randomized per
episode (offsets, pull lengths, approach heights), which with action noise makes every
demonstration different, like human play.
"""
from typing import Callable, Dict, Iterator, Optional, Tuple

import mujoco
import numpy as np

from relay_data.play import controller as ctl

Command = Tuple[np.ndarray, Optional[np.ndarray], float]


class Scene:
  """Read-only view of the kitchen simulation for skills."""

  def __init__(self, model, data, arm: ctl.ArmController):
    self.model, self.data, self.arm = model, data, arm

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


def move_to(scene: Scene, target, rot=None, grip=ctl.GRIPPER_OPEN, tol=0.01,
            max_steps=60, min_steps=3) -> Iterator[Command]:
  target = np.asarray(target, float)
  for i in range(max_steps):
    if i >= min_steps and np.linalg.norm(scene.arm.position - target) < tol:
      return
    yield target, rot, grip


def rehome(scene: Scene, rng, max_steps: int = 40) -> Iterator[Command]:
  """Joint-space move back toward the home posture (a `None` position command) until the arm is
  within a random tolerance of it. Ends on the state, never on a step count: a phase switch the
  observation cannot reveal (a timer) is one a Markovian policy cannot imitate."""
  tol = rng.uniform(0.08, 0.2)
  for _ in range(max_steps):
    if np.abs(scene.data.qpos[ctl.ARM] - scene.arm.home).max() < tol:
      return
    yield None, None, ctl.GRIPPER_OPEN


def actuate_gripper(scene: Scene, grip: float, rot=None, max_steps: int = 12) -> Iterator[Command]:
  """Hold the hand still while the fingers move to `grip`, until they get there or stop against
  something (a handle): an observable end, unlike a fixed number of steps."""
  target = scene.arm.position
  for i in range(max_steps):
    fingers, speed = scene.data.qpos[7:9], np.abs(scene.data.qvel[7:9]).max()
    if np.abs(fingers - grip).max() < 0.004 or (i >= 2 and speed < 0.01):
      return
    yield target, rot, grip


def retreat(scene: Scene, rng, grip=ctl.GRIPPER_OPEN) -> Iterator[Command]:
  """Open the gripper, back away toward the robot and up a little, keeping the hand's
  orientation until clear (turning it while still in contact would disturb the object)."""
  rot = scene.arm.rotation
  yield from actuate_gripper(scene, grip, rot)
  back = scene.arm.position + np.array([rng.uniform(-0.03, 0.03), -rng.uniform(0.12, 0.18),
                                        rng.uniform(0.0, 0.05)])
  yield from move_to(scene, back, rot=rot, grip=grip, tol=0.03, max_steps=25)


def follow_arc(scene: Scene, joint: str, contact: np.ndarray, target_angle: float, lead: float,
               grip: float, max_steps: int, rotate_gripper: bool = False) -> Iterator[Command]:
  """Drive a hinge by moving `contact` (a point on the moving part, at the joint's current angle)
  around the joint axis, always `lead` radians ahead of where the part is now (closed loop)."""
  pivot = scene.anchor(joint)
  start = scene.joint(joint)
  radial = contact - pivot
  sign = np.sign(target_angle - start)
  rot0 = scene.arm.rotation
  for _ in range(max_steps):
    angle = scene.joint(joint)
    if sign * (target_angle - angle) <= 0:
      return
    ahead = angle + sign * lead - start
    target = pivot + ctl.rot_z(ahead) @ radial
    rot = ctl.rot_z(angle - start) @ rot0 if rotate_gripper else None
    yield target, rot, grip


def slide_cabinet(scene: Scene, rng) -> Iterator[Command]:
  handle = scene.site("slide_site")
  side = handle + [-rng.uniform(0.07, 0.09), 0.0, rng.uniform(-0.02, 0.02)]
  yield from move_to(scene, side + [0, -rng.uniform(0.12, 0.18), 0], tol=0.03)
  yield from move_to(scene, side)
  yield from move_to(scene, side + [rng.uniform(0.38, 0.45), 0, 0], max_steps=80)
  yield from retreat(scene, rng)


def microwave(scene: Scene, rng) -> Iterator[Command]:
  handle = scene.site("microhandle_site") + [0, 0, rng.uniform(0.04, 0.06)]
  yield from move_to(scene, handle + [0, -rng.uniform(0.1, 0.15), 0], tol=0.03)
  yield from move_to(scene, handle)
  yield from actuate_gripper(scene, ctl.GRIPPER_CLOSED)
  yield from follow_arc(scene, "microwave", scene.arm.position, -rng.uniform(0.9, 1.05),
                        lead=rng.uniform(0.055, 0.065), grip=ctl.GRIPPER_CLOSED, max_steps=160,
                        rotate_gripper=True)
  yield from retreat(scene, rng)


def light_switch(scene: Scene, rng) -> Iterator[Command]:
  tip = scene.site("light_site")
  contact = tip + [rng.uniform(0.035, 0.05), 0.0, rng.uniform(-0.015, 0.0)]
  yield from move_to(scene, contact + [0, -rng.uniform(0.12, 0.18), 0], tol=0.03)
  yield from move_to(scene, contact)
  yield from follow_arc(scene, "light_switch", contact, -0.68, lead=rng.uniform(0.75, 0.85),
                        grip=ctl.GRIPPER_OPEN, max_steps=60)
  yield from retreat(scene, rng)




def hinge_cabinet(scene: Scene, rng) -> Iterator[Command]:
  """Pull the right door open by its handle, then reach around its edge and push it the rest."""
  joint = "right_hinge_cabinet"
  handle = scene.site("hinge_site2") + [0, 0, rng.uniform(-0.07, -0.05)]
  yield from move_to(scene, handle + [0, -rng.uniform(0.1, 0.15), 0], tol=0.03)
  yield from move_to(scene, handle)
  yield from actuate_gripper(scene, ctl.GRIPPER_CLOSED)
  yield from follow_arc(scene, joint, scene.arm.position, rng.uniform(0.55, 0.65),
                        lead=rng.uniform(0.09, 0.11), grip=ctl.GRIPPER_CLOSED, max_steps=120,
                        rotate_gripper=True)
  yield from actuate_gripper(scene, ctl.GRIPPER_OPEN)
  # Door geometry at its current angle: direction from the hinge along the door and the normal
  # of its inner face.
  pivot, angle = scene.anchor(joint), scene.joint(joint)
  along = ctl.rot_z(angle) @ np.array([-1.0, 0.0, 0.0])
  inner = ctl.rot_z(angle) @ np.array([0.0, 1.0, 0.0])
  z = handle[2]
  radius = rng.uniform(0.22, 0.27)
  edge = pivot + along * 0.36
  yield from move_to(scene, scene.arm.position + [-0.05, -0.1, 0], tol=0.03, max_steps=20)
  yield from move_to(scene, np.r_[(edge + along * 0.08 - inner * 0.02)[:2], z], tol=0.03, max_steps=40)
  contact = pivot + along * radius + inner * rng.uniform(0.04, 0.06)
  yield from move_to(scene, np.r_[contact[:2], z], tol=0.02, max_steps=40)
  yield from follow_arc(scene, joint, np.r_[contact[:2], z], rng.uniform(1.5, 1.6),
                        lead=rng.uniform(0.25, 0.35), grip=ctl.GRIPPER_OPEN, max_steps=120)
  yield from retreat(scene, rng)


def turn_knob(scene: Scene, rng, site: str, joint: str, target: float) -> Iterator[Command]:
  """Grasp a stove knob from the front and turn it by rotating the gripper about the knob axis."""
  knob = scene.site(site)
  yield from move_to(scene, knob + [0, -rng.uniform(0.1, 0.14), 0], tol=0.02)
  grasp = knob + [rng.uniform(-0.005, 0.005), rng.uniform(-0.005, 0.005), rng.uniform(-0.005, 0.005)]
  yield from move_to(scene, grasp)
  yield from actuate_gripper(scene, ctl.GRIPPER_CLOSED)
  axis = np.array([0.0, -1.0, 0.0])  # Knob joint axis in the world frame (points at the robot).
  rot0, start = scene.arm.rotation, scene.joint(joint)
  lead = rng.uniform(0.15, 0.25)
  for _ in range(60):
    angle = scene.joint(joint)
    if angle <= target + 0.03:
      break
    # Lead the knob, but never command past the target (the knob would overshoot the goal).
    yield grasp, ctl.rot_about(axis, max(angle - lead, target) - start) @ rot0, ctl.GRIPPER_CLOSED
  yield from retreat(scene, rng)


def bottom_burner(scene: Scene, rng) -> Iterator[Command]:
  # Goal -0.88 rad; done within 0.3 of it. Aim just short of the goal: the knob overshoots.
  # (Not a generator itself: the target is drawn when the skill is created, before the
  # skill's own draws, so the episode's random stream does not depend on this wrapper.)
  return turn_knob(scene, rng, "knob2_site", "knob_Joint_2", -rng.uniform(0.85, 0.92))


def top_burner(scene: Scene, rng) -> Iterator[Command]:
  return turn_knob(scene, rng, "knob4_site", "knob_Joint_4", -rng.uniform(0.85, 0.92))


KETTLE_GOAL_XY = np.array([-0.23, 0.75])


def kettle(scene: Scene, rng) -> Iterator[Command]:
  """Push the kettle from behind onto the back burner, steering toward its goal (closed loop)."""
  goal = KETTLE_GOAL_XY + rng.uniform(-0.02, 0.02, size=2)
  z = scene.body_pos("kettle")[2] + rng.uniform(0.04, 0.06)
  standoff = 0.122 + 0.04  # kettle half-width + finger clearance

  def behind(offset):
    k = scene.body_pos("kettle")[:2]
    direction = (goal - k) / max(np.linalg.norm(goal - k), 1e-6)
    return np.r_[k - direction * offset, z]

  start = behind(standoff)
  yield from move_to(scene, start + [0, -0.1, 0.08], tol=0.03)
  yield from move_to(scene, start + [0, -0.05, 0], tol=0.02)
  push = rng.uniform(0.03, 0.05)
  for _ in range(150):
    if np.linalg.norm(scene.body_pos("kettle")[:2] - goal) < 0.06:
      break
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
