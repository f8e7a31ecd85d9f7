"""A simulated annotator: how many painted nuclei, and how many minutes of fine-tuning,
bring the shipped nuclei model up on images it handles badly.

The group: the dark-on-bright images of data/dsb2018-fluo-more (dark: the labelled nuclei
darker on average than the rest of the image; the shipped model never saw these images).
The annotator works on the first --annotate of them (sorted by name); the others are
scored. It marks square boxes (--box pixels) one after another and, in each, paints every
reference nucleus that reaches into it, complete (biounet.annotate's convention: inside a
box unpainted pixels are background, outside they are not annotated), until N nuclei are
painted (the last box may overshoot N: the table gives the count). Where N is at least
what the images hold (142 in the 2 annotated by default), the images are annotated whole.
Random boxes do not overlap until 200 draws have failed to find a free place; after that
they may. Boxes are placed at random, alternating between the annotated images, or where
the shipped model's 8 views disagree most (biounet.annotate.disagreement, next_box).

The model is fine-tuned from models/dsb2018-nuclei.pt with its own training settings (the
nuclei preset) for T minutes of 2 CPU cores, counted in steps so that the result does not
depend on what else the machine runs: T x --steps-per-minute steps (default 210: the
nuclei preset's 105 epochs of 30 steps in 15 minutes on 2 Zen 4 cores with bf16). Scored
on the rest of the group with the model's own inference settings: per-image AP@0.5 (the
mean over images of TP / (TP + FP + FN)), pooled AP@0.5 (the sums over images) and the
DSB score. --estimate adds the round's own k-fold estimate (biounet.annotate.
fold_estimate, 3 folds over the boxes or, --estimate-by image, 2 over the annotated images,
each fold trained as the round) for comparison
with the score on the unseen images.

    .venv/bin/python experiments/annotator.py [--n 10,25,50,100,200] [--minutes 2,5,10]
        [--place random,uncertainty] [--estimate N:T,...] [--estimate-by box|image]
        [--out runs/annotator]
    .venv/bin/python experiments/annotator.py --table [--out runs/annotator]

Resumable: a finished cell keeps result.json in its folder and is not run again (a cell
stopped part-way starts again). The loops run minutes, then placement, then N, in the
order given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from biounet import model_from_checkpoint, segment
from biounet.annotate import Annotations, disagreement, fold_estimate, next_box, train_round
from biounet.checkpoint import shipped_model
from biounet.io import atomic_path, find_data, read_images, read_instances
from biounet.metrics import instance_scores_many

STEPS_PER_EPOCH = 30  # the nuclei preset's


def the_group(root: Path) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(names, images, labels) of the dark-on-bright images of ``root``."""
    images, labels = read_images(root / "images"), read_instances(root / "labels")
    lab = dict(zip(labels.names, labels.arrays, strict=True))
    names, imgs, labs = [], {}, {}
    for name, image in zip(images.names, images.arrays, strict=True):
        nuclei = lab[name] > 0
        if image[nuclei].mean() < image[~nuclei].mean():
            names.append(name)
            imgs[name], labs[name] = image, lab[name].astype(np.int32)
    return sorted(names), imgs, labs


