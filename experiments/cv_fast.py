"""Six-fold cross-validation of a preset on the 30 ISBI 2012 training slices.

Fold k holds out slices 5k..5k+4 and trains on the other 25, exactly like the main job
(which is fold 5). The held-out slices are watched during training but never select the
model (the preset's ``select_by`` must be ``train_loss``); after training, ``best.pt``
predicts them and they are scored with the official ISBI 2012 metrics. Prints one row per
fold and the mean +- sample standard deviation; the mean is the number to quote.

    .venv/bin/python experiments/cv_fast.py [--preset fast] [--tta] [--out runs/cv]
        [--folds 0,1,2,3,4,5] [--epochs N] [--time-limit MIN]

Every fold trains the same steps: the preset's time limit is lifted unless --time-limit
gives one (then each fold plans its own length, as the main job does).

Resumable: a fold whose run directory holds last.pt continues from it, a finished fold is
only scored again. About 10 minutes per fold for `fast` on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from biounet import get_preset, predict, train
from biounet.device import select_device
from biounet.io import atomic_path, find_data, read_images, read_masks
from biounet.metrics import isbi_scores

FOLDS = [(5 * k, 5 * k + 4) for k in range(6)]
COLUMNS = ("v_rand", "v_info", "pixel_error", "rand_error", "warping_error")


def run_fold(preset, k: int, out: Path, epochs: int | None, tta: bool) -> dict:
    lo, hi = FOLDS[k]
    run = out / f"fold{k}"
    t0 = time.perf_counter()
    if (run / "last.pt").exists():
        train(None, run, resume=True, epochs=epochs, progress=False)
    else:
        train(preset.with_train(val_slices=f"{lo}-{hi}"), run, epochs=epochs, progress=False)
    minutes = (time.perf_counter() - t0) / 60
    root = find_data("isbi2012")
    images = read_images(root / "train-volume.tif").arrays[lo : hi + 1]
    labels = read_masks(root / "train-labels.tif").arrays[lo : hi + 1]
    probs = [predict(run / "best.pt", img, tta=tta, device=select_device("auto")) for img in images]
    scores = isbi_scores(probs, labels, metrics=COLUMNS)
    return {"fold": k, "held_out": f"{lo}-{hi}", "train_minutes_this_call": round(minutes, 1),
            **{c: scores[c] for c in COLUMNS}}  # fmt: skip


def table(rows: list[dict]) -> str:
    head = "| held-out slices | V_rand | V_info | pixel error | Rand error | warping error |"
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['held_out']} | " + " | ".join(f"{r[c]:.4f}" for c in COLUMNS) + " |")
    if len(rows) > 1:
        cells = []
        for c in COLUMNS:
            v = np.array([r[c] for r in rows])
            cells.append(f"{v.mean():.4f} +- {v.std(ddof=1):.4f}")
        lines.append("| **mean +- std** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--folds", default="0,1,2,3,4,5")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--time-limit", type=float, default=0.0, help="minutes (default: none)")
    ap.add_argument("--tta", action="store_true", help="score with 8-fold test-time averaging")
    ap.add_argument("--out", default="runs/cv")
    args = ap.parse_args()
    preset = get_preset(args.preset).with_train(time_limit=args.time_limit)
    if preset.train.select_by != "train_loss":
        raise SystemExit(
            f"{args.preset}: select_by is {preset.train.select_by}; cross-validation needs "
            "train_loss (held-out slices never pick the model)"
        )
    out = Path(args.out) / args.preset
    rows = []
    for k in (int(f) for f in args.folds.split(",")):
        rows.append(run_fold(preset, k, out, args.epochs, args.tta))
        print(json.dumps(rows[-1]), flush=True)
    with atomic_path(out / f"results{'-tta' if args.tta else ''}.json") as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    print(f"\n{args.preset} preset, {'with' if args.tta else 'without'} TTA:\n")
    print(table(rows))


if __name__ == "__main__":
    main()
