"""The code version, recorded in every dataset lineage and model (one home, no CLI import)."""
import os
import subprocess

__version__ = "0.1.0"


def code_version() -> str:
  """`relay <version> (<git commit>)` when run from a checkout, else `relay <version>`."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    return f"relay {__version__} ({commit})" if commit else f"relay {__version__}"
  except (OSError, subprocess.SubprocessError):
    return f"relay {__version__}"