def overlap(a, b) -> bool:
    """Whether two (top, left, bottom, right) boxes share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_boxes(n: int, names: list[str], images: dict, labels: dict, box: int, place: str,
                uncertainty: dict | None, seed: int = 0) -> Annotations:  # fmt: skip
    """Boxes on the annotated images until ``n`` nuclei are painted (see the docstring)."""
    rng = np.random.default_rng(seed)
    painted = {k: np.zeros_like(labels[k]) for k in names}
    boxes: dict[str, list] = {k: [] for k in names}
    count, turn, tries = 0, 0, 0
    available = sum(len(np.unique(labels[k])) - 1 for k in names)
    if n >= available:  # every nucleus: the whole images
        return Annotations(list(names), [images[k] for k in names],
                           [labels[k] for k in names], [None] * len(names))  # fmt: skip
    while count < n:
        name = names[turn % len(names)]
        ref = labels[name]
        H, W = ref.shape
        if place == "random":
            t, c = int(rng.integers(0, H - box + 1)), int(rng.integers(0, W - box + 1))
            b = (t, c, t + box, c + box)
            # boxes do not overlap while free places are easy to find (so that folds of
            # boxes are disjoint); after that they may
            if tries < 200 and any(overlap(b, x) for x in boxes[name]):
                tries += 1
                continue
        else:
            try:
                b = next_box(uncertainty[name], box, boxes[name])
            except ValueError:  # every place taken
                break
        boxes[name].append(b)
        ids = np.unique(ref[b[0]:b[2], b[1]:b[3]])
        ids = ids[ids > 0]
        new = ids[~np.isin(ids, painted[name])]
        mask = np.isin(ref, new)
        painted[name][mask] = ref[mask]
        count += len(new)
        turn += 1
    return Annotations(list(names), [images[k] for k in names], [painted[k] for k in names],
                       [boxes[k] for k in names])  # fmt: skip


def score(model, names: list[str], images: dict, labels: dict) -> dict:
    """Per-image and pooled AP@0.5 and the DSB score of ``model`` on ``names``."""
    net = model_from_checkpoint(model, "cpu")
    preds = [segment(net, images[k], outputs=("instances",)).instances for k in names]
    s = instance_scores_many([labels[k] for k in names], preds)
    tp, fp, fn = s["tp"][0], s["fp"][0], s["fn"][0]
    return {"ap50": s["ap50"], "pooled_ap50": tp / (tp + fp + fn), "dsb": s["dsb_score"],
            "per_image": {k: r["ap50"] for k, r in zip(names, s["per_image"], strict=True)}}


def run_one(out: Path, n: int, minutes: float, place: str, group, annotate: list[str],
            box: int, steps_per_minute: float, estimate: str, uncertainty,
            base: Path) -> dict:  # fmt: skip
    """One cell: box, fine-tune ``base``, score (kept in ``out``/result.json); ``estimate``
    "box" or "image": also the k-fold estimate by that unit (added to a finished cell)."""
    done = out / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        known = set(result.get("estimates", {})) | ({"box"} if "estimate" in result else set())
        if estimate and estimate not in known:
            names, images, labels = group
            notes = place_boxes(n, annotate, images, labels, box, place, uncertainty)
            add_estimate(result, notes, out, estimate, base)
            with atomic_path(done) as tmp:
                Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
        return result
    names, images, labels = group
    shutil.rmtree(out, ignore_errors=True)  # a cell stopped part-way starts again
    notes = place_boxes(n, annotate, images, labels, box, place, uncertainty)
    start = base
    epochs = max(1, round(minutes * steps_per_minute / STEPS_PER_EPOCH))
    t0 = time.perf_counter()
    model = train_round(notes, out / "round", start, None, 0.0, epochs=epochs)
    seconds = time.perf_counter() - t0
    rest = [k for k in names if k not in annotate]
    result = {"n": n, "painted": notes.objects(), "minutes": minutes, "place": place,
              "boxes": sum(len(b) for b in notes.boxes if b is not None),
              "steps": epochs * STEPS_PER_EPOCH,
              "train_seconds": round(seconds, 1), **score(model, rest, images, labels)}  # fmt: skip
    if estimate:
        add_estimate(result, notes, out, estimate, base)
    with atomic_path(done) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    return result


def overview(rows: list[dict], base: dict) -> str:
    """AP@0.5 per image by N (rows) and placement / minutes (columns)."""
    cols = sorted({(r["place"], r["minutes"]) for r in rows}, key=lambda c: (c[0], c[1]))
    cell = {(r["n"], r["place"], r["minutes"]): r for r in rows}
    head = " | ".join(f"{p} boxes, {t:g} min" for p, t in cols)
    shipped = " | ".join(f"{base['ap50']:.3f}" for _ in cols)
    lines = [f"| nuclei painted (N) | {head} |", "|---" * (len(cols) + 1) + "|",
             f"| 0 (the shipped model) | {shipped} |"]
    for n in sorted({r["n"] for r in rows}):
        shown = []
        for p, t in cols:
            r = cell.get((n, p, t))
            shown.append("" if r is None else f"{r['ap50']:.3f}" + (
                f" ({r['painted']})" if r["painted"] != n else ""))  # fmt: skip
        lines.append(f"| {n} | {' | '.join(shown)} |")
    return "\n".join(lines)


def add_estimate(result: dict, notes: Annotations, out: Path, by: str, base: Path) -> None:
    """The round's own k-fold estimate (3 folds by rectangle, or by image) into
    ``result["estimates"][by]``."""
    start = base
    epochs = result["steps"] // STEPS_PER_EPOCH
    e = fold_estimate(notes, out / f"estimate-{by}", start, None, 0.0, by=by, epochs=epochs)
    result.setdefault("estimates", {})[by] = {k: e[k] for k in ("k", "ap50", "mean", "sd")}


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    base = json.loads((out / "shipped.json").read_text())
    lines = ["| boxes placed | nuclei painted (boxes) | minutes (steps) | AP@0.5 per image | "
             "pooled AP@0.5 | DSB score | k-fold estimate |", "|---|---|---|---|---|---|---|",
             f"| shipped model, no fine-tuning | 0 | 0 | {base['ap50']:.3f} | "
             f"{base['pooled_ap50']:.3f} | {base['dsb']:.3f} | |"]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["place"], r["minutes"], r["n"])):
        ests = dict(r.get("estimates", {}))
        if "estimate" in r:  # the first runs' estimate, by rectangle
            ests.setdefault("box", r["estimate"])
        shown = "; ".join(f"by {by}: {e['mean']:.3f} +- {e['sd']:.3f} (k={e['k']})"
                          for by, e in sorted(ests.items()))  # fmt: skip
        boxes = "whole images" if r["boxes"] == 0 else f"{r['boxes']} boxes"
        lines.append(f"| {r['place']} | {r['painted']} ({boxes}) | {r['minutes']:g} "
                     f"({r['steps']}) | {r['ap50']:.3f} | {r['pooled_ap50']:.3f} | "
                     f"{r['dsb']:.3f} | {shown} |")  # fmt: skip
    return overview(rows, base) + "\n\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="10,25,50,100,200")
    ap.add_argument("--minutes", default="5,2,10")
    ap.add_argument("--place", default="random,uncertainty")
    ap.add_argument("--uncertainty-minutes", default="5",
                    help="the minutes at which uncertainty-placed boxes are run")
    ap.add_argument("--estimate", default="", metavar="N:T,...",
                    help="cells (random boxes) that also get the k-fold estimate")
    ap.add_argument("--estimate-by", choices=("box", "image"), default="box",
                    help="the estimate's folds: by rectangle or by annotated image")
    ap.add_argument("--annotate", type=int, default=2, help="images the annotator works on")
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--steps-per-minute", type=float, default=210.0)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--out", default="runs/annotator")
    ap.add_argument("--base", type=Path, default=shipped_model("dsb2018-nuclei.pt"),
                    help="the model fine-tuned (default models/dsb2018-nuclei.pt; the docs "
                         "table used the one shipped at commit ab8056a, which never saw the "
                         "dark group)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    group = the_group(find_data("dsb2018-fluo-more"))
    names, images, labels = group
    annotate = names[: args.annotate]
    print(f"group: {len(names)} dark-on-bright images; annotated: {annotate}", flush=True)
    base_file = out / "shipped.json"
    if not base_file.exists():
        base = score(args.base, [k for k in names if k not in annotate],
                     images, labels)  # fmt: skip
        base_file.write_text(json.dumps(base, indent=1) + "\n")
    print("shipped:", json.loads(base_file.read_text())["ap50"], flush=True)
    net = model_from_checkpoint(args.base, "cpu")
    unc = {k: disagreement(net, images[k]) for k in annotate} if "uncertainty" in args.place \
        else None  # fmt: skip
    ns = [int(x) for x in args.n.split(",")]
    estimates = {tuple(float(v) for v in c.split(":")) for c in args.estimate.split(",") if c}
    cells = []
    for t in [float(x) for x in args.minutes.split(",")]:
        for place in args.place.split(","):
            if place == "uncertainty" and t not in [float(x) for x in
                                                    args.uncertainty_minutes.split(",")]:
                continue
            cells += [(n, t, place) for n in ns]
    for n, t, place in cells:
        r = run_one(out / f"{place}-n{n}-t{t:g}", n, t, place, group, annotate, args.box,
                    args.steps_per_minute,
                    args.estimate_by if (n, t) in estimates and place == "random" else "", unc,
                    args.base)
        print(f"{place} n={n} ({r['painted']}) t={t:g}: AP@0.5 {r['ap50']:.3f} pooled "
              f"{r['pooled_ap50']:.3f} DSB {r['dsb']:.3f} ({r['train_seconds']} s)", flush=True)
    print(table(out))


if __name__ == "__main__":
    sys.exit(main())
