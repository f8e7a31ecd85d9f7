#!/usr/bin/env bash
# The GPU sweep behind the README's H100 rows: the runs of ${JOBS:-benchmarks/device_jobs.txt} side
# by side on one GPU, then their logs, scores and the shipped model's export packed into
# $OUT (results.tgz, isbi2012.pt.part-*). Run from the repository root:
#     OUT=DIR bash benchmarks/device_run.sh [DEADLINE_SECONDS] [PARALLEL]
# QUICK=1 shrinks every run to a few steps (a check of the sweep itself, CPU is enough).
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PY=${PY:-python3}
if [ "${QUICK:-0}" = 1 ]; then export Q="--epochs 1 --steps-per-epoch 2" QE="--epochs 1"
else export Q="" QE=""; fi
mkdir -p runs "$OUT"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY benchmarks/run_parallel.py ${JOBS:-benchmarks/device_jobs.txt} --jobs "${2:-10}" \
    --deadline "${1:-480}" --logs runs/logs | tee runs/parallel.log
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='*.npy' --exclude='*.npz' \
    --exclude='val.png' runs
if [ -f runs/isbi2012/isbi2012.pt ]; then
  split -b 15m runs/isbi2012/isbi2012.pt "$OUT/isbi2012.pt.part-"
  sha256sum runs/isbi2012/isbi2012.pt
fi
ls -la "$OUT"
