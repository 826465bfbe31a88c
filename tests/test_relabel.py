"""relay_data.relabel against the literal reference, on random episodes and windows."""
import collections
import dataclasses

import numpy as np
import pytest

from relay_data import relabel
from tests import relabel_reference as ref


def _episode(rng, length, d_s=5, d_g=3, d_a=2):
  # Distinct rows so that any index mix-up changes the output.
  states = rng.normal(size=(length, d_s)).astype(np.float32)
  goals = rng.normal(size=(length, d_g)).astype(np.float32)
  actions = rng.normal(size=(length, d_a)).astype(np.float32)
  return states, goals, actions


def _assert_same(got, want):
  assert set(got) == set(want)
  for key in want:
    assert got[key].shape == want[key].shape, key
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_low_and_high_match_reference_on_random_cases():
  rng = np.random.default_rng(0)
  for _ in range(300):
    length = int(rng.integers(0, 40))
    w_low = int(rng.integers(1, 12))
    w_high = w_low + int(rng.integers(1, 30))
    s, g, a = _episode(rng, length)
    _assert_same(relabel.low_level_examples(s, g, a, w_low), ref.low_level(s, g, a, w_low))
    _assert_same(relabel.high_level_examples(s, g, w_low, w_high), ref.high_level(s, g, w_low, w_high))


@pytest.mark.parametrize("length,w_low,w_high", [(1, 1, 2), (2, 1, 2), (5, 30, 60), (31, 30, 280),
                                                 (10, 1, 3), (0, 3, 4)])
def test_edge_cases_match_reference(length, w_low, w_high):
  s, g, a = _episode(np.random.default_rng(length), length)
  _assert_same(relabel.low_level_examples(s, g, a, w_low), ref.low_level(s, g, a, w_low))
  _assert_same(relabel.high_level_examples(s, g, w_low, w_high), ref.high_level(s, g, w_low, w_high))


def test_counts_follow_the_definition():
  s, g, a = _episode(np.random.default_rng(1), 11)  # T = 10
  assert len(relabel.low_level_examples(s, g, a, 3)["goal"]) == sum(min(3, 10 - t) for t in range(10))
  out = relabel.high_level_examples(s, g, 2, 5)
  assert len(out["goal"]) == sum(min(5, 10 - t) for t in range(10))
  # Subgoal is the goal itself for j <= W_l and g_{t+W_l} beyond.
  np.testing.assert_array_equal(out["subgoal"][0], g[1])
  np.testing.assert_array_equal(out["subgoal"][4], g[2])
  np.testing.assert_array_equal(out["goal"][4], g[5])


def test_too_short_episode_gives_empty_arrays_with_trailing_shapes():
  s, g, a = _episode(np.random.default_rng(2), 1, d_s=7, d_g=4, d_a=3)
  low = relabel.low_level_examples(s, g, a, 5)
  assert {k: v.shape for k, v in low.items()} == {"observation": (0, 7), "action": (0, 3), "goal": (0, 4)}
  high = relabel.high_level_examples(s, g, 2, 5, goals_per_step=3)
  assert {k: v.shape for k, v in high.items()} == {"observation": (0, 7), "subgoal": (0, 4), "goal": (0, 4)}
  assert relabel.bc_examples(s[:0], a[:0])["action"].shape == (0, 3)


def _pairs(out, s, g):
  """(t, j) pairs recovered from distinct rows."""
  t = [int(np.flatnonzero((s == row).all(1))[0]) for row in out["observation"]]
  k = [int(np.flatnonzero((g == row).all(1))[0]) for row in out["goal"]]
  return [(ti, ki - ti) for ti, ki in zip(t, k)]


def test_goals_per_step_samples_distinct_valid_j_reproducibly():
  rng = np.random.default_rng(3)
  for _ in range(50):
    length = int(rng.integers(2, 30))
    window = int(rng.integers(1, 15))
    k = int(rng.integers(1, 20))  # includes k larger than the window
    s, g, a = _episode(rng, length)
    out = relabel.low_level_examples(s, g, a, window, goals_per_step=k, seed=7)
    again = relabel.low_level_examples(s, g, a, window, goals_per_step=k, seed=7)
    _assert_same(out, again)
    per_t = collections.defaultdict(list)
    for t, j in _pairs(out, s, g):
      per_t[t].append(j)
    T = length - 1
    assert sorted(per_t) == list(range(T))
    for t, js in per_t.items():
      valid = min(window, T - t)
      assert len(js) == min(k, valid) == len(set(js))
      assert js == sorted(js) and all(1 <= j <= valid for j in js)
      np.testing.assert_array_equal(out["action"][[i for i, (tt, _) in enumerate(_pairs(out, s, g)) if tt == t]],
                                    np.repeat(a[t:t + 1], len(js), 0))


