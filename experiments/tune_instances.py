"""Tune the instance post-processing of a trained `nuclei` (contour) model on its own
training images, then score the held-out 20% once with the model's settings and once with
the best setting found: the held-out images never choose the setting.

    .venv/bin/python experiments/tune_instances.py CHECKPOINT [--train-images 40]
        [--tta] [--json OUT] [--export MODEL.pt]

Sweeps `contour_instances`' seed threshold (P(interior) above which a pixel seeds an
object), foreground threshold (P(background) below 1 - t), smallest object (pixels) and
smallest peak (objects whose highest P(interior) stays below it are dropped), ranks the
settings by the DSB score on the first N training images (sorted by name); then, at the
best one's foreground threshold and filters, sweeps the seed threshold with the seed split
(`split_solidity` x `split_depth`: seeds less solid than that cut at their
distance-transform peaks; solidity 0 = no split); then, at the best setting so far, sweeps
the smallest object again with the image-relative limit (`min_fraction`: objects under
that fraction of the image's median object are dropped where that is below the smallest
object; 0 = the absolute limit alone), and prints one JSON row per setting and the
held-out rows: the model's own setting and the best. `--export` writes the model with the
best setting stored (seed and foreground thresholds, smallest object, peak, seed split,
fraction; with `--tta`, that predict averages the 8 views by default, as the setting was
tuned on averaged probabilities), so that `biounet predict --instances` uses it.
Predicting runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from biounet import model_from_checkpoint, predict
from biounet.checkpoint import export_model
from biounet.dataset import parse_slices
from biounet.device import select_device
from biounet.errors import InputError
from biounet.instances import contour_instances
from biounet.io import read_images, read_instances, resolve_data_path, write_text
from biounet.metrics import instance_scores_many

KEYS = ("ap50", "dsb_score", "seg", "merges", "splits")
SEEDS = (0.4, 0.5, 0.6, 0.7, 0.8)
FOREGROUNDS = (0.5, 0.6, 0.7)
MIN_SIZES = (15, 25, 40, 60)
MIN_PEAKS = (0.0, 0.8, 0.9, 0.95, 0.98)
SPLITS = tuple((s, d) for s in (0.8, 0.85, 0.9) for d in (2.0, 3.0, 4.0))  # (solidity, depth)
MIN_FRACTIONS = (0.2, 0.3, 0.4, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--train-images", type=int, default=40)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--export", type=Path, help="write the model with the best setting here")
    args = ap.parse_args()
    model, preset = model_from_checkpoint(args.checkpoint, select_device("auto"))
    cfg = preset.train
    if cfg.target != "contour":
        raise SystemExit(f"{args.checkpoint}: a contour model is needed, this one is {cfg.target}")
    images = read_images(resolve_data_path(cfg.images))
    labels = read_instances(resolve_data_path(cfg.labels))
    by_name = {n: a for n, a in zip(labels.names, labels.arrays, strict=True)}
    held = set(parse_slices(cfg.val_slices, len(images), "held-out", images.names))
    train_idx = [i for i in range(len(images)) if i not in held][: args.train_images]

    def probs_of(idx):
        return [predict(model, images.arrays[i], tta=args.tta) for i in idx]

    def scores(probs, idx, seed, fg, min_size, min_peak, split=0.0, depth=3.0, fraction=0.0):
        options = dict(foreground_threshold=fg, seed_threshold=seed, min_size=min_size,
                       min_peak=min_peak, split_solidity=split, split_depth=depth,
                       min_fraction=fraction)  # fmt: skip
        preds = [contour_instances(p, **options) for p in probs]
        r = instance_scores_many([by_name[images.names[i]] for i in idx], preds)
        return {k: r[k] for k in KEYS}

    rows = []
    train_probs = probs_of(train_idx)

    def sweep(settings):
        for setting in settings:
            named = dict(zip(NAMES, setting, strict=True))
            rows.append({"set": f"train[{len(train_idx)}]", **named,
                         **scores(train_probs, train_idx, *setting)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)

    grid = itertools.product(SEEDS, FOREGROUNDS, MIN_SIZES, MIN_PEAKS)
    sweep((*s, 0.0, 3.0, 0.0) for s in grid)
    best = max(rows, key=lambda r: r["dsb_score"])
    fixed = (best["foreground_threshold"], best["min_size"], best["min_peak"])
    sweep((seed, *fixed, *split, 0.0) for seed in SEEDS for split in SPLITS)
    best = max(rows, key=lambda r: r["dsb_score"])
    seed, fg, peak = best["seed_threshold"], best["foreground_threshold"], best["min_peak"]
    split = (best["split_solidity"], best["split_depth"])
    sweep((seed, fg, size, peak, *split, fraction) for size in MIN_SIZES
          for fraction in MIN_FRACTIONS)  # fmt: skip
    best = max(rows, key=lambda r: r["dsb_score"])
    held_idx = sorted(held)
    held_probs = probs_of(held_idx)
    inf = preset.inference
    own = (inf.seed_threshold, inf.threshold, inf.min_size, inf.min_peak, inf.split_solidity,
           inf.split_depth, inf.min_fraction)  # fmt: skip
    for setting in dict.fromkeys((own, tuple(best[k] for k in NAMES))):
        rows.append({"set": "held-out", **dict(zip(NAMES, setting, strict=True)), "tta": args.tta,
                     **scores(held_probs, held_idx, *setting)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n")
    if args.export:
        export_model(args.checkpoint, args.export, min_size=best["min_size"],
                     min_peak=best["min_peak"], seed_threshold=best["seed_threshold"],
                     threshold=best["foreground_threshold"],
                     split_solidity=best["split_solidity"], split_depth=best["split_depth"],
                     min_fraction=best["min_fraction"], tta=args.tta)  # fmt: skip
        print(f"wrote {args.export}: " + ", ".join(f"{k} {best[k]}" for k in NAMES))


NAMES = (
    "seed_threshold",
    "foreground_threshold",
    "min_size",
    "min_peak",
    "split_solidity",
    "split_depth",
    "min_fraction",
)


if __name__ == "__main__":
    try:
        main()
    except InputError as e:  # a missing or unreadable checkpoint or data file: one line
        print(f"{Path(__file__).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
