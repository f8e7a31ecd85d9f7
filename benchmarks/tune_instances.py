"""Tune the instance post-processing of a trained `nuclei` (contour) model on its own
training images, then score the held-out 20% once with the defaults and once with the
best setting found: the held-out images never choose the setting.

    .venv/bin/python benchmarks/tune_instances.py CHECKPOINT [--train-images 60]
        [--tta] [--json OUT]

Sweeps `contour_instances`' seed threshold (P(interior) above which a pixel seeds an
object) and foreground threshold (P(background) below 1 - t), ranks them by the DSB
score on the first N training images (sorted by name), and prints one JSON row per
setting and the two held-out rows. Predicting runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from biounet import model_from_checkpoint, predict
from biounet.dataset import parse_slices
from biounet.device import select_device
from biounet.instances import contour_instances
from biounet.io import InputError, read_images, read_instances, resolve_data_path, write_text
from biounet.metrics import instance_scores_many

KEYS = ("ap50", "dsb_score", "seg", "merges", "splits")
SEEDS = (0.4, 0.5, 0.6, 0.7, 0.8)
FOREGROUNDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--train-images", type=int, default=60)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--json", type=Path)
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

    def scores(probs, idx, seed, fg):
        preds = [contour_instances(p, foreground_threshold=fg, seed_threshold=seed,
                                   min_size=cfg.min_object_size) for p in probs]  # fmt: skip
        r = instance_scores_many([by_name[images.names[i]] for i in idx], preds)
        return {k: r[k] for k in KEYS}

    rows = []
    train_probs = probs_of(train_idx)
    for seed, fg in itertools.product(SEEDS, FOREGROUNDS):
        setting = {"seed_threshold": seed, "foreground_threshold": fg}
        rows.append({"set": f"train[{len(train_idx)}]", **setting,
                     **scores(train_probs, train_idx, seed, fg)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["dsb_score"])
    held_idx = sorted(held)
    held_probs = probs_of(held_idx)
    for seed, fg in ((0.5, 0.5), (best["seed_threshold"], best["foreground_threshold"])):
        rows.append({"set": "held-out", "seed_threshold": seed, "foreground_threshold": fg,
                     "tta": args.tta, **scores(held_probs, held_idx, seed, fg)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except InputError as e:  # a missing or unreadable checkpoint or data file: one line
        print(f"{Path(__file__).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