def test_goals_per_step_is_uniform_and_seed_dependent():
  s, g, a = _episode(np.random.default_rng(4), 12)
  counts = collections.Counter()
  for seed in range(2000):
    out = relabel.high_level_examples(s, g, 2, 10, goals_per_step=3, seed=seed)
    counts.update(j for t, j in _pairs(out, s, g) if t == 0)
  # t = 0 has 10 valid j, 3 drawn: each j expected 2000 * 3 / 10 = 600 times.
  assert set(counts) == set(range(1, 11))
  assert all(abs(c - 600) < 90 for c in counts.values()), counts
  a0 = relabel.high_level_examples(s, g, 2, 10, goals_per_step=3, seed=0)["goal"]
  a1 = relabel.high_level_examples(s, g, 2, 10, goals_per_step=3, seed=1)["goal"]
  assert not np.array_equal(a0, a1)


def test_baselines():
  s, g, a = _episode(np.random.default_rng(5), 6)
  final = relabel.final_goal_examples(s, g, a)
  np.testing.assert_array_equal(final["observation"], s[:5])
  np.testing.assert_array_equal(final["goal"], np.repeat(g[-1:], 5, 0))
  bc = relabel.bc_examples(s, a)
  assert set(bc) == {"observation", "action"}
  np.testing.assert_array_equal(bc["action"], a[:5])


@pytest.mark.parametrize("call,message", [
    (lambda s, g, a: relabel.low_level_examples(s, g, a, 0), "window must be a positive integer"),
    (lambda s, g, a: relabel.low_level_examples(s, g, a, 2.5), "window must be a positive integer"),
    (lambda s, g, a: relabel.high_level_examples(s, g, 5, 5), "window_high (5) must be larger than window_low (5)"),
    (lambda s, g, a: relabel.high_level_examples(s, g, -1, 5), "window_low must be a positive integer"),
    (lambda s, g, a: relabel.low_level_examples(s, g[:-1], a, 2), "mismatched episode lengths"),
    (lambda s, g, a: relabel.low_level_examples(s[0], g, a, 2), "states must be a [L, d] array"),
    (lambda s, g, a: relabel.low_level_examples(s, g, a, 2, goals_per_step=0), "goals_per_step must be"),
])
def test_invalid_arguments_raise_clear_value_errors(call, message):
  s, g, a = _episode(np.random.default_rng(6), 5)
  with pytest.raises(ValueError) as err:
    call(s, g, a)
  assert message in str(err.value)


def test_target_mask_keeps_goals_and_subgoals_off_disallowed_steps():
  """DAgger play: no example takes a goal (or a high-level subgoal) from a step a policy drove;
  observations and labels from those steps are kept. Matches the literal reference with every j;
  with k goals per step, each step keeps min(k, its allowed j), all allowed, and
  `relabeled.step_index` predicts the steps the examples come from."""
  from relay_data import relabeled  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  for _ in range(100):
    length = int(rng.integers(2, 60))
    w_low = int(rng.integers(1, 8))
    w_high = w_low + int(rng.integers(1, 20))
    ok = rng.random(length) > 0.4
    s, g, a = _episode(rng, length)
    _assert_same(relabel.low_level_examples(s, g, a, w_low, target_ok=ok), ref.low_level(s, g, a, w_low, ok))
    _assert_same(relabel.high_level_examples(s, g, w_low, w_high, target_ok=ok),
                 ref.high_level(s, g, w_low, w_high, ok))
    index = np.arange(length, dtype=np.float32)[:, None]  # goal value = its step
    for level, k in (("low", 2), ("high", 3)):
      config = relabeled.RelabelConfig(level, window=w_low, window_high=w_high, goals_per_step=k, action_chunk=1)
      ex = relabeled.relabel_episode(config, index, index, a, "ep", policy_driven=~ok)
      t = relabeled.step_index(config, length, ~ok)
      np.testing.assert_array_equal(ex["observation"][:, 0], t)
      assert ok[ex["goal"][:, 0].astype(int)].all() and (ex["goal"][:, 0] > t).all()
      if level == "high":
        assert ok[ex["subgoal"][:, 0].astype(int)].all()
      allowed = relabel.valid_pairs(length, w_high if level == "high" else w_low, ok,
                                    w_low if level == "high" else None).sum(1)
      np.testing.assert_array_equal(np.bincount(t.astype(int), minlength=length - 1), np.minimum(allowed, k))
      both = dataclasses.replace(config, goals_on_driven_steps=True)
      assert len(relabeled.relabel_episode(both, index, index, a, "ep", policy_driven=~ok)["goal"]) >= len(t)
  with pytest.raises(ValueError, match="target_ok"):
    relabel.low_level_examples(s, g, a, 3, target_ok=np.ones(length + 1, bool))


