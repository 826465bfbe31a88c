"""relay_data.goal_space: layouts, goal dims, completion test, metadata round trip (pure)."""
import numpy as np
import pytest

from relay_data import goal_space, kitchen
from relay_data.errors import DataError


def test_kitchen_layouts_map_the_env_observation_and_share_one_goal_space():
  obs = np.random.default_rng(0).normal(size=(3, kitchen.OBS_DIM)).astype(np.float32)
  full, d4rl = goal_space.kitchen_spec(59), goal_space.kitchen_spec(30)
  assert (full.observation.layout, d4rl.observation.layout) == ("franka-kitchen-v1", "d4rl")
  assert full.goal_space == d4rl.goal_space == goal_space.KITCHEN_GOAL_SPACE
  np.testing.assert_array_equal(full.observation.from_env(obs), obs)
  positions = d4rl.observation.from_env(obs)
  np.testing.assert_array_equal(positions, kitchen.goal_state_from_observation(obs))
  # Both layouts find the same goal-space state in their own observation.
  np.testing.assert_array_equal(full.goal_state(obs), d4rl.goal_state(positions))
  goal = kitchen.set_goal_state(positions[0], ["microwave", "kettle"])
  done = full.goal_space.completion_mask(goal)
  assert done[kitchen.ELEMENTS.index("microwave")] and done[kitchen.ELEMENTS.index("kettle")]


def test_other_widths_and_custom_data():
  with pytest.raises(DataError, match="observations are 12-d; the kitchen's are 59-d .*env 'none'"):
    goal_space.kitchen_spec(12)
  custom = goal_space.custom_spec(12, 4)
  assert not custom.observation.evaluable and custom.goal_space.elements == ()
  with pytest.raises(ValueError, match="no completion test"):
    custom.goal_space.completion_mask(np.zeros((1, 4)))
  with pytest.raises(ValueError, match="cannot be made from the kitchen"):
    custom.observation.from_env(np.zeros(59))
  with pytest.raises(ValueError, match="kitchen layout d4rl is 30-d, not 59"):
    goal_space.ObservationSpec("kitchen", "d4rl", 59)


def test_spec_round_trips_and_mismatch_is_one_line():
  spec = goal_space.kitchen_spec(30)
  assert goal_space.DataSpec.from_dict(spec.to_dict()) == spec
  with pytest.raises(DataError, match="malformed observation/goal spec"):
    goal_space.DataSpec.from_dict({"observation": {"env": "kitchen"}})
  with pytest.raises(DataError) as err:
    spec.require_same(goal_space.kitchen_spec(59), "model m", "dataset d")
  assert str(err.value) == ("model m has env kitchen, 30-d d4rl observation, 30-d kitchen-qpos goal but dataset d "
                            "has env kitchen, 59-d franka-kitchen-v1 observation, 30-d kitchen-qpos goal")


def test_legacy_inference_and_settings_defaults():
  assert goal_space.infer_legacy(59, 30) == goal_space.kitchen_spec(59)
  assert goal_space.infer_legacy(30, 30, "d4rl-hdf5") == goal_space.kitchen_spec(30)
  assert goal_space.infer_legacy(30, 30, "npz") == goal_space.custom_spec(30, 30)  # never guessed into the kitchen
  assert goal_space.normalize_env_settings(None) == kitchen.GYMNASIUM_DEFAULTS.to_dict()
  assert goal_space.normalize_env_settings({"robot_noise_ratio": 0.0})["object_noise_ratio"] == 0.0005
