"""Process-wide environment defaults, applied before TensorFlow, JAX or MuJoCo are imported.

Headless EGL rendering, quiet TF C++ logs, and JAX on CPU (this project is CPU only). Entry
points (the `relay` CLI, tests, benchmarks) call `apply_defaults()` first; a library module does
not, so importing it never changes the caller's process. Values already set are kept.
"""
import os

DEFAULTS = (("MUJOCO_GL", "egl"), ("TF_CPP_MIN_LOG_LEVEL", "2"), ("JAX_PLATFORMS", "cpu"))


def apply_defaults() -> None:
  for key, value in DEFAULTS:
    os.environ.setdefault(key, value)
  os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
