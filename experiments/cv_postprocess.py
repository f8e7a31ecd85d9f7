"""Post-processing chosen for pooled AP@0.5, cross-validated with the fold models of
`experiments/cv_nuclei.py`: no image chooses the setting it is scored with.

    .venv/bin/python experiments/cv_postprocess.py --out RUN [--jobs N]

RUN is a cross-validation of cv_nuclei.py (its folds.json, each foldK/best.pt and
scores.json). Each fold model's 8-view probabilities of its own test images are kept in
foldK/probs-tta.npz. First check: the model's stored setting applied to the
kept probabilities must give the tp / fp / fn that cv_nuclei.py scored (else the cache
is not what `segment` computes and the script stops). Then every setting of the grid
(tune_validation.py's, smaller: seed threshold, seed dynamics, foreground threshold, seed
split, at the stored object filters; then the object filters at the best of those) is
scored on every image. Nested choice: fold k is scored with the setting of the highest
pooled AP@0.5 (TP / (TP + FP + FN) summed over images) on the other four folds' images;
ties go to the stored setting's neighbourhood first (the stored setting wins a tie).
Prints the nested result against the stored setting, overall and per group, and the
setting the five folds together choose (what a shipped model would store).
"""

from __future__ import annotations

import argparse
import itertools
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from cv_nuclei import FOLDS, GROUPS, use_data  # beside this script

from biounet import model_from_checkpoint, predict
from biounet.device import select_device
from biounet.instances import contour_instances, filter_objects
from biounet.io import atomic_path, read_images, read_instances
from biounet.metrics import instance_scores_many

SEEDS = (0.3, 0.4, 0.5, 0.6)
DYNAMICS = (0.0, 0.15, 0.25, 0.35)
FOREGROUNDS = (0.5, 0.6, 0.7)
SPLITS = ((0.0, 4.0), (0.9, 4.0))
MIN_SIZES = (10, 15, 25, 40)
MIN_FRACTIONS = (0.0, 0.3)
MIN_PEAKS = (0.5, 0.8, 0.9, 0.95)
NAMES = ("seed_threshold", "seed_dynamics", "threshold", "split_solidity", "split_depth",
         "min_size", "min_fraction", "min_peak")  # fmt: skip


def own_setting(inference) -> tuple:
    return tuple(getattr(inference, k) for k in NAMES)


def fold_probs(run: Path, k: int, names: list[str], images: dict) -> list[np.ndarray]:
    """Fold k's model's 8-view probabilities of ``names``, kept in foldK/probs-tta.npz."""
    kept = run / f"fold{k}" / "probs-tta.npz"
    if kept.exists():
        with np.load(kept) as f:
            if sorted(f.files) == sorted(names):
                return [f[n] for n in names]
    model, preset = model_from_checkpoint(run / f"fold{k}" / "best.pt", select_device("auto"))
    probs = [predict(model, images[n], tta=True) for n in names]
    with atomic_path(kept) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **dict(zip(names, probs, strict=True)))
    return probs


def counts(labels, preds) -> list[tuple]:
    """Per image (tp, fp, fn, ap50, dsb_score)."""
    out = []
    for lab, pred in zip(labels, preds, strict=True):
        r = instance_scores_many([lab], [pred])
        out.append((r["tp"][0], r["fp"][0], r["fn"][0], r["ap50"], r["dsb_score"]))
    return out


def sweep(probs, labels, seeds, filters) -> dict[tuple, list[tuple]]:
    """Per-image counts of every (seed setting, filter setting) pair."""
    out = {}
    for seed, dyn, fg, solidity, depth in seeds:
        objects = [contour_instances(p, foreground_threshold=fg, seed_threshold=seed,
                                     seed_dynamics=dyn, split_solidity=solidity,
                                     split_depth=depth) for p in probs]  # fmt: skip
        for size, fraction, peak in filters:
            preds = [filter_objects(o, p[1], size, peak, fraction)
                     for o, p in zip(objects, probs, strict=True)]  # fmt: skip
            out[(seed, dyn, fg, solidity, depth, size, fraction, peak)] = counts(labels, preds)
    return out


