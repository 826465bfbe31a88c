"""relay_agents.replay on a real Reverb server: chunked feed, whole-item fetches, bounded connects."""
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from pipelines import relabel as relabel_pipeline
from relay_agents import replay
from relay_data import relabeled
from tests import helpers

DIMS = {"observation": 6, "action": 2, "goal": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("replay")
  src = helpers.write_toy(root / "src", lengths=(40, 25, 60, 33))
  out = str(root / "low")
  relabel_pipeline.run_relabel(src, out, relabeled.RelabelConfig("low", window=4), show_progress=False,
                               pipeline=relabel_pipeline.PipelineConfig(episodes_per_shard=1, chunk_size=32))
  return out


def _rows(arrays):
  return {tuple(np.concatenate([arrays[k][i] for k in sorted(DIMS)]).tolist()) for i in range(len(arrays["goal"]))}


def test_shuffled_items_cover_every_example_and_mix_episodes():
  chunks = [{"x": (e + np.arange(10)[:, None] / 100).astype(np.float32)} for e in range(6)]
  items = list(replay.shuffled_items(iter(chunks), ["x"], per_item=8, buffer=30, seed=1))
  assert all(item["x"].shape == (8, 1) for item, _ in items)
  assert sum(n for _, n in items) == 60 and len(items) == 8  # ceil(60 / 8); the last one completed
  seen = np.concatenate([item["x"][:n] for item, n in items])[:, 0]
  np.testing.assert_array_equal(np.sort(seen), np.sort(np.concatenate([c["x"][:, 0] for c in chunks])))
  assert max(len(set(np.floor(item["x"][:, 0]).tolist())) for item, _ in items) > 1  # items mix episodes
  again = list(replay.shuffled_items(iter(chunks), ["x"], per_item=8, buffer=30, seed=1))
  assert all(np.array_equal(a["x"], b["x"]) for (a, _), (b, _) in zip(items, again))


@pytest.mark.parametrize("per_item,batch,steps", [(8, 16, 1), (16, 16, 2), (32, 16, 2), (5, 8, 1)])
def test_feed_from_a_relabeled_dataset_and_fetch(dataset, per_item, batch, steps):
  server, address = replay.start_server([replay.make_table("t", DIMS, 100_000, per_item)])
  try:
    assert address.startswith("127.0.0.1:")
    total = relabeled.num_examples(dataset)
    written = replay.feed(address, "t", dataset, sorted(DIMS), per_item, progress=False, shuffle_buffer=100)
    assert written == total
    assert replay.connect(address).server_info()["t"].current_size == -(-total // per_item)
    fetches = replay.numpy_iterator(replay.example_batches(address, "t", batch, per_item, steps_per_fetch=steps))
    fetch = next(fetches)
    assert {k: v.shape for k, v in fetch.items()} == {k: (batch * steps, d) for k, d in DIMS.items()}
    assert _rows({k: np.asarray(v) for k, v in fetch.items()}) <= _rows(relabeled.read_arrays(dataset))
  finally:
    server.stop()


def test_feed_limit_and_tf_dataset_source(dataset):
  server, address = replay.start_server([replay.make_table("t", DIMS, 1000, 8)])
  try:
    assert replay.feed(address, "t", relabeled.load(dataset), sorted(DIMS), 8, limit=100, progress=False) == 100
    assert replay.connect(address).server_info()["t"].current_size == 13
  finally:
    server.stop()


def test_feeding_a_dataset_beyond_the_tables_capacity_says_so(dataset, capsys):
  total = relabeled.num_examples(dataset)
  server, address = replay.start_server([replay.make_table("t", DIMS, 100_000, 8)])
  try:
    assert replay.feed(address, "t", dataset, sorted(DIMS), 8, limit=total, progress=False) == total
    assert "warning" not in capsys.readouterr().err  # all of it fits: nothing to say
    assert replay.feed(address, "t", dataset, sorted(DIMS), 8, limit=total // 2, progress=False) == total // 2
    err = capsys.readouterr().err
    assert f"warning: {dataset} holds {total:,} examples but its Reverb table keeps {total // 2:,}" in err
    assert "50%" in err and "--goals-per-step" in err
  finally:
    server.stop()


def test_unreachable_address_fails_within_bounded_time(dataset):
  address = f"127.0.0.1:{portpicker.pick_unused_port()}"  # nothing listens there
  for call in (lambda: replay.connect(address, timeout_s=2),
               lambda: replay.feed(address, "t", dataset, sorted(DIMS), 8, progress=False, timeout_s=2),
               lambda: replay.example_batches(address, "t", 16, 8, timeout_s=2)):
    start = time.time()
    with pytest.raises(ConnectionError, match=f"no Reverb server answered at {address} within 2s"):
      call()
    assert time.time() - start < 20


def test_trajectory_table_takes_an_acme_adders_items():
  from relay_agents import acme_compat  # noqa: F401
  import dm_env
  from acme import specs
  from acme.adders import reverb as adders
  spec = specs.EnvironmentSpec(observations=specs.Array((3,), np.float32), actions=specs.Array((2,), np.float32),
                               rewards=specs.Array((), np.float32), discounts=specs.BoundedArray((), np.float32, 0., 1.))
  table = replay.trajectory_table("transitions", adders.NStepTransitionAdder.signature(spec), max_size=100)
  server, address = replay.start_server([table])
  try:
    adder = adders.NStepTransitionAdder(replay.connect(address), n_step=1, discount=0.99, priority_fns={"transitions": None})
    obs = np.zeros(3, np.float32)
    adder.add_first(dm_env.restart(obs))
    for _ in range(4):
      adder.add(np.ones(2, np.float32), dm_env.transition(np.float32(1.0), obs, np.float32(1.0)))
    adder.reset()
    assert replay.connect(address).server_info()["transitions"].current_size == 4
  finally:
    server.stop()


def test_replay_is_agent_neutral():
  code = ("import sys, relay_agents.replay; "
          "bad = [m for m in sys.modules if m.startswith('relay_agents.gcbc')]; print(bad); sys.exit(bool(bad))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
