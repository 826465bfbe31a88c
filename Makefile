# Set-up and entry points. Each target creates .venv and installs the pinned stack on first use only.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.relay-installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export TF_CPP_MIN_LOG_LEVEL ?= 2
export JAX_PLATFORMS ?= cpu

DEMO_DIR ?= demo_out
# Test processes (pytest-xdist); files are the unit of distribution, so a file's module-scoped
# fixtures (trained tiny models, relabeled sets) are built once. TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): requirements/pins.txt setup.cfg pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/relay demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 tests

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
