#!/usr/bin/env bash
# Create the virtual environment of one peer for the side-by-side comparison.
#
#   benchmarks/peers/setup.sh stardist|cellpose|nnunet
#
# Each peer gets its own venv OUTSIDE the work tree, at
# ${BIOUNET_PEERS_DIR:-$HOME/.cache/biounet-peers}/NAME, so TensorFlow and the peers' pins
# never touch biounet's .venv; nothing of this is a biounet dependency. The drivers
# exchange data with biounet through plain files (PNG / TIFF), so biounet itself is not
# installed in them. Idempotent: a venv whose pinned versions are installed and import is
# left as it is (FORCE=1 reinstalls). The torch peers get torch==2.13.0 (this machine's
# CPU wheel) first and as a constraint, so their plain `torch` requirement never pulls a
# multi-GB CUDA build.
#
# Pins: stardist 0.9.2 + csbdeep 0.8.2 on tensorflow-cpu 2.21.0; cellpose
# ${CELLPOSE_VERSION:-3.1.1.2} (cellpose 4's SAM network is too slow to train on 2 CPU
# cores: README.md); nnunetv2 2.8.1. Prints what it installed, the venv's size and
# writes NAME/freeze.txt.
set -euo pipefail
NAME=${1:?usage: setup.sh stardist|cellpose|nnunet}
ROOT=${BIOUNET_PEERS_DIR:-$HOME/.cache/biounet-peers}
VENV=$ROOT/$NAME
PY=${PYTHON:-python3}
EXTRA="tifffile imageio"  # the drivers' file readers

case $NAME in
  stardist) TORCH=""; PINS="tensorflow-cpu==2.21.0 stardist==0.9.2 csbdeep==0.8.2"
            IMPORTS="tensorflow, stardist, csbdeep";;
  cellpose) TORCH="torch==2.13.0"; PINS="cellpose==${CELLPOSE_VERSION:-3.1.1.2}"
            IMPORTS="torch, cellpose.models";;
  nnunet)   TORCH="torch==2.13.0"; PINS="nnunetv2==2.8.1"
            IMPORTS="torch, nnunetv2";;
  *) echo "setup.sh: unknown peer '$NAME' (stardist, cellpose or nnunet)" >&2; exit 2;;
esac
# the pinned versions installed, and the packages import
CHECK="import importlib.metadata as m
for pin in '$TORCH $PINS'.split():
    name, v = pin.split('==')
    assert m.version(name).split('+')[0] == v, f'{name} {m.version(name)}, not {v}'
import $IMPORTS"

mkdir -p "$ROOT"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
pipq() { $PIP "$@" 2> >(grep -v "Location 'file:" >&2); }  # this machine's empty local indexes
if [ -n "${FORCE:-}" ] || ! "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  start=$(date +%s)
  pipq install -q --upgrade pip
  echo "$TORCH" > "$VENV/constraints.txt"  # empty for stardist
  [ -z "$TORCH" ] || pipq install -q "$TORCH"
  pipq install -q -c "$VENV/constraints.txt" $PINS $EXTRA
  echo "installed in $(( $(date +%s) - start )) s"
  "$VENV/bin/python" -c "$CHECK" 2>/dev/null || { echo "setup.sh: $NAME does not import:" >&2
                                                  "$VENV/bin/python" -c "$CHECK"; }
fi
$PIP freeze > "$VENV/freeze.txt"
echo "$NAME venv: $VENV ($(du -sh "$VENV" | cut -f1))"
grep -iE '^(torch|tensorflow[-_]cpu|keras|stardist|csbdeep|cellpose|nnunetv2|numpy|tifffile|imageio|dynamic[-_]network[-_]architectures|batchgenerators.*)==' \
  "$VENV/freeze.txt"
