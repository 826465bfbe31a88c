"""relay_agents.acme_compat: each patch is needed on this stack, and with them Acme works."""
import subprocess
import sys
import textwrap

import numpy as np


def _python(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=300)


def test_launchpad_stub_is_needed():
  proc = _python("import acme")
  assert proc.returncode != 0
  assert "No module named 'launchpad'" in proc.stderr


def test_jax_aliases_are_needed():
  proc = _python("""
      import jax, jax.numpy as jnp
      print(hasattr(jnp, 'DeviceArray'), hasattr(jax, 'tree_multimap'),
            hasattr(getattr(jax, 'pxla', None), 'ShardedDeviceArray'))
  """)
  assert proc.stdout.split() == ["False", "False", "False"], proc.stderr
  # acme's JAX utilities do not even import without them (annotations use jax.xla.Device).
  proc = _python("""
      import sys, types
      sys.modules['launchpad'] = types.ModuleType('launchpad')  # only the launchpad part
      from acme.jax import utils
  """)
  assert proc.returncode != 0 and "has no attribute 'xla'" in proc.stderr


def test_reverb_signature_timeout_patch_is_needed():
  proc = _python("""
      import inspect, reverb
      print('get_signature_timeout_ms' in inspect.signature(reverb.Client.trajectory_writer).parameters)
  """)
  assert proc.stdout.strip() == "False"


def test_all_patches_apply_and_are_idempotent():
  from relay_agents import acme_compat
  assert set(acme_compat.PATCHES) == {"launchpad-stub", "jax-aliases", "reverb-trajectory-writer"}
  before = list(acme_compat.PATCHES)
  acme_compat.install()
  assert acme_compat.PATCHES == before


def test_acme_jax_bc_learner_steps_and_loss_drops():
  from relay_agents import acme_compat  # noqa: F401
  import haiku as hk
  import jax
  import optax
  from acme import types
  from acme.agents.jax import bc
  from acme.jax import networks as networks_lib
  from acme.utils import loggers

  net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([32, 2])(x)))
  network = networks_lib.FeedForwardNetwork(
      init=lambda key: net.init(key, np.zeros((1, 4), np.float32)),
      apply=lambda params, x, is_training=False, key=None: net.apply(params, x))
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(4, 2)).astype(np.float32)

  def batches():
    while True:
      obs = rng.normal(size=(64, 4)).astype(np.float32)
      yield types.Transition(obs, np.tanh(obs @ weights), np.zeros(64, np.float32),
                             np.ones(64, np.float32), obs)

  rows = []

  class Capture(loggers.Logger):
    def write(self, data):
      rows.append(float(data["loss"]))

    def close(self):
      pass

  learner = bc.BCLearner(network=network, random_key=jax.random.PRNGKey(0),
                         loss_fn=bc.mse(lambda out, key: out), optimizer=optax.adam(3e-3),
                         demonstrations=batches(), num_sgd_steps_per_step=1, logger=Capture())
  for _ in range(100):
    learner.step()
  assert rows[-1] < 0.5 * rows[0]


def test_acme_reverb_adder_writes_to_a_real_server():
  from relay_agents import acme_compat  # noqa: F401
  import dm_env
  import reverb
  from acme import specs
  from acme.adders import reverb as adders_reverb

  spec = specs.EnvironmentSpec(
      observations=specs.Array((3,), np.float32), actions=specs.Array((2,), np.float32),
      rewards=specs.Array((), np.float32), discounts=specs.BoundedArray((), np.float32, 0.0, 1.0))
  table = reverb.Table(name=adders_reverb.DEFAULT_PRIORITY_TABLE, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                       max_size=100, rate_limiter=reverb.rate_limiters.MinSize(1),
                       signature=adders_reverb.NStepTransitionAdder.signature(spec))
  server = reverb.Server([table])
  try:
    client = reverb.Client(f"localhost:{server.port}")
    adder = adders_reverb.NStepTransitionAdder(client, n_step=1, discount=1.0)
    obs = np.zeros(3, np.float32)
    adder.add_first(dm_env.restart(obs))
    for t in range(4):
      last = t == 3
      step = dm_env.TimeStep(dm_env.StepType.LAST if last else dm_env.StepType.MID,
                             np.float32(t), np.float32(0.0 if last else 1.0), obs + t + 1)
      adder.add(np.full(2, t, np.float32), step)
    assert client.server_info()[adders_reverb.DEFAULT_PRIORITY_TABLE].current_size == 4
    sample = next(client.sample(adders_reverb.DEFAULT_PRIORITY_TABLE, emit_timesteps=False))
    observation, action = sample.data[0], sample.data[1]
    assert observation.shape == (3,) and action.shape == (2,)
    # A transition pairs action t with the observation it was taken from (obs + t).
    np.testing.assert_allclose(observation, np.full(3, action[0]))
  finally:
    server.stop()
