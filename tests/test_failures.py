"""Failure anatomy (relay_agents/failures.py): geometry on the real kitchen, outcomes on real demos."""
import numpy as np
import pytest

from relay_agents import failures
from relay_data import kitchen, rlds_io


@pytest.fixture(scope="module")
def geometry():
  return failures.ElementGeometry()


def test_geometry_matches_the_simulation(geometry):
  import mujoco  # pylint: disable=import-outside-toplevel
  env = kitchen.make_env()
  env.reset(seed=3)
  m, d = env.unwrapped.model, env.unwrapped.data
  for _ in range(5):
    env.step(env.action_space.sample())
  mujoco.mj_kinematics(m, d)  # site positions of the current qpos (a step leaves them one integration behind)
  hand, contacts = geometry(d.qpos[None].copy())
  site = lambda name: d.site_xpos[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name)]
  np.testing.assert_allclose(hand[0], site("end_effector"), atol=1e-9)
  for element, name in failures.CONTACT_SITES.items():
    np.testing.assert_allclose(contacts[element][0], site(name), atol=1e-9)


def test_contact_points_move_with_their_element(geometry):
  env = kitchen.make_env()
  env.reset(seed=0)
  closed = env.unwrapped.data.qpos.copy()
  opened = kitchen.set_goal_state(closed, ["microwave", "slide cabinet"])
  _, contacts = geometry(np.stack([closed, opened]))
  assert np.linalg.norm(contacts["microwave"][1] - contacts["microwave"][0]) > 0.1   # the door swung open
  assert contacts["slide cabinet"][1][0] - contacts["slide cabinet"][0][0] > 0.2     # the door slid right
  np.testing.assert_allclose(contacts["light switch"][1], contacts["light switch"][0])  # untouched


def test_engagement_and_outcomes():
  errors = np.array([1.0, 0.9, 0.85, 0.8, 0.5])  # a quarter of the way to the 0.3 threshold: 0.825
  assert failures.engagement_step(errors) == 3
  assert failures.engagement_step(np.array([0.37, 0.36, 0.35, 0.32])) == 2  # at least ENGAGE_MIN
  assert failures.engagement_step(np.full(5, 1.0)) is None
  far, near = np.full(5, 0.3), np.array([0.3, 0.2, 0.04, 0.05, 0.1])
  assert failures.classify(errors, far, done=True, radius=0.05) == "done"
  assert failures.classify(errors, far, done=False, radius=0.05) == "engaged, not done"
  assert failures.classify(np.full(5, 1.0), near, done=False, radius=0.05) == "reached, not engaged"
  assert failures.classify(np.full(5, 1.0), far, done=False, radius=0.05) == "not reached"
  assert failures.demo_engagement_distances(np.zeros((3, kitchen.GOAL_DIM)), [], {}) == {}  # a demo that did nothing
  radii = failures.reach_radii({"microwave": [0.04, 0.05, 0.06], "kettle": []})
  assert set(radii) == {"microwave"} and 0.06 + 0.01 < radii["microwave"] < 0.06 + failures.REACH_SLACK_M + 1e-9


def test_a_demo_dissected_as_a_rollout(kitchen_play_tiny, geometry):
  """A generated demo's own trajectory: what it completed is done; cut before its first
  completion, that element is engaged but not done; a hand left at home reaches nothing."""
  radii, found = failures.demo_reach_radii(kitchen_play_tiny, geometry, episodes=2, progress=False)
  ep = next(rlds_io.iter_episodes(kitchen_play_tiny, 0, 1))
  states, order = ep["goal_state"], ep["subtask_order"].split(",")
  assert set(order) <= set(radii) and all(len(found[e]) >= 1 for e in order)
  done_at = {e: int(np.argmax(kitchen.completion_mask(states, [e])[:, 0])) for e in order}
  row = failures.rollout_anatomy(states, order, done_at, geometry.distances(states), radii)
  assert row.outcomes == {e: "done" for e in order}
  assert set(order) <= set(row.reached)

  first = order[0]
  cut = states[:done_at[first]]
  row = failures.rollout_anatomy(cut, [first], {}, geometry.distances(cut), radii)
  assert row.outcomes == {first: "engaged, not done"}

  still = np.repeat(states[:1], 50, axis=0)
  row = failures.rollout_anatomy(still, order, {}, geometry.distances(still), radii)
  assert set(row.outcomes.values()) == {"not reached"} and row.reached == [] and row.engaged_off_goal == []
  summary = failures.summarize([row])
  assert summary["outcomes"]["not reached"] == len(order) and summary["rollouts"] == 1
  assert "not reached" in failures.format_summary(summary, radii)
