#!/usr/bin/env bash
# One cell of the peer table: train PEER on TASK for BUDGET minutes, predict the
# held-out images, score them with biounet's own evaluate.
#
#   benchmarks/peers/run.sh dsb|isbi stardist|cellpose|nnunet|biounet[-PRESET] MINUTES
#
# Splits: dsb = data/dsb2018-fluo, the 40 ids of data/splits/dsb2018-fluo-holdout.txt held
# out, the other 160 trained on; isbi = data/isbi2012 train-volume slices 0-24 trained on,
# 25-29 held out (benchmarks/peers/split.py). A peer runs from its own venv
# (benchmarks/peers/setup.sh NAME first; ${BIOUNET_PEERS_DIR:-~/.cache/biounet-peers}).
# biounet runs `biounet train --preset P --time-limit MINUTES` (P: nuclei for dsb, fast for
# isbi, or biounet-isbi / biounet-fast / biounet-nuclei) and `biounet predict`.
#
# Environment: OUT (default runs/peers/TASK-PEER-MINUTES), THREADS (default 2: the whole
# machine), TTA (1 default: each peer's own test-time augmentation; 0: off), SEED (0),
# BIOUNET_ARGS (extra `biounet train` flags), PEER_ARGS (extra driver flags, e.g. nnunet
# `--iterations 50`, cellpose `--nimg-per-epoch 16`), BIOUNET_PEERS_SMOKE=N (plumbing check: N
# training and N/2 held-out images, few steps per epoch).
# OUT holds data/ (the split), pred/ (predictions as biounet reads them), work/ (the peer's
# own files), train_log.json, scores.txt and scores.json (biounet evaluate), times.txt.
set -euo pipefail
TASK=${1:?usage: run.sh dsb|isbi PEER MINUTES}; PEER=${2:?peer}; BUDGET=${3:?minutes}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/benchmarks/peers
OUT=$(realpath -m "${OUT:-$REPO/runs/peers/$TASK-$PEER-$BUDGET}")
THREADS=${THREADS:-2}; TTA=${TTA:-1}; SEED=${SEED:-0}; SMOKE=${BIOUNET_PEERS_SMOKE:-0}
ENVS=${BIOUNET_PEERS_DIR:-$HOME/.cache/biounet-peers}
BIOUNET=$REPO/.venv/bin/biounet
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TF_NUM_INTRAOP_THREADS=$THREADS \
       TF_NUM_INTEROP_THREADS=$THREADS
case $TASK in dsb|isbi) ;; *) echo "run.sh: TASK is dsb or isbi, got '$TASK'" >&2; exit 2;; esac

mkdir -p "$OUT"
"$REPO/.venv/bin/python" "$HERE/split.py" "$TASK" "$OUT/data" \
    $([ "$SMOKE" != 0 ] && echo "--smoke $SMOKE")
D=$OUT/data
rm -rf "$OUT/pred" "$OUT/work" "$OUT/train_log.json"; mkdir -p "$OUT/pred"  # a fresh run
TTAFLAG=$([ "$TTA" = 1 ] && echo --tta || echo --no-tta)
start=$(date +%s)

case $PEER in
  biounet|biounet-*)
    PRESET=${PEER#biounet}; PRESET=${PRESET#-}
    [ -n "$PRESET" ] || PRESET=$([ "$TASK" = dsb ] && echo nuclei || echo fast)
    TARGET=$([ "$TASK" = dsb ] && echo "--target contour" || echo "--target mask")
    EXTRA=${BIOUNET_ARGS:-}
    [ "$SMOKE" = 0 ] || EXTRA="$EXTRA --steps-per-epoch 3"
    # the split's folders, no validation images (none is used for selection either way)
    "$BIOUNET" train --preset "$PRESET" --images "$D/train-images" --labels "$D/train-labels" \
        $TARGET --val-slices none --time-limit "$BUDGET" --seed "$SEED" --no-progress \
        --out "$OUT/work" $EXTRA 2>&1 | tee "$OUT/train.txt"
    MODEL=$OUT/work/best.pt; [ -f "$MODEL" ] || MODEL=$OUT/work/last.pt
    "$BIOUNET" predict "$MODEL" "$D/test-images" --out "$OUT/pred" $TTAFLAG --no-progress \
        $([ "$TASK" = dsb ] && echo --instances)
    if [ "$TASK" = dsb ]; then  # keep only what is scored: NAME-instances.tif
      find "$OUT/pred" -type f ! -name '*-instances.tif' -delete; fi
    ;;
  stardist|cellpose|nnunet)
    PY=$ENVS/$PEER/bin/python
    [ -x "$PY" ] || { echo "run.sh: no $PEER venv; run benchmarks/peers/setup.sh $PEER" >&2; exit 2; }
    CLASSES=()
    if [ "$PEER" = nnunet ] && [ "$TASK" = dsb ]; then  # biounet's contour target as classes
      "$REPO/.venv/bin/python" "$HERE/nnunet_biounet.py" targets "$D/train-labels" "$D/train-classes"
      CLASSES=(--class-labels "$D/train-classes")
    fi
    "$PY" "$HERE/${PEER}_driver.py" --task "$TASK" --train-images "$D/train-images" \
        --train-labels "$D/train-labels" --test-images "$D/test-images" --out "$OUT" \
        --minutes "$BUDGET" --threads "$THREADS" --seed "$SEED" $TTAFLAG "${CLASSES[@]}" ${PEER_ARGS:-} \
        $([ "$SMOKE" != 0 ] && echo --smoke) 2>&1 | tee "$OUT/train.txt"
    if [ "$PEER" = nnunet ] && [ "$TASK" = dsb ]; then
      # nnU-Net's 3-class probabilities -> instances by biounet's contour post-processing
      "$REPO/.venv/bin/python" "$HERE/nnunet_biounet.py" instances "$OUT/work/probabilities" "$OUT/pred"
    fi
    ;;
  *) echo "run.sh: unknown peer '$PEER'" >&2; exit 2;;
esac
end=$(date +%s)

GT=$D/test-labels
if [ "$TASK" = dsb ]; then
  "$BIOUNET" evaluate "$OUT/pred" "$GT" --instances | tee "$OUT/scores.txt"
  "$BIOUNET" evaluate "$OUT/pred" "$GT" --instances --json > "$OUT/scores.json"
else
  "$BIOUNET" evaluate "$OUT/pred" "$GT" | tee "$OUT/scores.txt"
  "$BIOUNET" evaluate "$OUT/pred" "$GT" --json > "$OUT/scores.json"
fi
printf 'task %s peer %s budget %s min threads %s tta %s seed %s smoke %s\ntotal %s s (train+predict), host %s, %s\n' \
  "$TASK" "$PEER" "$BUDGET" "$THREADS" "$TTA" "$SEED" "$SMOKE" "$((end - start))" \
  "$(hostname)" "$(date -Is)" | tee "$OUT/times.txt"
