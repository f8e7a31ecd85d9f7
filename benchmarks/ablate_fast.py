"""Which of the paper's data ideas help the `fast` preset? Trains variants of it on slices
0-24 of ISBI 2012 and scores slices 25-29 (pixel error, and the adapted Rand error of
4-connected cell components at threshold 0.5 as a quick topology proxy until the official
ISBI metrics land). Variants share seed, budget and everything else.

    .venv/bin/python benchmarks/ablate_fast.py [--variants base,aug,weights,aug+weights]
        [--epochs 30] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error

from biounet import predict, train
from biounet.io import find_data, read_images, read_masks
from biounet.presets import PRESETS

PAPER_AUG = PRESETS["paper"].train.augment


def variant(name: str):
    p = PRESETS["fast"]
    aug = replace(p.train.augment, **{k: getattr(PAPER_AUG, k) for k in (
        "rotate", "shift", "elastic", "gray")}) if "aug" in name else p.train.augment  # fmt: skip
    return replace(p, name=f"fast-{name}", train=replace(
        p.train, augment=aug, weight_map="weights" in name))  # fmt: skip


def score(checkpoint: Path) -> dict:
    root = find_data("isbi2012")
    images = read_images(root / "train-volume.tif").arrays[25:30]
    labels = read_masks(root / "train-labels.tif").arrays[25:30]
    pix, are = [], []
    four = ndimage.generate_binary_structure(2, 1)
    for img, lab in zip(images, labels, strict=True):
        prob = predict(checkpoint, img)
        pix.append(np.mean((prob > 0.5) != (lab == 1)))
        seg = ndimage.label(prob > 0.5, structure=four)[0]
        gt = ndimage.label(lab == 1, structure=four)[0]
        are.append(adapted_rand_error(gt, seg)[0])
    return {"pixel_error": float(np.mean(pix)), "adapted_rand_error": float(np.mean(are))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="base,aug,weights,aug+weights")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default="runs/ablation")
    args = ap.parse_args()
    rows = []
    for name in args.variants.split(","):
        out = Path(args.out) / name
        preset = variant(name)
        if not (out / "last.pt").exists():
            train(preset, out, epochs=args.epochs, progress=False)
        else:
            train(None, out, resume=True, epochs=args.epochs, progress=False)
        row = {"variant": name, **score(out / "best.pt")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| variant | pixel error | adapted Rand error |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['pixel_error']:.4f} | {r['adapted_rand_error']:.4f} |")


if __name__ == "__main__":
    main()