def test_perturbed_states_are_those_a_departing_action_reached_and_get_no_goals():
  """DART play: state i is perturbed when the action executed before it (i - 1) left its label by
  more than the threshold on any dim; goals and subgoals never land there, with or without DAgger's
  driven steps, and observations and labels from those steps are kept."""
  from relay_data import relabeled  # pylint: disable=import-outside-toplevel
  labels = np.zeros((8, 3), np.float32)
  executed = labels.copy()
  executed[2, 1] = 0.5    # a burst at steps 2-3 -> states 3 and 4 perturbed
  executed[3, 0] = -0.31
  executed[5, 2] = 0.3    # exactly the threshold: not perturbed
  executed[7, 0] = 1.0    # the last action reaches no state
  np.testing.assert_array_equal(relabel.perturbed_states(labels, executed, 0.3),
                                [False, False, False, True, True, False, False, False])
  assert not relabel.perturbed_states(labels, executed, 2.0).any()
  assert relabel.perturbed_states(labels, executed, 0.0).sum() == 3
  with pytest.raises(ValueError, match="executed_actions must have the actions' shape"):
    relabel.perturbed_states(labels, executed[:, :2], 0.3)
  with pytest.raises(ValueError, match="threshold"):
    relabel.perturbed_states(labels, executed, float("nan"))

  rng = np.random.default_rng(4)
  length = 40
  labels = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
  executed = labels + np.where(rng.random((length, 1)) < 0.3, 0.8, 0.01).astype(np.float32)
  driven = rng.random(length) < 0.2
  index = np.arange(length, dtype=np.float32)[:, None]  # goal value = its step
  for level in ("low", "high"):
    config = relabeled.RelabelConfig(level, window=4, window_high=12, goals_per_step=3, action_chunk=1,
                                     perturbation_threshold=0.5)
    perturbed = config.perturbed(labels, executed)
    np.testing.assert_array_equal(perturbed, relabel.perturbed_states(labels, executed, 0.5))
    assert 5 < perturbed.sum() < length - 5
    for driven_mask in (None, driven):
      ex = relabeled.relabel_episode(config, index, index, labels, "ep", driven_mask, perturbed)
      t = relabeled.step_index(config, length, driven_mask, perturbed)
      np.testing.assert_array_equal(ex["observation"][:, 0], t)
      bad = perturbed | (driven if driven_mask is not None else False)
      assert not bad[ex["goal"][:, 0].astype(int)].any()
      if level == "high":
        assert not bad[ex["subgoal"][:, 0].astype(int)].any()
      else:  # the perturbed steps' own observations still carry their (expert) labels
        assert perturbed[t.astype(int)].any()
        np.testing.assert_array_equal(ex["action"], labels[t.astype(int)])
    plain = dataclasses.replace(config, perturbation_threshold=None)
    assert plain.perturbed(labels, None) is None and plain.target_ok(None, perturbed) is None
    assert len(relabeled.relabel_episode(plain, index, index, labels, "ep")["goal"]) > len(ex["goal"])
    with pytest.raises(ValueError, match="executed actions"):
      config.perturbed(labels, None)
  for bad_tau, message in ((-0.1, "non-negative"), (float("inf"), "non-negative"), (True, "non-negative")):
    with pytest.raises(ValueError, match=message):
      relabeled.RelabelConfig("low", perturbation_threshold=bad_tau)
  with pytest.raises(ValueError, match="relabels none"):
    relabeled.RelabelConfig("bc", perturbation_threshold=0.3)
  lineage = relabeled.RelabelConfig("low", perturbation_threshold=0.3).to_json()
  assert lineage["perturbation_threshold"] == 0.3
  assert "perturbation_threshold" not in relabeled.RelabelConfig("low").to_json()
