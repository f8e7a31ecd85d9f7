#!/usr/bin/env bash
# The import layering check and the test suite, after the same idempotent set-up (with
# the test extras). Qt through PyQt6. Where an X server can be had (xvfb-run, and the
# libraries Qt's xcb platform needs: .ci/run installs them), the napari viewer tests draw
# into one; elsewhere Qt runs offscreen and those tests are skipped (failed where
# BIOUNET_REQUIRE_VIEWER=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/lint-imports  # the layers contract in pyproject.toml: imports go downward only
export QT_API=pyqt6
qt_probe="from PyQt6.QtWidgets import QApplication; QApplication([])"
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run > /dev/null 2>&1 \
    && QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python -c "$qt_probe" > /dev/null 2>&1; then
  exec xvfb-run -a env QT_QPA_PLATFORM=xcb .venv/bin/python -m pytest -q "$@"
fi
.venv/bin/python -m pytest -q "$@"
