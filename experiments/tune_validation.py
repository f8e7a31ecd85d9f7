"""Choose the `nuclei` preset's instance post-processing on the 32 validation images, with
models that never saw them, and never look at the held-out 20%.

    .venv/bin/python experiments/tune_validation.py RUN/best.pt [RUN2/best.pt ...]
        [--tta] [--json OUT] [--cache DIR] [--jobs N] [--quick]

Each checkpoint must come from `experiments/nuclei.py --validation` (trained on
data/splits/dsb2018-fluo-train128.txt, its validation images
data/splits/dsb2018-fluo-validation.txt). Every setting of the grid below is scored on each
model's validation images; settings are ranked by the DSB score averaged over the models
(AP@0.5 breaks ties), so that one model's quirks choose less. The grid: seed threshold
(P(interior) above it seeds an object), seed dynamics (one seed per peak of P(interior)
standing that far above its saddle; 0: one per thresholded component), foreground
threshold (P(background) below 1 - t),
the seed split on (seeds less solid than 0.9 cut at distance peaks 4 px deep) or off, and
the object filters: smallest object in pixels, the image-relative limit (`min_fraction` x
the image's median object, where that is smaller), and the smallest peak P(interior) an
object must reach. One watershed per model, image and seed setting; the filters are applied
to its objects (`biounet.instances.filter_objects`), which gives what `contour_instances`
gives with the whole setting. Prints the best settings, each model's scores at the best
setting and at its own (the preset's when it was trained), and the best setting as
`TrainConfig` fields. --cache keeps each model's probabilities for the next call; --jobs
sweeps that many models at once. --quick scores the seed settings (seed threshold,
dynamics, foreground, split) at the preset's object filters, then the object filters at
the best of them: 131 settings instead of 3456 (the filters cost a second a setting on
32 images).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from nuclei import SPLITS, scored_images  # experiments/nuclei.py, beside this script

from biounet import get_preset, model_from_checkpoint, predict
from biounet.device import select_device
from biounet.errors import InputError
from biounet.instances import contour_instances, filter_objects
from biounet.io import atomic_path, write_text
from biounet.metrics import instance_scores_many

KEYS = ("ap50", "dsb_score", "f1", "seg", "merges", "splits")
SEEDS = (0.4, 0.5, 0.6, 0.7)
DYNAMICS = (0.0, 0.15, 0.2, 0.25)  # seed_dynamics; 0: the thresholded region's components
FOREGROUNDS = (0.5, 0.6, 0.7)
SEED_SPLITS = ((0.0, 4.0), (0.9, 4.0))  # (solidity, depth); solidity 0: no split
MIN_SIZES = (0, 15, 25, 40, 60)
MIN_FRACTIONS = (0.0, 0.3)
MIN_PEAKS = (0.0, 0.8, 0.9, 0.95)
NAMES = ("seed_threshold", "seed_dynamics", "foreground_threshold", "split_solidity",
         "split_depth", "min_size", "min_fraction", "min_peak")  # fmt: skip
# InferenceConfig's name of each setting (the rest are the same)
FIELDS = {**{k: k for k in NAMES}, "foreground_threshold": "threshold"}


def validation_model(path: Path, tta: bool, cache: Path | None = None):
    """(name, validation probabilities, validation labels, own setting) of one checkpoint;
    InputError unless it was trained with experiments/nuclei.py --validation. With ``cache``
    (a folder), the probabilities are kept there, keyed by the checkpoint's bytes and
    ``tta``, and read back on the next call if they still fit the images (one map per
    image, of its size); a change to ``predict`` needs a new folder."""
    model, preset = model_from_checkpoint(path, select_device("auto"))
    cfg = preset.train
    want = (SPLITS + "train128.txt", SPLITS + "validation.txt")
    if cfg.target != "contour" or (cfg.train_slices, cfg.val_slices) != want:
        raise InputError(
            f"{path}: not a contour model trained with experiments/nuclei.py --validation "
            f"(trained on {cfg.train_slices!r}, scored on {cfg.val_slices!r})"
        )
    images, labels = scored_images(preset)  # the 32 validation images
    kept = None
    if cache is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        kept = cache / f"{digest}-{'tta' if tta else 'one'}.npz"
    probs = None
    if kept is not None and kept.exists():
        with np.load(kept) as f:
            if sorted(f.files) == sorted(map(str, range(len(images)))):
                probs = [f[str(i)] for i in range(len(images))]
        if probs and any(p.shape[-2:] != im.shape for p, im in zip(probs, images, strict=True)):
            probs = None
    if probs is None:
        probs = [predict(model, image, tta=tta) for image in images]
        if kept is not None:
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(kept) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, **{str(i): p for i, p in enumerate(probs)})
    inf = preset.inference
    own = tuple(getattr(inf, FIELDS[k]) for k in NAMES)
    return str(path), probs, labels, own


def seed_grid() -> list[tuple]:
    """(seed, dynamics, foreground, split solidity, split depth): one watershed each."""
    return [(seed, dyn, fg, solidity, depth)
            for seed, dyn, fg, (solidity, depth)
            in itertools.product(SEEDS, DYNAMICS, FOREGROUNDS, SEED_SPLITS)]  # fmt: skip


def filter_grid() -> list[tuple]:
    """(min size, min fraction, min peak); the image-relative limit only lowers a size."""
    return [(size, fraction, peak)
            for size, fraction, peak in itertools.product(MIN_SIZES, MIN_FRACTIONS, MIN_PEAKS)
            if not (fraction and size <= 1)]  # fmt: skip


def sweep(probs, labels, seeds, filters) -> dict[tuple, dict]:
    """Scores of every pair of a ``seeds`` and a ``filters`` setting on one model's images:
    {setting: scores}."""
    out = {}
    for seed, dyn, fg, solidity, depth in seeds:
        objects = [contour_instances(p, foreground_threshold=fg, seed_threshold=seed,
                                     seed_dynamics=dyn, split_solidity=solidity,
                                     split_depth=depth)
                   for p in probs]  # fmt: skip
        for size, fraction, peak in filters:
            preds = [
                filter_objects(o, p[1], size, peak, fraction)
                for o, p in zip(objects, probs, strict=True)
            ]
            r = instance_scores_many(labels, preds)
            out[(seed, dyn, fg, solidity, depth, size, fraction, peak)] = {k: r[k] for k in KEYS}
    return out


def ranked(per_model: list[dict]) -> list[dict]:
    """Every setting scored on all models, best first (mean DSB score, then AP@0.5)."""
    rows = []
    for setting in per_model[0]:
        scores = [m[setting] for m in per_model]
        rows.append({**dict(zip(NAMES, setting, strict=True)),
                     "dsb_score": float(np.mean([s["dsb_score"] for s in scores])),
                     "ap50": float(np.mean([s["ap50"] for s in scores])),
                     "per_model": scores})  # fmt: skip
    rows.sort(key=lambda r: (-r["dsb_score"], -r["ap50"]))
    return rows


def sweep_all(models, seeds, filters, jobs: int) -> list[dict]:
    """``sweep`` on every model, ``jobs`` models at once."""
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        work = [pool.submit(sweep, m[1], m[2], seeds, filters) for m in models]
        return [w.result() for w in work]


def own_scores(probs, labels, own) -> dict:
    seed, dyn, fg, solidity, depth, size, fraction, peak = own
    preds = [contour_instances(p, foreground_threshold=fg, seed_threshold=seed,
                               seed_dynamics=dyn, split_solidity=solidity, split_depth=depth,
                               min_size=size, min_peak=peak, min_fraction=fraction)
             for p in probs]  # fmt: skip
    r = instance_scores_many(labels, preds)
    return {k: r[k] for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--tta", action="store_true", help="score 8-view averaged probabilities")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cache", type=Path, help="keep each model's probabilities in this folder")
    ap.add_argument("--jobs", type=int, default=1, help="models swept at once (processes)")
    ap.add_argument("--quick", action="store_true",
                    help="the seed settings at the preset's object filters, then the filters "
                    "at the best of them, instead of every pair")  # fmt: skip
    args = ap.parse_args()
    models = [validation_model(p, args.tta, args.cache) for p in args.checkpoints]
    if args.quick:  # the seed settings at the preset's filters, then the filters at the best
        inf = get_preset("nuclei").inference
        preset_filters = [(inf.min_size, inf.min_fraction, inf.min_peak)]
        per_model = sweep_all(models, seed_grid(), preset_filters, args.jobs)
        best = ranked(per_model)[0]
        chosen = [tuple(best[k] for k in NAMES[:5])]
        for m, more in zip(per_model, sweep_all(models, chosen, filter_grid(), args.jobs),
                           strict=True):  # fmt: skip
            m.update(more)
    else:
        per_model = sweep_all(models, seed_grid(), filter_grid(), args.jobs)
    for (name, probs, _, _), m in zip(models, per_model, strict=True):
        print(f"{name}: {len(m)} settings on {len(probs)} images", flush=True)
    rows = ranked(per_model)
    print("\nbest settings (mean over the models)")
    for r in rows[:15]:
        print(json.dumps({k: r[k] for k in (*NAMES, "dsb_score", "ap50")}))
    best = rows[0]
    tied = [r for r in rows if (r["dsb_score"], r["ap50"]) == (best["dsb_score"], best["ap50"])]
    if len(tied) > 1:  # e.g. an image-relative limit that no validation object meets
        print(f"{len(tied)} settings tie with the best (the first is taken): "
              + "; ".join(str(tuple(r[k] for k in NAMES)) for r in tied))  # fmt: skip
    for (name, probs, labels, own), m in zip(models, per_model, strict=True):
        at_best = m[tuple(best[k] for k in NAMES)]
        mine = json.dumps(own_scores(probs, labels, own))
        print(f"{name}: own setting {dict(zip(NAMES, own, strict=True))}: {mine}; "
              f"best: {json.dumps(at_best)}")  # fmt: skip
    print("InferenceConfig fields: " + ", ".join(f"{FIELDS[k]}={best[k]}" for k in NAMES))
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except InputError as e:  # a missing or unsuitable checkpoint: one line
        print(f"{Path(__file__).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
