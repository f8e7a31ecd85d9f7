"""Touching nuclei (bundled DSB 2018 fluorescence images): what separates them?

Trains variants of the `nuclei` preset at the same budget on the 160 training images and
scores the fixed held-out 20% (data/splits/dsb2018-fluo-holdout.txt, never trained on,
never used for model selection: best.pt is the preset's, now the last epoch) with the instance
metrics of `biounet evaluate --instances`: AP@0.5 (DSB convention TP / (TP + FP + FN)),
DSB 2018 score (mean over IoU thresholds 0.5..0.95), SEG, merges, splits. Each variant is
scored without and with 8-fold test-time averaging.

    .venv/bin/python benchmarks/nuclei.py [--variants nuclei,binary-w10,binary-w0,...]
        [--epochs N] [--out runs/nuclei]

Variants (everything else as in the preset):
    nuclei         contour target (background / interior / boundary), weight map w0 10
    contour-plain  contour target, unweighted cross entropy
    contour-w2     contour target with a 2-pixel boundary class per object
    contour-w0-25  contour target, border term w0 25 instead of 10
    contour-touch3 contour target, boundary class 3 pixels deep within 3 px of another object
    contour-bal-dataset  contour target, w_c from the training set's class frequencies
                   instead of each image's (background weighs the same in every image)
    contour-bal-none     contour target, no class balance (w_c = 1, the border term alone)
    contour-sigma3 contour target, border term width sigma 3 px instead of 5
    contour-zoom   contour target, random zoom x0.8-1.25 added to the augmentation
    contour-dice   contour target, soft Dice loss of the foreground (weight 1) added
    contour-dice-touch3  Dice (as contour-dice) and touch_width 3 (as contour-touch3)
    contour-dice-w0-25   Dice, and border term w0 25
    contour-lr4-touch3   learning rate 0.004 (preset 0.002) and touch_width 3
    binary-w10     the paper: binary target with carved borders, weight map w0 10
    binary-w0      binary target, class balance only (w0 0): what the border term is worth

Resumable: a variant whose run directory holds last.pt continues from it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from biounet import get_preset, instances, model_from_checkpoint, predict, train
from biounet.dataset import parse_slices
from biounet.device import select_device
from biounet.io import atomic_path, read_images, read_instances, resolve_data_path
from biounet.metrics import instance_scores_many

VARIANTS = {
    "nuclei": {},
    "contour-plain": {"weight_map": False},
    "contour-w2": {"boundary_width": 2},
    "contour-touch3": {"touch_width": 3},
    "contour-w0-25": {"w0": 25.0},
    "contour-bal-dataset": {"class_balance": "dataset"},
    "contour-bal-none": {"class_balance": "none"},
    "contour-sigma3": {"sigma": 3.0},
    "contour-zoom": {"augment": {"scale": True, "scale_range": 0.25}},
    "contour-dice": {"dice": 1.0},
    "contour-dice-touch3": {"dice": 1.0, "touch_width": 3},
    "contour-dice-w0-25": {"dice": 1.0, "w0": 25.0},
    "contour-lr4-touch3": {"lr": 4e-3, "touch_width": 3},
    # the preset's foreground threshold (0.6) was tuned on a contour model: binary rows keep 0.5
    "binary-w10": {"target": "binary", "foreground_threshold": 0.5},
    "binary-w0": {"target": "binary", "w0": 0.0, "foreground_threshold": 0.5},
}
KEYS = ("ap50", "dsb_score", "f1", "seg", "merges", "splits")


def variant(name: str):
    p = get_preset("nuclei")
    changes = VARIANTS[name]
    model = replace(p.model, out_channels=2) if changes.get("target") == "binary" else p.model
    changes = {"time_limit": 0.0, **changes}  # equal steps for every row: no time limit
    if "augment" in changes:
        changes["augment"] = replace(p.train.augment, **changes["augment"])
    return replace(p, name=f"nuclei-{name}", model=model, train=replace(p.train, **changes))


def held_out(preset):
    cfg = preset.train
    images = read_images(resolve_data_path(cfg.images))
    labels = read_instances(resolve_data_path(cfg.labels))
    idx = parse_slices(cfg.val_slices, len(images), "held-out", images.names)
    order = {n: i for i, n in enumerate(labels.names)}
    return [images.arrays[i] for i in idx], [labels.arrays[order[images.names[i]]] for i in idx]


def score(checkpoint: Path, images, labels, tta: bool) -> dict:
    model, preset = model_from_checkpoint(checkpoint, select_device("auto"))
    t0 = time.perf_counter()
    probs = [predict(model, img, tta=tta) for img in images]
    t1 = time.perf_counter()
    preds = [instances(p, **preset.train.instance_options()) for p in probs]
    t2 = time.perf_counter()
    r = instance_scores_many(labels, preds)
    return {**{k: r[k] for k in KEYS}, "predict_s": round(t1 - t0, 1),
            "instances_ms_per_image": round(1000 * (t2 - t1) / len(images), 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default="runs/nuclei")
    args = ap.parse_args()
    rows = []
    images = labels = None
    for name in args.variants.split(","):
        preset = variant(name)
        run = Path(args.out) / name
        t0 = time.perf_counter()
        if (run / "last.pt").exists():
            result = train(None, run, resume=True, epochs=args.epochs, progress=False)
        else:
            result = train(preset, run, epochs=args.epochs, progress=False)
        if images is None:
            images, labels = held_out(preset)
        for tta in (False, True):
            row = {"variant": name, "tta": tta, "train_min": round(result["total_seconds"] / 60, 1),
                   **score(run / "best.pt", images, labels, tta)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(f"({name}: {time.perf_counter() - t0:.0f} s this call)", flush=True)
    with atomic_path(Path(args.out) / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    print("\n| variant | TTA | training | AP@0.5 | DSB score | F1@0.5 | SEG | merges | splits |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {'8x' if r['tta'] else 'no'} | {r['train_min']} min | "
              f"{r['ap50']:.3f} | {r['dsb_score']:.3f} | {r['f1']:.3f} | {r['seg']:.3f} | "
              f"{r['merges']} | {r['splits']} |")  # fmt: skip


if __name__ == "__main__":
    main()
