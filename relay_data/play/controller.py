"""Operational-space arm controller for FrankaKitchen-v1: end-effector targets -> env actions.

The kitchen's action is a joint-velocity command in [-1, 1] that the robot model scales by 2 and
integrates over dt = 0.08 s from the *measured* (noisy) joint positions into position targets.
A zero action therefore lets the arm sag; instead this controller keeps its own joint-position
command `q_cmd`, moves it by a damped-least-squares IK step toward the end-effector target
(position + orientation, joint limits respected, a weak pull toward the home posture in the
null space), and emits the velocity that makes the env's position target equal `q_cmd`.
Tracking its own command makes the loop integrate away steady-state sag.

That command is hidden state: the same observation can get different actions depending on how
far the command has run ahead, which a Markovian policy cannot imitate. With `markovian=True`
(the default) the command is instead rebuilt every step from the observation alone: measured
joints + the offset that holds them against gravity (qfrc_bias / kp of the position actuators)
+ `lead_gain` times the IK step. The action is then a function of the observation and the
skill's target, so behaviour cloning can reproduce it.
"""
import contextlib
import dataclasses
from typing import Optional

import mujoco
import numpy as np
import threadpoolctl

from relay_data import kitchen

ARM = kitchen.ARM
GRIPPER_OPEN = kitchen.GRIPPER_OPEN
GRIPPER_CLOSED = 0.0


def single_threaded_blas() -> contextlib.AbstractContextManager:
  """A context in which numpy's BLAS/LAPACK run on one thread. Why: the controller's IK solves
  7-joint systems every step, and a multi-threaded OpenBLAS (numpy's wheel starts one thread per
  core) spends more time waking and spinning its threads than computing. Measured (session 25, 16
  episodes): one generator worker took 32 s of CPU on 2 cores for 16 s of wall time, and 15 s on
  one core for 15 s with one BLAS thread; 2 workers then did 1.77x one worker's steps/s instead of
  1.35x."""
  return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


@dataclasses.dataclass
class ControllerConfig:
  max_step_m: float = 0.05        # end-effector translation per env step
  max_step_rad: float = 0.15      # end-effector rotation per env step
  damping: float = 0.05           # DLS damping
  posture_gain: float = 0.0      # null-space pull toward the home posture
  limit_margin: float = 0.05      # rad kept from joint limits
  max_lead_rad: float = 0.3      # q_cmd may lead the measured arm by at most this much
  markovian: bool = True          # command from the observation alone (see module doc)
  lead_gain: float = 2.0          # markovian: command = measured + sag offset + lead_gain * IK step


class ArmController:
  """Turns (position, rotation, gripper) targets into FrankaKitchen-v1 actions."""

  def __init__(self, model, data, config: ControllerConfig = ControllerConfig()):
    self.model, self.data, self.config = model, data, config
    self.site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
    self.lo = model.jnt_range[ARM, 0] + config.limit_margin
    self.hi = model.jnt_range[ARM, 1] - config.limit_margin
    self.kp = model.actuator_gainprm[ARM, 0].copy()  # position actuators: torque = kp (ctrl - q)
    self._jp = np.zeros((3, model.nv))
    self._jr = np.zeros((3, model.nv))
    self.reset()

  def reset(self) -> None:
    """Call after env.reset: the current pose becomes home and the command."""
    self.home = self.data.qpos[ARM].copy()
    self.q_cmd = self.home.copy()
    self.home_rotation = self.rotation.copy()

  @property
  def position(self) -> np.ndarray:
    return self.data.site_xpos[self.site].copy()

  @property
  def rotation(self) -> np.ndarray:
    return self.data.site_xmat[self.site].reshape(3, 3).copy()

  def _task_error(self, target_pos, target_rot) -> np.ndarray:
    c = self.config
    pos_err = target_pos - self.data.site_xpos[self.site]
    norm = np.linalg.norm(pos_err)
    if norm > c.max_step_m:
      pos_err *= c.max_step_m / norm
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, (target_rot @ self.rotation.T).ravel())
    rot_err = np.zeros(3)
    mujoco.mju_quat2Vel(rot_err, quat, 1.0)
    norm = np.linalg.norm(rot_err)
    if norm > c.max_step_rad:
      rot_err *= c.max_step_rad / norm
    return np.concatenate([pos_err, rot_err])

  def _ik_step(self, error: np.ndarray) -> np.ndarray:
    c = self.config
    mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
    jac = np.vstack([self._jp[:, ARM], self._jr[:, ARM]])
    q = self.data.qpos[ARM]
    active = np.ones(7)
    for _ in range(3):  # Drop joints that the step would push past a limit, then re-solve.
      ja = jac * active
      pinv = ja.T @ np.linalg.inv(ja @ ja.T + c.damping ** 2 * np.eye(6))
      dq = pinv @ error + (np.eye(7) - pinv @ ja) @ (c.posture_gain * (self.home - q)) * active
      blocked = (((q + dq < self.lo) & (dq < 0)) | ((q + dq > self.hi) & (dq > 0))) & (active > 0)
      if not blocked.any():
        break
      active[blocked] = 0.0
    return dq

  def action(self, measured_qpos: np.ndarray, target_pos: Optional[np.ndarray],
             target_rot: Optional[np.ndarray] = None, gripper: float = GRIPPER_OPEN) -> np.ndarray:
    """One env action toward the target; `measured_qpos` is observation[0:9] (what the env integrates from).

    `target_pos=None` means a joint-space move toward the home posture (re-homing between
    subtasks keeps the arm out of awkward redundant configurations).
    """
    c = self.config
    q = self.data.qpos[ARM]
    measured = np.asarray(measured_qpos[ARM], float)
    if target_pos is None:
      start = measured if c.markovian else self.q_cmd
      dq = np.clip(self.home - start, -c.max_step_rad, c.max_step_rad)
    else:
      target_rot = self.home_rotation if target_rot is None else target_rot
      dq = self._ik_step(self._task_error(np.asarray(target_pos, float), target_rot))
    lead = c.max_lead_rad
    if c.markovian:
      hold = self.data.qfrc_bias[ARM] / self.kp  # joint offset that balances gravity
      self.q_cmd = np.clip(measured + hold + np.clip(c.lead_gain * dq, -lead, lead), self.lo, self.hi)
    else:
      self.q_cmd = np.clip(np.clip(self.q_cmd + dq, q - lead, q + lead), self.lo, self.hi)
    target = np.concatenate([self.q_cmd, [gripper, gripper]])
    act = (target - measured_qpos[:9]) / kitchen.ACTION_SCALE_DT
    return np.clip(act, -1.0, 1.0).astype(np.float32)


def rot_z(angle: float) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_about(axis: np.ndarray, angle: float) -> np.ndarray:
  """Rotation matrix of `angle` about unit `axis` (world frame)."""
  quat = np.zeros(4)
  mujoco.mju_axisAngle2Quat(quat, np.asarray(axis, float), angle)
  mat = np.zeros(9)
  mujoco.mju_quat2Mat(mat, quat)
  return mat.reshape(3, 3)
