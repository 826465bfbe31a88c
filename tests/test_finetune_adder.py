"""The actors' Reverb plumbing: the once-per-episode writer and the versioned variables."""
import jax
import numpy as np
import pytest
import reverb
import tree

from relay_agents import acme_compat  # noqa: F401
from acme.adders.reverb import episode as episode_adders  # pylint: disable=g-bad-import-order
from relay_agents.finetune import acting, adder as adder_lib, env as env_lib

GOAL = ["microwave", "kettle"]
STEPS = 12


def _timesteps(seed=0):
  """A real kitchen episode of STEPS random actions: the timesteps and the (action, extras) after each."""
  environment = env_lib.GoalKitchenEnv(GOAL, env_lib.default_goal_state(GOAL), STEPS, seed=seed)
  rng = np.random.default_rng(seed)
  timesteps, steps = [environment.reset()], []
  while not timesteps[-1].last():
    action = rng.uniform(-1, 1, size=9).astype(np.float32)
    steps.append((action, {"subgoal": rng.normal(size=30).astype(np.float32), "valid": np.float32(1.0)}))
    timesteps.append(environment.step(action))
  return timesteps, steps


def _table(name, length):
  signature = episode_adders.EpisodeAdder.signature(env_lib.environment_spec(), acting.extras_spec(),
                                                    sequence_length=length)
  return reverb.Table.queue(name, max_size=4, signature=signature)


def _write(adder, timesteps, steps):
  adder.add_first(timesteps[0])
  for (action, extras), timestep in zip(steps, timesteps[1:]):
    adder.add(action, timestep, extras=extras)


@pytest.mark.parametrize("length", [STEPS + 1, STEPS + 6])  # exactly the episode; padded after it
def test_episode_writer_writes_the_item_acmes_episode_adder_writes(length):
  timesteps, steps = _timesteps()
  server = reverb.Server([_table("acme", length), _table("ours", length)])
  try:
    client = reverb.Client(f"localhost:{server.port}")
    _write(episode_adders.EpisodeAdder(client, max_sequence_length=length, padding_fn=np.zeros,
                                       priority_fns={"acme": None}), timesteps, steps)
    _write(adder_lib.EpisodeWriter(client, "ours", length), timesteps, steps)
    acme, ours = (next(client.sample(t, 1, emit_timesteps=False, unpack_as_table_signature=True))
                  for t in ("acme", "ours"))
    assert ours.info.priority == acme.info.priority == 1.0
    paths = lambda data: [path for path, _ in tree.flatten_with_path(data)]
    assert type(ours.data).__name__ == type(acme.data).__name__ and paths(ours.data) == paths(acme.data)
    for got, want in zip(tree.flatten(ours.data), tree.flatten(acme.data)):
      assert got.dtype == want.dtype and got.shape == want.shape
      np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ours.data.action[:STEPS], np.stack([a for a, _ in steps]))
    assert ours.data.start_of_episode.tolist() == [True] + [False] * (length - 1)
  finally:
    server.stop()


def test_episode_writer_writes_one_item_per_episode_and_refuses_episodes_past_its_length():
  server = reverb.Server([_table("ours", STEPS + 1)])
  try:
    client = reverb.Client(f"localhost:{server.port}")
    writer = adder_lib.EpisodeWriter(client, "ours", STEPS + 1)
    for seed in (0, 1):
      _write(writer, *_timesteps(seed))
    assert client.server_info()["ours"].current_size == 2
    with pytest.raises(ValueError, match="max_sequence_length"):
      _write(adder_lib.EpisodeWriter(client, "ours", STEPS), *_timesteps())
    with pytest.raises(ValueError, match="add_first"):
      adder_lib.EpisodeWriter(client, "ours", STEPS).add(np.zeros(9, np.float32), _timesteps()[0][1])
  finally:
    server.stop()


def test_variable_source_fetches_the_variables_only_when_their_version_changes():
  """An actor process polls the one-integer version table before each episode and re-reads the
  variables (~7 MB for the shipped hierarchy) only when a newer version was published."""
  tables = [reverb.Table(name=n, sampler=reverb.selectors.Lifo(), remover=reverb.selectors.Fifo(), max_size=1,
                         rate_limiter=reverb.rate_limiters.MinSize(1))
            for n in ("variables", acting.version_table("variables"))]
  server = reverb.Server(tables)
  try:
    address = f"localhost:{server.port}"
    client = reverb.Client(address)
    params = [{"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"w": np.ones(4, np.float32)}]
    acting.publish_variables(client, "variables", 3, params)
    source = acting.ReverbVariableSource(address, "variables", params)
    source.bind_names(["low", "high"])
    fetches = lambda: client.server_info()["variables"].rate_limiter_info.sample_stats.completed
    first = source.get_variables(["low", "high"])
    assert source.version == 3 and fetches() == 1
    again = source.get_variables(["high", "low"])
    assert fetches() == 1  # unchanged version: the held variables, not a second read
    np.testing.assert_array_equal(np.asarray(again[1]["w"]), params[0]["w"])
    assert again[1]["w"] is first[0]["w"]
    newer = jax.tree_util.tree_map(lambda x: x + 1, params)
    acting.publish_variables(client, "variables", 4, newer)
    latest = source.get_variables(["low", "high"])
    assert source.version == 4 and fetches() == 2
    np.testing.assert_array_equal(np.asarray(latest[0]["w"]), newer[0]["w"])
  finally:
    server.stop()
