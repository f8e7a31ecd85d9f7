"""Score a checkpoint on ISBI 2012 training slices it never trained on, with and without
8-fold test-time averaging, using the official metrics (as `biounet evaluate`).

    .venv/bin/python experiments/score_isbi.py CHECKPOINT [--slices 25-29] [--json OUT]

Prints one JSON row per setting (tta false / true): V_rand, V_info (thinned, maximal over
thresholds), pixel error, Rand error, warping error; --json also writes them to a file.
Runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from biounet import model_from_checkpoint, predict
from biounet.dataset import parse_slices
from biounet.device import select_device
from biounet.errors import InputError
from biounet.io import find_data, read_images, read_masks, write_text
from biounet.metrics import isbi_scores

KEYS = ("v_rand", "v_info", "pixel_error", "rand_error", "warping_error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--slices", default="25-29")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    args = ap.parse_args()
    root = find_data("isbi2012")
    images = read_images(root / "train-volume.tif").arrays
    labels = read_masks(root / "train-labels.tif").arrays
    idx = parse_slices(args.slices, len(images), "slices")
    model, preset = model_from_checkpoint(args.checkpoint, select_device("auto"))
    rows = []
    for tta in (False, True):
        probs = [predict(model, images[i], tta=tta) for i in idx]
        scores = isbi_scores(probs, [labels[i] for i in idx], metrics=KEYS)
        row = {"checkpoint": str(args.checkpoint), "preset": preset.name, "slices": args.slices}
        rows.append({**row, "tta": tta, **{k: scores[k] for k in KEYS}})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except InputError as e:  # a missing or unreadable checkpoint or data file: one line
        print(f"{Path(__file__).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
