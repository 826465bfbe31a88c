"""Libraries never depend on the command-line package `relay` (it depends on them)."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARIES = ("relay_data", "pipelines", "datasets", "relay_agents")


def _imports(path):
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module


def test_no_library_module_imports_the_cli_package():
  offenders, checked = [], 0
  for package in LIBRARIES:
    for root, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          checked += 1
          offenders += [f"{os.path.relpath(path, REPO)} imports {m}" for m in _imports(path)
                        if m == "relay" or m.startswith("relay.")]
  assert checked > 30 and not offenders, offenders


def test_version_and_process_defaults_have_a_library_home():
  import relay
  from relay_data import process_env, version
  assert relay.__version__ == version.__version__
  assert dict(process_env.DEFAULTS)["JAX_PLATFORMS"] == "cpu"
