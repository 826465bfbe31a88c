"""relay: Relay Policy Learning (Gupta et al., CoRL 2019) as RLDS + Beam + Reverb + Acme software.

This package holds the command line (`relay ...`) and the stack doctor. The library lives in
`relay_data` (RLDS schema, IO, converters, relabeling math), `pipelines` (Beam), `datasets`
(TFDS builders) and `relay_agents` (Acme agents).
"""
import os

__version__ = "0.1.0"

# Process-wide defaults that must be set before TensorFlow, JAX or MuJoCo are imported:
# headless EGL rendering, quiet TF C++ logs, and JAX on CPU (this project is CPU only).
for _key, _value in (("MUJOCO_GL", "egl"), ("TF_CPP_MIN_LOG_LEVEL", "2"), ("JAX_PLATFORMS", "cpu")):
  os.environ.setdefault(_key, _value)
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
