"""Touching nuclei (bundled DSB 2018 fluorescence images): what separates them?

Trains variants of the `nuclei` preset at the same budget on the 160 training images and
scores the fixed held-out 20% (data/splits/dsb2018-fluo-holdout.txt, never trained on,
never used for model selection: best.pt is the preset's, now the last epoch) with the instance
metrics of `biounet evaluate --instances`: AP@0.5 (DSB convention TP / (TP + FP + FN)),
DSB 2018 score (mean over IoU thresholds 0.5..0.95), SEG, merges, splits. Each variant is
scored without and with 8-fold test-time averaging.

    .venv/bin/python experiments/nuclei.py [--variants nuclei,binary-w10,binary-w0,...]
        [--epochs N] [--seed N] [--validation] [--screen] [--out runs/nuclei]

--validation trains on 128 of the 160 training images (data/splits/dsb2018-fluo-train128.txt)
and scores the other 32 (dsb2018-fluo-validation.txt) instead of the held-out images: the
way to choose between variants without looking at the held-out 20%. --screen also scores
each model at 12 post-processing settings (seed threshold 0.5 / 0.6, foreground 0.5 / 0.6 /
0.7, with and without the seed split) and 6 more at the model's own seed threshold where
that is neither (0.7 for the preset), so that a
setting chosen on validation images can be read off the held-out rows of the same variant.
"With the split" is the model's own split, or solidity 0.9 at 4-px peaks (`SPLIT`) for a
model that stores none.

Variants (everything else as in the preset as it is now; all but the Dice ones without its Dice
loss, as their docs rows were measured before the preset had it):
    nuclei         the preset: contour target (background / interior / boundary), weight map
                   w0 10, plus half a soft Dice loss of the foreground
    contour-nodice the preset without its Dice loss (the preset before it had one)
    contour-plain  unweighted cross entropy
    contour-w2     a 2-pixel boundary class per object
    contour-touch3 boundary class 3 pixels deep within 3 px of another object
    contour-w0-25  border term w0 25 instead of 10
    contour-bal-dataset  w_c from the training set's class frequencies instead of each
                   image's (background weighs the same in every image)
    contour-bal-none     no class balance (w_c = 1, the border term alone)
    contour-sigma3 border term width sigma 3 px instead of 5
    contour-zoom   random zoom x0.8-1.25 added to the augmentation
    contour-lr4    learning rate 0.004 (preset 0.002)
    contour-lr4-touch3   learning rate 0.004 and touch_width 3
    contour-ema    weights averaged over about the last 1000 steps (ema 0.999)
    contour-dice025 / contour-dice05 / contour-dice   Dice loss weight 0.25 / 0.5 (the
                   preset) / 1
    contour-dice-touch3  Dice weight 1 and touch_width 3
    contour-dice-w0-25   Dice weight 1 and border term w0 25
    contour-lr4-dice05   learning rate 0.004 and Dice weight 0.5
    contour-dice05-touch3  Dice weight 0.5 and touch_width 3
    contour-dice05-ema   Dice weight 0.5 and ema 0.999
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

# Each variant is the preset as it is now with the changes listed. The preset adds half a soft
# Dice loss; variants measured before it had one say dice 0.0, so that they still train
# what their docs rows measured.
VARIANTS = {
    "nuclei": {},
    "contour-nodice": {"dice": 0.0},
    "contour-plain": {"weight_map": False, "dice": 0.0},
    "contour-w2": {"boundary_width": 2, "dice": 0.0},
    "contour-touch3": {"touch_width": 3, "dice": 0.0},
    "contour-w0-25": {"w0": 25.0, "dice": 0.0},
    "contour-bal-dataset": {"class_balance": "dataset", "dice": 0.0},
    "contour-bal-none": {"class_balance": "none", "dice": 0.0},
    "contour-sigma3": {"sigma": 3.0, "dice": 0.0},
    "contour-zoom": {"augment": {"scale": True, "scale_range": 0.25}, "dice": 0.0},
    "contour-lr4": {"lr": 4e-3, "dice": 0.0},
    "contour-lr4-touch3": {"lr": 4e-3, "touch_width": 3, "dice": 0.0},
    "contour-ema": {"ema": 0.999, "dice": 0.0},
    "contour-dice025": {"dice": 0.25},
    "contour-dice05": {"dice": 0.5},
    "contour-dice": {"dice": 1.0},
    "contour-dice-touch3": {"dice": 1.0, "touch_width": 3},
    "contour-dice-w0-25": {"dice": 1.0, "w0": 25.0},
    "contour-lr4-dice05": {"lr": 4e-3, "dice": 0.5},
    "contour-dice05-touch3": {"dice": 0.5, "touch_width": 3},
    "contour-dice05-ema": {"dice": 0.5, "ema": 0.999},
    # more channels where they cost little (the low-resolution levels), for the
    # epochs that take the preset's time (fp32 on one Zen 3 core, beside another run: about
    # 65 and 92 s an epoch against the preset's 61.5; 121 and 124 minutes against its 125)
    "wide-bottom": {"model": {"channels": (16, 32, 64, 128, 512)}},
    "wide-deep": {"model": {"channels": (16, 32, 64, 256, 512)}, "epochs": 77},
    # the preset's foreground threshold (0.6) was tuned on a contour model: binary rows keep 0.5
    "binary-w10": {"target": "binary", "inference": {"threshold": 0.5}, "dice": 0.0},
    "binary-w0": {"target": "binary", "w0": 0.0, "inference": {"threshold": 0.5}, "dice": 0.0},
}
KEYS = ("ap50", "dsb_score", "f1", "seg", "merges", "splits")


SPLITS = "@data/splits/dsb2018-fluo-"
# post-processing settings of --screen: (seed threshold, foreground threshold, seed split)
SCREEN_SEEDS = (0.5, 0.6)
SCREEN_FOREGROUND = (0.5, 0.6, 0.7)
SPLIT = {"split_solidity": 0.9, "split_depth": 4.0}  # for models that store no split


def screen_settings(options: dict) -> list[tuple[float, float, bool]]:
    """(seed threshold, foreground threshold, seed split) of --screen for a model whose own
    instance options are ``options``: the fixed 12, and its own seed threshold's 6."""
    seeds = list(SCREEN_SEEDS)
    if options["seed_threshold"] not in seeds:
        seeds.append(options["seed_threshold"])
    return [(s, f, split) for s in seeds for f in SCREEN_FOREGROUND for split in (True, False)]


