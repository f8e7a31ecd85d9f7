#!/usr/bin/env bash
# Inference speed on one 2048 x 2048 nuclei image: the model of every DSB cell run.sh left
# in RUNS/dsb-PEER-MINUTES/work, each peer's own test-time augmentation on and off, one
# process at a time; prints each against biounet's model measured in the same run.
#
#   benchmarks/peers/speed.sh RUNS MINUTES     # e.g. runs/peers 15
#
# Environment: THREADS (default 2), PEERS (default "biounet stardist cellpose nnunet").
# Writes RUNS/speed-MINUTES/{mosaic-2048.tif, PEER-tta|notta.json, table.txt}.
# nnU-Net gives probabilities; their instances (biounet's seeded watershed, run in biounet's
# venv by nnunet_biounet.py) are timed apart and added to its seconds.
set -euo pipefail
RUNS=$(realpath "${1:?usage: speed.sh RUNS MINUTES}"); MIN=${2:?minutes}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/benchmarks/peers
ENVS=${BIOUNET_PEERS_DIR:-$HOME/.cache/biounet-peers}
THREADS=${THREADS:-2}; PEERS=${PEERS:-biounet stardist cellpose nnunet}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TF_NUM_INTRAOP_THREADS=$THREADS \
       TF_NUM_INTEROP_THREADS=$THREADS
OUT=$RUNS/speed-$MIN; mkdir -p "$OUT"
IMAGE=$OUT/mosaic-2048.tif
[ -f "$IMAGE" ] || "$REPO/.venv/bin/python" "$HERE/speed.py" image "$IMAGE" --size 2048

for peer in $PEERS; do
  WORK=$RUNS/dsb-$peer-$MIN/work
  [ -d "$WORK" ] || { echo "speed.sh: no $WORK (run.sh dsb $peer $MIN first)" >&2; exit 2; }
  PY=$([ "$peer" = biounet ] && echo "$REPO/.venv/bin/python" || echo "$ENVS/$peer/bin/python")
  for tta in tta notta; do
    FLAG=$([ $tta = tta ] && echo --tta || echo --no-tta)
    EXTRA=()
    if [ "$peer" = nnunet ]; then
      rm -rf "$OUT/nnunet-probs" "$OUT/nnunet-pred"; mkdir -p "$OUT/nnunet-probs"
      EXTRA=(--probs "$OUT/nnunet-probs/mosaic.npz")
    fi
    "$PY" "$HERE/speed.py" time "$peer" "$WORK" "$IMAGE" $FLAG --threads "$THREADS" \
        "${EXTRA[@]}" 2> "$OUT/$peer-$tta.log" | tail -1 > "$OUT/$peer-$tta.json"
    if [ "$peer" = nnunet ]; then
      "$REPO/.venv/bin/python" "$HERE/nnunet_biounet.py" instances "$OUT/nnunet-probs" \
          "$OUT/nnunet-pred" | tail -1 > "$OUT/nnunet-$tta-instances.txt"
    fi
    cat "$OUT/$peer-$tta.json"
  done
done

"$REPO/.venv/bin/python" - "$OUT" $PEERS <<'EOF' | tee "$OUT/table.txt"
import json, re, sys
from pathlib import Path
out, peers = Path(sys.argv[1]), sys.argv[2:]
print(f"| peer | TTA | seconds | Mpx/s | against biounet | peak RSS MiB | objects |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for tta in ("tta", "notta"):
    base = None
    for peer in peers:
        r = json.loads((out / f"{peer}-{tta}.json").read_text())
        s = r["seconds"]
        extra = out / f"nnunet-{tta}-instances.txt"
        if peer == "nnunet" and extra.exists():
            s += float(re.search(r"in ([0-9.]+) s", extra.read_text()).group(1))
        w, h = map(int, r["image"].split(" x "))
        mpx = w * h / 1e6 / s
        base = base or (mpx if peer == "biounet" else None)
        ratio = f"{mpx / base:.2f}x" if base else "-"
        print(f"| {peer} | {'on' if tta == 'tta' else 'off'} | {s:.1f} | {mpx:.3f} | {ratio} | "
              f"{r['peak_rss_mib']} | {r['objects'] if r['objects'] is not None else '-'} |")
EOF
