"""Make dm-acme 0.4.0 importable and working on this project's stack (py3.11, jax 0.4.34, reverb 0.14).

Import this module before `acme` (every `relay_agents` module that uses acme does so). It applies three
patches, each idempotent, each only when the environment lacks the thing patched:

1. ``launchpad`` stub. ``import acme`` imports ``launchpad`` (stop-signal handlers in
   ``acme.utils.signals``; ``lp.Program`` annotations in distributed layouts that
   ``acme.agents.jax.*`` import). dm-launchpad has no Python 3.11 wheel. The stub provides the
   two handler registration functions and placeholder classes that raise when instantiated, so
   single-process agents work and distributed ones fail loudly.
   Delete when a launchpad wheel for our Python exists (then the real module wins anyway).
2. Removed JAX names. acme 0.4.0 still references ``jax.xla.Device/DeviceArray``,
   ``jnp.DeviceArray``, ``jax.pxla.ShardedDeviceArray`` and the ``jax.tree_*`` shortcuts, all
   removed or deprecated after jax 0.4.13. We alias them to ``jax.Device``, ``jax.Array`` and
   ``jax.tree_util``. Delete when acme is upgraded past 0.4.0 (acme HEAD uses the new names).
3. Reverb 0.14 dropped ``Client.trajectory_writer(get_signature_timeout_ms=...)`` which
   ``acme.adders.reverb.base.ReverbAdder`` still passes. We wrap the method to drop the argument.
   Delete with the same acme upgrade.

``PATCHES`` lists what was applied in this process (the tests assert each one is needed).
"""
import inspect
import sys
import types
from typing import List

from relay_data import quiet

PATCHES: List[str] = []


class _DistributedOnly:
  """Placeholder for launchpad classes (lp.Program, lp.CourierNode, ...)."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    raise NotImplementedError(
        "launchpad is not installed (relay_agents.acme_compat stub): distributed Acme agents are "
        "unavailable; relay runs single-process agents with a Reverb server address instead.")


def _stub_launchpad() -> None:
  try:
    import launchpad  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    return
  except ImportError:
    pass
  module = types.ModuleType("launchpad")
  module.__relay_stub__ = True
  handlers = []
  module.register_stop_handler = handlers.append
  module.unregister_stop_handler = lambda h: handlers.remove(h) if h in handlers else None

  def __getattr__(name):
    if name.startswith("__"):
      raise AttributeError(name)
    return type(name, (_DistributedOnly,), {})

  module.__getattr__ = __getattr__
  sys.modules["launchpad"] = module
  PATCHES.append("launchpad-stub")


def _alias_removed_jax_names() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import jax.tree_util as jtu  # pylint: disable=import-outside-toplevel
  applied = False
  if not hasattr(getattr(jax, "xla", None), "DeviceArray"):
    jax.xla = types.SimpleNamespace(Device=jax.Device, DeviceArray=jax.Array)
    applied = True
  if not hasattr(jnp, "DeviceArray"):
    jnp.DeviceArray = jax.Array
    applied = True
  if not hasattr(getattr(jax, "pxla", None), "ShardedDeviceArray"):
    jax.pxla = types.SimpleNamespace(ShardedDeviceArray=jax.Array)
    applied = True
  # Set as plain attributes: also silences jax's per-call DeprecationWarning for tree_map & co.
  for name, fn in (("tree_map", jtu.tree_map), ("tree_flatten", jtu.tree_flatten),
                   ("tree_unflatten", jtu.tree_unflatten), ("tree_leaves", jtu.tree_leaves),
                   ("tree_structure", jtu.tree_structure), ("tree_multimap", jtu.tree_map)):
    if jax.__dict__.get(name) is not fn:
      setattr(jax, name, fn)
      applied = True
  if applied:
    PATCHES.append("jax-aliases")


def _drop_reverb_signature_timeout() -> None:
  import reverb  # pylint: disable=import-outside-toplevel
  original = reverb.Client.trajectory_writer
  if "get_signature_timeout_ms" in inspect.signature(original).parameters:
    return

  def trajectory_writer(self, num_keep_alive_refs, *, get_signature_timeout_ms=None, **kwargs):
    del get_signature_timeout_ms  # Removed in reverb 0.14; acme 0.4.0 still passes it.
    return original(self, num_keep_alive_refs, **kwargs)

  trajectory_writer._relay_original = original  # not __wrapped__: inspect.signature would follow it
  reverb.Client.trajectory_writer = trajectory_writer
  PATCHES.append("reverb-trajectory-writer")


def install() -> None:
  """Applies all patches (idempotent), and drops the import-time notices of old gym (imported by
  `acme.wrappers`) and gymnasium-robotics before acme can import them (see relay_data.quiet)."""
  quiet.drop_import_notices()
  _stub_launchpad()
  _alias_removed_jax_names()
  _drop_reverb_signature_timeout()


install()