def variant(name: str, seed: int = 0, validation: bool = False):
    p = get_preset("nuclei")
    changes = dict(VARIANTS[name])
    model = replace(p.model, out_channels=2) if changes.get("target") == "binary" else p.model
    model = replace(model, **changes.pop("model", {}))
    inference = replace(p.inference, **changes.pop("inference", {}))
    changes = {"time_limit": 0.0, "seed": seed, **changes}  # equal steps: no time limit
    if validation:
        changes.update(train_slices=SPLITS + "train128.txt", val_slices=SPLITS + "validation.txt")
    if "augment" in changes:
        changes["augment"] = replace(p.train.augment, **changes["augment"])
    return replace(p, name=f"nuclei-{name}", model=model, train=replace(p.train, **changes),
                   inference=inference)  # fmt: skip


def scored_images(preset):
    """(images, instance labels) the variant is scored on: its val_slices, the held-out 40
    or, with --validation, the 32 validation images."""
    cfg = preset.train
    images = read_images(resolve_data_path(cfg.images))
    labels = read_instances(resolve_data_path(cfg.labels))
    idx = parse_slices(cfg.val_slices, len(images), "scored images", images.names)
    order = {n: i for i, n in enumerate(labels.names)}
    return [images.arrays[i] for i in idx], [labels.arrays[order[images.names[i]]] for i in idx]


def score(checkpoint: Path, images, labels, tta: bool, screen: bool = False) -> dict:
    model, preset = model_from_checkpoint(checkpoint, select_device("auto"))
    t0 = time.perf_counter()
    probs = [predict(model, img, tta=tta) for img in images]
    t1 = time.perf_counter()
    method = preset.inference.instance_method(preset.train.target, model.config.out_channels)
    options = preset.inference.instance_options(method)
    preds = [instances(p, **options) for p in probs]
    t2 = time.perf_counter()
    r = instance_scores_many(labels, preds)
    row = {**{k: r[k] for k in KEYS}, "predict_s": round(t1 - t0, 1),
           "instances_ms_per_image": round(1000 * (t2 - t1) / len(images), 1)}  # fmt: skip
    if screen and preset.train.target == "contour":
        row["screen"] = []
        for seed, fg, split in screen_settings(options):
            o = {**options, "seed_threshold": seed, "threshold": fg}
            if split and "split_solidity" not in o:
                o.update(SPLIT)
            if not split:
                o.pop("split_solidity", None)
                o.pop("split_depth", None)
            r = instance_scores_many(labels, [instances(p, **o) for p in probs])
            row["screen"].append({"seed": seed, "foreground": fg, "split": split,
                                  **{k: r[k] for k in KEYS}})  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--validation",
        action="store_true",
        help="train on 128 training images, score the 32 validation images",
    )
    ap.add_argument(
        "--screen",
        action="store_true",
        help="also score 12-18 post-processing settings (see above)",
    )
    ap.add_argument("--out", default="runs/nuclei")
    args = ap.parse_args()
    rows = []
    images = labels = None
    for name in args.variants.split(","):
        preset = variant(name, args.seed, args.validation)
        run = Path(args.out) / name
        t0 = time.perf_counter()
        if (run / "last.pt").exists():
            result = train(None, run, resume=True, epochs=args.epochs, progress=False)
        else:
            result = train(preset, run, epochs=args.epochs, progress=False)
        if images is None:
            images, labels = scored_images(preset)
        for tta in (False, True):
            row = {"variant": name, "tta": tta, "seed": args.seed, "validation": args.validation,
                   "train_min": round(result["total_seconds"] / 60, 1),
                   **score(run / "best.pt", images, labels, tta, args.screen)}  # fmt: skip
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