def pooled(rows: list[tuple]) -> float:
    tp, fp, fn = (sum(r[i] for r in rows) for i in range(3))
    return tp / max(1, tp + fp + fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the cv_nuclei.py run")
    ap.add_argument("--data", default="dsb2018-fluo,dsb2018-fluo-more")
    ap.add_argument("--jobs", type=int, default=1, help="folds swept at once (processes)")
    ap.add_argument("--folds", default=",".join(map(str, range(FOLDS))))
    args = ap.parse_args()
    run = args.out
    root = use_data(args.data.split(","), run)
    meta = json.loads((run / "folds.json").read_text())
    folds, groups = meta["folds"], meta["groups"]
    done = [k for k in map(int, args.folds.split(",")) if (run / f"fold{k}/scores.json").exists()]
    imgs, labs = read_images(root / "images"), read_instances(root / "labels")
    images = dict(zip(imgs.names, imgs.arrays, strict=True))
    labels = dict(zip(labs.names, labs.arrays, strict=True))
    probs, own = {}, None
    for k in done:
        probs[k] = fold_probs(run, k, folds[k], images)
        inf = model_from_checkpoint(run / f"fold{k}" / "best.pt")[1].inference
        own = own_setting(inf)
        scored = {r["image"]: r for r in json.loads((run / f"fold{k}/scores.json").read_text())}
        seed, dyn, fg, sol, depth, size, frac, peak = own
        mine = [contour_instances(p, foreground_threshold=fg, seed_threshold=seed,
                                  seed_dynamics=dyn, split_solidity=sol, split_depth=depth,
                                  min_size=size, min_fraction=frac, min_peak=peak)
                for p in probs[k]]  # fmt: skip
        got = counts([labels[n] for n in folds[k]], mine)
        want = [(scored[n]["tp"], scored[n]["fp"], scored[n]["fn"]) for n in folds[k]]
        same = sum(g[:3] == w for g, w in zip(got, want, strict=True))
        print(f"fold {k}: the stored setting on the kept probabilities reproduces {same} of "
              f"{len(want)} images' counts; pooled {pooled(got):.4f}", flush=True)  # fmt: skip
    seeds = list(itertools.product(SEEDS, DYNAMICS, FOREGROUNDS, SPLITS))
    seeds = [(s, d, f, sol, dep) for s, d, f, (sol, dep) in seeds]
    stored_filters = [own[5:]]
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        work = {k: pool.submit(sweep, probs[k], [labels[n] for n in folds[k]], seeds,
                               stored_filters) for k in done}  # fmt: skip
        table = {k: w.result() for k, w in work.items()}
    best_seed = max(table[done[0]], key=lambda s: (pooled([r for k in done for r in table[k][s]]),
                                                   s == own))  # fmt: skip
    filters = [f for f in itertools.product(MIN_SIZES, MIN_FRACTIONS, MIN_PEAKS)]
    for s in {best_seed[:5], own[:5]}:
        with ProcessPoolExecutor(max(1, args.jobs)) as pool:
            work = {k: pool.submit(sweep, probs[k], [labels[n] for n in folds[k]], [s], filters)
                    for k in done}  # fmt: skip
            for k, w in work.items():
                table[k].update(w.result())
    settings = list(table[done[0]])
    print(f"{len(settings)} settings on {sum(len(folds[k]) for k in done)} images", flush=True)

    def choose(keep: list[int]) -> tuple:
        return max(settings, key=lambda s: (pooled([r for k in keep for r in table[k][s]]),
                                            s == own))  # fmt: skip

    nested, chosen = {}, {}
    for k in done:
        chosen[k] = choose([j for j in done if j != k])
        nested[k] = table[k][chosen[k]]
        print(f"fold {k}: chosen on the other folds {dict(zip(NAMES, chosen[k], strict=True))}"
              f": pooled {pooled(nested[k]):.4f} (stored {pooled(table[k][own]):.4f})")  # fmt: skip
    lines = ["", "| setting | pooled AP@0.5 | " + " | ".join(g for g, _ in GROUPS) + " |",
             "| --- " * (len(GROUPS) + 2) + "|"]
    for label, rows_of in (("stored", {k: table[k][own] for k in done}), ("nested", nested)):
        cells = []
        for _, keep in GROUPS:
            rows = [r for k in done for n, r in zip(folds[k], rows_of[k], strict=True)
                    if keep(groups[n])]  # fmt: skip
            cells.append(f"{np.mean([r[3] for r in rows]):.3f} / {np.mean([r[4] for r in rows]):.3f}"
                         if rows else "-")  # fmt: skip
        everything = [r for k in done for r in rows_of[k]]
        lines.append(f"| {label} | {pooled(everything):.3f} | {' | '.join(cells)} |")
    print("\n".join(lines))
    every = choose(done)
    print(f"\nchosen on all {len(done)} folds: {json.dumps(dict(zip(NAMES, every, strict=True)))}")
    result = {"stored": dict(zip(NAMES, own, strict=True)),
              "chosen_on_all": dict(zip(NAMES, every, strict=True)),
              "nested": {k: dict(zip(NAMES, chosen[k], strict=True)) for k in done}}  # fmt: skip
    with atomic_path(run / "postprocess.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
