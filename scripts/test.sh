#!/usr/bin/env bash
# The test suite, after the same idempotent set-up (with the test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m pytest -q "$@"
