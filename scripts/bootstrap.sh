#!/usr/bin/env bash
# Create the project venv (if missing) and install the pinned stack from requirements/pins.txt.
# Called by the Makefile only when requirements/pins.txt, setup.cfg or pyproject.toml changed
# (a stamp file in the venv records the last successful install), so a second `make` reinstalls nothing.
set -euo pipefail
VENV=${1:-.venv}
PINS=requirements/pins.txt

find_python() {
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$cand"; return 0
    fi
  done
  echo "relay needs Python 3.11 (none of python3.11/python3/python is 3.11)" >&2
  return 1
}

# Headless MuJoCo rendering uses EGL (Mesa). Install the Debian libs when missing and we are root.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing EGL/Mesa libraries for offscreen rendering"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgles2 libgl1 >/dev/null
  else
    echo "[bootstrap] warning: libEGL not found and not root; offscreen rendering may fail" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python)
  echo "[bootstrap] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
grep -v -- '# no-deps' "$PINS" > "$tmp"
echo "[bootstrap] installing pinned dependencies (first time: a few minutes)"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$tmp"
# Packages whose declared dependencies cannot be installed on py3.11 (see the pin file's header).
grep -- '# no-deps' "$PINS" | sed 's/#.*//' | xargs "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "[bootstrap] done"
