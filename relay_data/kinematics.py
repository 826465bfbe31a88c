"""Forward kinematics of the kitchen's Franka arm as a pure, vectorized function (numpy or JAX).

Why: the policies see the arm as 9 joint angles, but what decides whether the hand reaches a
handle is where the hand is. A small MLP has to learn the arm's forward kinematics from the data
to act on that; giving it the end-effector position directly (computed here from the observed
joints, for the observation and for the goal alike) doubled the low level's oracle ceiling
together with a wider network and action chunking (docs/results.md, "Why the low level fails").
This is an input feature beyond the paper's observation, so it is a policy option
(`GoalBCConfig.end_effector`), off by default for the paper's plain MLP.

The chain's constants (each body's offset and rotation in its parent, each hinge's axis and
anchor, the site's offset) are read once from the MuJoCo model (`chain_of_site`); `site_position`
then needs nothing but array maths, so it runs inside a jitted network and on a whole dataset.
It is checked against MuJoCo's own `mj_kinematics` in tests/test_kinematics.py.
"""
import dataclasses
import functools
from typing import Optional, Tuple

import numpy as np

END_EFFECTOR_SITE = "end_effector"
ROBOT_JOINTS = 9  # the first 9 columns of the observation and of the goal space are the robot's qpos


@dataclasses.dataclass(frozen=True)
class Link:
  """One body of the chain: its pose in the parent body, and its hinge joint (if any)."""
  offset: Tuple[float, float, float]                 # body position in the parent frame
  rotation: Tuple[Tuple[float, ...], ...]            # 3x3, body orientation in the parent frame
  joint: Optional[int] = None                        # column of the joint vector driving its hinge
  axis: Tuple[float, float, float] = (0.0, 0.0, 1.0)  # hinge axis (body frame, unit)
  anchor: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # hinge anchor (body frame)
  reference: float = 0.0                              # qpos0: the angle at which the hinge is unrotated


@dataclasses.dataclass(frozen=True)
class Chain:
  """A serial chain of hinge-jointed bodies from the world to a site."""
  links: Tuple[Link, ...]
  site_offset: Tuple[float, float, float]
  site_rotation: Tuple[Tuple[float, ...], ...]


def _quat_to_matrix(q) -> np.ndarray:
  w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
  return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                   [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                   [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _tuple(a) -> tuple:
  a = np.asarray(a, np.float64)
  return tuple(_tuple(r) for r in a) if a.ndim > 1 else tuple(float(v) for v in a)


def chain_of_site(model, site: str = END_EFFECTOR_SITE, num_joints: int = ROBOT_JOINTS) -> Chain:
  """The chain from the world body to `site` in a MuJoCo model; joint columns are qpos addresses,
  which must lie in [0, num_joints) (the joint vector the function will be given)."""
  import mujoco  # pylint: disable=import-outside-toplevel
  site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
  if site_id < 0:
    raise ValueError(f"the model has no site {site!r}")
  bodies = []
  body = int(model.site_bodyid[site_id])
  while body != 0:
    bodies.append(body)
    body = int(model.body_parentid[body])
  links = []
  for body in reversed(bodies):
    if model.body_mocapid[body] >= 0:
      raise ValueError(f"body {model.body(body).name!r} is a mocap body: its pose is not a function of the joints")
    joints = [j for j in range(model.njnt) if model.jnt_bodyid[j] == body]
    if len(joints) > 1 or any(model.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE for j in joints):
      raise ValueError(f"body {model.body(body).name!r}: only bodies with at most one hinge joint are supported")
    link = dict(offset=_tuple(model.body_pos[body]), rotation=_tuple(_quat_to_matrix(model.body_quat[body])))
    if joints:
      j = joints[0]
      column = int(model.jnt_qposadr[j])
      if column >= num_joints:
        raise ValueError(f"joint {model.joint(j).name!r} is qpos[{column}], outside the first {num_joints}")
      link.update(joint=column, axis=_tuple(model.jnt_axis[j]), anchor=_tuple(model.jnt_pos[j]),
                  reference=float(model.qpos0[column]))
    links.append(Link(**link))
  return Chain(tuple(links), _tuple(model.site_pos[site_id]), _tuple(_quat_to_matrix(model.site_quat[site_id])))


def _axis_rotation(axis, angle, xp):
  """[..., 3, 3] rotation by `angle` [...] about the unit `axis` (Rodrigues' formula)."""
  x, y, z = axis
  k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
  s, c = xp.sin(angle)[..., None, None], xp.cos(angle)[..., None, None]
  return np.eye(3) + s * k + (1 - c) * (k @ k)


def site_position(chain: Chain, joints, xp=np):
  """[..., >= 9] joint positions -> [..., 3] world position of the chain's site.

  `xp` is the array module (numpy, or jax.numpy inside a jitted network)."""
  joints = xp.asarray(joints)
  position = xp.zeros(joints.shape[:-1] + (3,), joints.dtype)
  rotation = xp.broadcast_to(xp.eye(3, dtype=joints.dtype), joints.shape[:-1] + (3, 3))
  for link in chain.links:
    position = position + xp.einsum("...ij,j->...i", rotation, np.asarray(link.offset))
    rotation = xp.einsum("...ij,jk->...ik", rotation, np.asarray(link.rotation))
    if link.joint is not None:
      anchor = np.asarray(link.anchor)
      pivot = position + xp.einsum("...ij,j->...i", rotation, anchor)
      rotation = xp.einsum("...ij,...jk->...ik", rotation,
                           _axis_rotation(link.axis, joints[..., link.joint] - link.reference, xp))
      position = pivot - xp.einsum("...ij,j->...i", rotation, anchor)
  out = position + xp.einsum("...ij,j->...i", rotation, np.asarray(chain.site_offset))
  return out.astype(joints.dtype)


@functools.lru_cache(maxsize=1)
def kitchen_chain() -> Chain:
  """The end-effector chain of FrankaKitchen-v1's arm (read once per process from its model)."""
  from relay_data import kitchen  # pylint: disable=import-outside-toplevel
  env = kitchen.make_env()
  try:
    return chain_of_site(env.unwrapped.model)
  finally:
    env.close()


def kitchen_end_effector(joints, xp=np):
  """[..., >= 9] kitchen robot joint positions (observation[:9] or goal_state[:9]) -> [..., 3]."""
  return site_position(kitchen_chain(), joints, xp)
