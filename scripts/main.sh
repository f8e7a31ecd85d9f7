#!/usr/bin/env bash
# The main job: train the fast default preset on the bundled ISBI 2012 stacks (slices 0-24),
# predict the held-out slices 25-29, score them (ISBI 2012 metrics) and write plots to runs/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/main}
if [ -f "$OUT/last.pt" ]; then
  .venv/bin/biounet train --resume "$OUT" "$@"   # finish (or re-report) an earlier run
else
  .venv/bin/biounet train --out "$OUT" --val-slices 25-29 "$@"   # slices 25-29 held out
fi
.venv/bin/biounet predict "$OUT/best.pt" data/isbi2012/train-volume.tif --slices 25-29 \
  --tta --out "$OUT/pred-25-29.tif"
.venv/bin/biounet evaluate "$OUT/pred-25-29.tif" data/isbi2012/train-labels.tif --slices 25-29
