#!/usr/bin/env bash
# Idempotent set-up: a local virtual environment (.venv) with the CPU build of PyTorch and
# biounet installed in editable mode. Re-running it does nothing when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.biounet-installed
want="$(sha256sum pyproject.toml | cut -c1-16)-${1:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # the CPU wheel first, so that the package's torch>=2.4 needs nothing more
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".${1:+[$1]}"
  echo "$want" > "$stamp"
fi
