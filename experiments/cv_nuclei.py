"""Touching nuclei, cross-validated: every one of the 200 bundled DSB 2018 fluorescence images
(or of the 497 with --data dsb2018-fluo,dsb2018-fluo-more) scored exactly once, by a
`nuclei` model that never saw it.

Folds: the images are grouped by size (256: 256 x 256 and the few near it; 360: 360 x 360;
520x696; large: 512 x 640 and larger) and by contrast polarity (dark: the labelled nuclei
are darker on average than the rest of the image; bright otherwise); each group is
shuffled (numpy default_rng(FOLD_SEED)) and dealt to the 5 folds in turn, one deal running
on from the last, so every fold holds about a fifth of every group. Fold k's model is
trained on the other 4 folds (160 images) with the `nuclei` preset at a fixed number of
epochs (--epochs, default 105: what the preset's 15 minutes hold on 2 Zen 4 cores with
bf16; no time limit, so that a busy machine changes the time, not the model) and scored
on fold k with the model's stored settings (8-view TTA, seeded watershed).

Reported per fold, per group and over all 200: per-image AP@0.5 (DSB convention
TP / (TP + FP + FN), the mean over images), DSB score (the mean over IoU thresholds
0.5..0.95, then over images), pooled AP@0.5 (every nucleus counted once: the sums of TP,
FP and FN over the images, StarDist's way), F1@0.5, merges and splits.

    .venv/bin/python experiments/cv_nuclei.py [--folds 0,1,2,3,4] [--epochs 105]
        [--seed 0] [--zoom R] [--invert-tiles P] [--base-channels C]
        [--sample-by image|area]
        [--data dsb2018-fluo[,dsb2018-fluo-more]] [--out runs/cv-nuclei]
    .venv/bin/python experiments/cv_nuclei.py --score TAG [--diameter D|auto|labels]
        [--invert auto|yes|no] [--tta | --no-tta] [--out runs/cv-nuclei]

--score scores the trained folds again with other inference settings (a fold model that
stores no training diameter gets its training images' median for --diameter).

Resumable: a fold whose run directory holds last.pt continues from it; a scored fold keeps
its per-image scores in scores.json. --folds runs some folds (e.g. one per machine); the
summary covers the folds scored so far.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from biounet import get_preset, model_from_checkpoint, segment, train
from biounet.device import select_device
from biounet.instances import equivalent_diameters
from biounet.io import atomic_path, find_data, read_images, read_instances
from biounet.metrics import instance_scores_many

FOLD_SEED = 2034
FOLDS = 5
SIZE_GROUPS = ("256", "360", "520x696", "large")


def size_group(shape: tuple[int, int]) -> str:
    h, w = shape
    if h * w <= 260 * 350:
        return "256"
    if (h, w) == (360, 360):
        return "360"
    if (h, w) == (520, 696):
        return "520x696"
    return "large"


DATA = {"root": None}  # the images/ and labels/ folders cross-validated (--data)


def use_data(names: list[str], out: Path) -> Path:
    """Cross-validate the bundled data sets ``names``: the folder itself for one, or for
    several one folder of links to all their files (in ``out``/data, pointing at this
    checkout's files)."""
    if len(names) == 1:
        DATA["root"] = find_data(names[0])
        return DATA["root"]
    merged = out / "data"
    for sub in ("images", "labels"):
        (merged / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            for f in sorted((find_data(name) / sub).iterdir()):
                link = merged / sub / f.name
                if link.is_symlink() and link.resolve() != f.resolve():
                    link.unlink()  # made from another checkout: point it at this one
                if not link.is_symlink():
                    link.symlink_to(f.resolve())
    DATA["root"] = merged.resolve()
    return DATA["root"]


def data_root() -> Path:
    return DATA["root"] or find_data("dsb2018-fluo")


def image_groups() -> dict[str, dict]:
    """name -> {"size": size group, "polarity": "dark" | "bright", "shape": (H, W)}."""
    root = data_root()
    images = read_images(root / "images")
    labels = read_instances(root / "labels")
    order = {n: i for i, n in enumerate(labels.names)}
    groups = {}
    for name, image in zip(images.names, images.arrays, strict=True):
        nuclei = labels.arrays[order[name]] > 0
        dark = image[nuclei].mean() < image[~nuclei].mean()
        groups[name] = {"size": size_group(image.shape[-2:]), "shape": list(image.shape[-2:]),
                        "polarity": "dark" if dark else "bright"}  # fmt: skip
    return groups


def make_folds(groups: dict[str, dict], k: int = FOLDS, seed: int = FOLD_SEED) -> list[list[str]]:
    """``k`` lists of image names, stratified by (size, polarity) as the docstring says."""
    rng = np.random.default_rng(seed)
    strata: dict[tuple[str, str], list[str]] = {}
    for name in sorted(groups):
        g = groups[name]
        strata.setdefault((g["polarity"], g["size"]), []).append(name)
    folds: list[list[str]] = [[] for _ in range(k)]
    turn = 0
    for key in sorted(strata):
        for name in rng.permutation(strata[key]):
            folds[turn % k].append(str(name))
            turn += 1
    return [sorted(f) for f in folds]


def median_diameter(names: list[str]) -> float:
    """The median equivalent diameter of the labelled nuclei of ``names``."""
    labels = read_instances(data_root() / "labels")
    lidx = {n: i for i, n in enumerate(labels.names)}
    return float(np.median(np.concatenate([equivalent_diameters(labels.arrays[lidx[n]])
                                           for n in names])))  # fmt: skip


def score_fold(checkpoint: Path, names: list[str], groups: dict, diameter=None, invert=None,
               tta=None, trained_diameter: float = 0.0) -> list[dict]:  # fmt: skip
    """Per-image scores of the model on ``names``, with its stored inference settings but
    for ``diameter`` (a number, "auto", or "labels": each image's own labelled median),
    ``invert`` and ``tta`` where given. ``trained_diameter`` stands in for the model's
    stored one where it has none."""
    root = data_root()
    images = read_images(root / "images")
    labels = read_instances(root / "labels")
    idx = {n: i for i, n in enumerate(images.names)}
    lidx = {n: i for i, n in enumerate(labels.names)}
    unet, preset = model_from_checkpoint(checkpoint, select_device("auto"))
    if not unet.config.diameter:
        unet.config = replace(unet.config, diameter=trained_diameter)
    rows = []
    for name in names:
        inference = preset.inference
        if tta is not None:
            inference = replace(inference, tta=tta)
        if diameter == "labels":
            own = float(np.median(equivalent_diameters(labels.arrays[lidx[name]])))
            inference = replace(inference, diameter=own)
        elif diameter is not None:
            inference = replace(inference, diameter=diameter)
        t0 = time.perf_counter()
        seg = segment((unet, preset), images.arrays[idx[name]], inference,
                      outputs=["instances"], invert=invert)  # fmt: skip
        seconds = time.perf_counter() - t0
        r = instance_scores_many([labels.arrays[lidx[name]]], [seg.instances])
        rows.append({"image": name, **groups[name], "ap50": r["ap50"], "dsb_score": r["dsb_score"],
                     "tp": r["tp"][0], "fp": r["fp"][0], "fn": r["fn"][0], "n_gt": r["n_gt"],
                     "n_pred": r["n_pred"], "merges": r["merges"], "splits": r["splits"],
                     "seconds": round(seconds, 2)})  # fmt: skip
    return rows


def summary(rows: list[dict]) -> dict:
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    return {
        "images": len(rows),
        "ap50": float(np.mean([r["ap50"] for r in rows])),
        "dsb_score": float(np.mean([r["dsb_score"] for r in rows])),
        "pooled_ap50": tp / max(1, tp + fp + fn),
        "f1": 2 * tp / max(1, 2 * tp + fp + fn),
        "merges": sum(r["merges"] for r in rows),
        "splits": sum(r["splits"] for r in rows),
    }


def table(title: str, parts: list[tuple[str, list[dict]]]) -> str:
    head = f"| {title} | images | AP@0.5 per image | DSB score | pooled AP@0.5 | F1@0.5 |"
    lines = ["", head + " merges | splits |", "| --- " * 8 + "|"]
    for label, rows in parts:
        if not rows:
            continue
        s = summary(rows)
        lines.append(f"| {label} | {s['images']} | {s['ap50']:.3f} | {s['dsb_score']:.3f} | "
                     f"{s['pooled_ap50']:.3f} | {s['f1']:.3f} | {s['merges']} | "
                     f"{s['splits']} |")  # fmt: skip
    return "\n".join(lines)


GROUPS = [("all", lambda r: True)] + [
    (g, lambda r, g=g: r["size"] == g) for g in SIZE_GROUPS
] + [("dark", lambda r: r["polarity"] == "dark")]


def compare(specs: list[str]) -> str:
    """One row per ``DIR[:TAG]`` (a cross-validation and its scores-TAG.json, default its
    own scores.json): per-image AP@0.5 / DSB score over all images and per group, and
    pooled AP@0.5 over all; only the folds every spec has scored."""
    loaded = {}
    for spec in specs:
        run, _, tag = spec.partition(":")
        name = f"scores-{tag}.json" if tag else "scores.json"
        loaded[spec] = {k: json.loads((Path(run) / f"fold{k}" / name).read_text())
                        for k in range(FOLDS) if (Path(run) / f"fold{k}" / name).exists()}
    common = sorted(set.intersection(*(set(v) for v in loaded.values())))
    head = " | ".join(f"{g} ({sum(f(r) for k in common for r in loaded[specs[0]][k])})"
                      for g, f in GROUPS)  # fmt: skip
    lines = [f"folds {','.join(map(str, common))}; per-image AP@0.5 / DSB score", "",
             f"| scores | s / image | pooled AP@0.5 | {head} |",
             "| --- " * (len(GROUPS) + 3) + "|"]
    for spec, folds in loaded.items():
        rows = [r for k in common for r in folds[k]]
        cells = []
        for _, keep in GROUPS:
            kept = [r for r in rows if keep(r)]
            s = summary(kept) if kept else None
            cells.append(f"{s['ap50']:.3f} / {s['dsb_score']:.3f}" if s else "-")
        seconds = np.mean([r["seconds"] for r in rows])
        lines.append(f"| {spec} | {seconds:.2f} | {summary(rows)['pooled_ap50']:.3f} | "
                     f"{' | '.join(cells)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", default=",".join(map(str, range(FOLDS))))
    ap.add_argument("--epochs", type=int, default=105)
    ap.add_argument("--seed", type=int, default=0, help="training seed (not the folds')")
    ap.add_argument("--zoom", type=float, default=0.0, metavar="R",
                    help="train with random zoom (train --zoom R); 0: the preset's (none)")
    ap.add_argument("--invert-tiles", type=float, default=0.0, metavar="P",
                    help="train with contrast inversion of a tile with probability P (train "
                    "--invert-tiles P); 0: the preset's (none)")
    ap.add_argument("--base-channels", type=int, default=0, metavar="C",
                    help="the network's top-level feature channels (train --base-channels C); "
                    "0: the preset's (16)")  # fmt: skip
    ap.add_argument("--sample-by", choices=("image", "area"),
                    help="train --sample-by: tiles from every image equally often, or in "
                    "proportion to its pixels (default: the preset's, area)")
    ap.add_argument("--data", default="dsb2018-fluo",
                    help="the bundled data set(s) to cross-validate, comma-separated "
                    "(default dsb2018-fluo: the 200 images; dsb2018-fluo,dsb2018-fluo-more: "
                    "all 497)")  # fmt: skip
    ap.add_argument("--out", default="runs/cv-nuclei")
    ap.add_argument("--score", metavar="TAG", help="only score the trained folds again, with "
                    "the settings below, into foldK/scores-TAG.json (and summarise them)")
    ap.add_argument("--diameter", help="predict with this --diameter: pixels, auto, or "
                    "labels (each image's labelled median: the best a diameter can do)")
    ap.add_argument("--invert", choices=("auto", "yes", "no"), help="predict with --invert")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--compare", nargs="+", metavar="DIR[:TAG]",
                    help="print one row per scored cross-validation (and score tag) and stop")
    args = ap.parse_args()
    if args.compare:
        print(compare(args.compare))
        return
    diameter = args.diameter
    if diameter not in (None, "auto", "labels"):
        diameter = float(diameter)
    out = Path(args.out)
    root = use_data(args.data.split(","), out)
    groups = image_groups()
    folds = make_folds(groups)
    with atomic_path(out / "folds.json") as tmp:
        Path(tmp).write_text(json.dumps({"folds": folds, "groups": groups}, indent=1))
    scores = f"scores-{args.score}.json" if args.score else "scores.json"
    for k in (int(f) for f in args.folds.split(",")):
        run, done = out / f"fold{k}", out / f"fold{k}" / scores
        train_names = [n for j, f in enumerate(folds) if j != k for n in f]
        if args.score:
            if done.exists() or not (run / "scores.json").exists():
                continue
            t0 = time.perf_counter()
            rows = score_fold(run / "best.pt", folds[k], groups, diameter, args.invert,
                              args.tta, median_diameter(train_names))  # fmt: skip
            with atomic_path(done) as tmp:
                Path(tmp).write_text(json.dumps(rows, indent=1))
            print(f"fold {k} {args.score}: {json.dumps(summary(rows))} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
            continue
        if done.exists():
            continue
        t0 = time.perf_counter()
        names = folds[k]
        lists = out / "splits"
        for what, members in (("train", train_names), ("test", names)):
            with atomic_path(lists / f"fold{k}-{what}.txt") as tmp:
                Path(tmp).write_text(f"# fold {k} {what}\n" + "\n".join(members) + "\n")
        p = get_preset("nuclei")
        cfg = replace(p.train, images=str(root / "images"), labels=str(root / "labels"),
                      train_slices=f"@{(lists / f'fold{k}-train.txt').resolve()}",
                      val_slices=f"@{(lists / f'fold{k}-test.txt').resolve()}", val_every=0,
                      select_by="last", epochs=args.epochs, time_limit=0.0,
                      seed=args.seed)  # fmt: skip
        if args.zoom:  # scale augmentation: random zoom log-uniform in [1/(1+R), 1+R]
            cfg = replace(cfg, augment=replace(cfg.augment, scale=True, scale_range=args.zoom))
        if args.invert_tiles:  # contrast inversion augmentation
            cfg = replace(cfg, augment=replace(cfg.augment, invert=args.invert_tiles))
        if args.sample_by:
            cfg = replace(cfg, sample_by=args.sample_by)
        preset = replace(p, name=f"nuclei-cv{k}", train=cfg)
        if args.base_channels:
            preset = replace(preset, model=replace(p.model, base_channels=args.base_channels))
        if (run / "last.pt").exists():
            train(None, run, resume=True, progress=False)
        else:
            train(preset, run, progress=False)
        rows = score_fold(run / "best.pt", names, groups)
        with atomic_path(done) as tmp:
            Path(tmp).write_text(json.dumps(rows, indent=1))
        print(f"fold {k}: {json.dumps(summary(rows))} ({time.perf_counter() - t0:.0f} s)",
              flush=True)  # fmt: skip
    scored = {k: json.loads((out / f"fold{k}" / scores).read_text())
              for k in range(FOLDS) if (out / f"fold{k}" / scores).exists()}  # fmt: skip
    rows = [r for k in sorted(scored) for r in scored[k]]
    if not rows:
        return
    print(table("fold", [(str(k), scored[k]) for k in sorted(scored)] + [("all", rows)]))
    print(table("size", [(g, [r for r in rows if r["size"] == g]) for g in SIZE_GROUPS]))
    print(table("polarity", [(g, [r for r in rows if r["polarity"] == g])
                             for g in ("bright", "dark")]))  # fmt: skip


if __name__ == "__main__":
    main()
