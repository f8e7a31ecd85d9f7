"""Few annotations from a new lab: fine-tuning (`biounet train --init`) against training from
scratch, at the same number of steps, on the bundled DSB 2018 fluorescence nuclei.

The 160 training images (those not in data/splits/dsb2018-fluo-holdout.txt) are split once,
at random, into 120 "other lab" images and 40 "new lab" images:
``numpy.random.default_rng(SPLIT_SEED).permutation(sorted(stems))``, the first 40 new-lab in
that order, the rest other-lab. The subsets of 5, 10 and 20 new-lab images are the first 5,
10 and 20 of the draw (nested). Runs, all with the `nuclei` preset's network, targets, loss,
augmentation and learning rate, steps of 4 tiles, no time limit, no validation during
training (the last epoch's weights):

    base        the 120 other-lab images, --base-epochs epochs (the model to start from)
    scratch-K   K new-lab images from random weights, --epochs epochs
    init-K      K new-lab images from base's weights (fresh optimizer and schedule),
                --epochs epochs: the same steps as scratch-K
    initlow-K   as init-K at a tenth of the preset's peak learning rate (--low-lr)

Each model is scored on the held-out 40 (never trained on) with the preset's instance
settings, without and with 8-view test-time averaging: AP@0.5 (DSB convention, mean over
images of TP / (TP + FP + FN)) and DSB score (mean over IoU thresholds 0.5..0.95).

    .venv/bin/python experiments/finetune.py [--sizes 5,10,20] [--epochs 25]
        [--base-epochs 60] [--seed 0] [--out runs/finetune]

Resumable: a run whose directory holds last.pt continues from it; a scored run keeps its
scores in score.json. A second training seed can reuse the first one's base model: copy
``OUT/base`` into the new --out first. ``--summarise DIR [DIR ...]`` prints the docs table
(8-view TTA, the preset's default) over the seeds' output folders, and their mean.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from nuclei import score, scored_images  # experiments/nuclei.py: the same scoring

from biounet import get_preset, train
from biounet.io import atomic_path, find_data, resolve_data_path

SPLIT_SEED = 2033
HOLDOUT = "data/splits/dsb2018-fluo-holdout.txt"


def new_lab_split(seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(new-lab stems in draw order, other-lab stems sorted) of the 160 training images."""
    root = find_data("dsb2018-fluo")
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    lines = resolve_data_path(HOLDOUT).read_text().splitlines()
    held = {ln.split("#")[0].strip() for ln in lines} - {""}
    train_stems = [s for s in stems if s not in held]
    assert len(train_stems) == 160, len(train_stems)
    order = [train_stems[i] for i in np.random.default_rng(seed).permutation(len(train_stems))]
    return order[:40], sorted(order[40:])


def write_list(path: Path, stems: list[str], what: str) -> str:
    """Write a name list for --train-slices; return its "@path" spec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(f"# {what}\n" + "\n".join(stems) + "\n")
    return "@" + str(path.resolve())


def preset_for(
    name: str, train_list: str, epochs: int, seed: int, init: Path | None, lr: float | None = None
):
    p = get_preset("nuclei")
    cfg = replace(
        p.train,
        lr=lr or p.train.lr,
        train_slices=train_list,
        val_slices="@" + HOLDOUT,  # held out of training; not validated on (val_every 0)
        val_every=0,
        select_by="last",
        epochs=epochs,
        time_limit=0.0,  # equal steps, whatever else the machine is doing
        seed=seed,
        init=str(init) if init is not None else None,
    )
    return replace(p, name=f"finetune-{name}", train=cfg)


def run_and_score(name, preset, out: Path, images, labels) -> list[dict]:
    run = out / name
    done = run / "score.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    if (run / "last.pt").exists():
        result = train(None, run, resume=True, progress=False)
    else:
        result = train(preset, run, progress=False)
    rows = []
    for tta in (False, True):
        row = {"run": name, "tta": tta, "epochs": preset.train.epochs,
               "train_min": round(result["total_seconds"] / 60, 1),
               **score(run / "best.pt", images, labels, tta)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    with atomic_path(done) as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    print(f"({name}: {time.perf_counter() - t0:.0f} s this call)", flush=True)
    return rows


def summarise(dirs: list[Path]) -> None:
    """The docs table: AP@0.5 / DSB score with 8-view TTA per run and seed, and the mean."""
    scores = {}
    for d in dirs:
        for f in sorted(d.glob("*/score.json")):
            row = next(r for r in json.loads(f.read_text()) if r["tta"])
            scores.setdefault(f.parent.name, []).append((row["ap50"], row["dsb_score"]))
    kinds = (("scratch", "from scratch"), ("init", "`--init`, lr 0.002 (the preset's)"),
             ("initlow", "`--init`, lr 0.0002"))  # fmt: skip

    def cell(rows):
        if not rows:
            return "-"
        each = " / ".join(f"{a:.3f}" for a, _ in rows)
        ap, dsb = np.mean([a for a, _ in rows]), np.mean([b for _, b in rows])
        return f"**{ap:.3f}** / {dsb:.3f}" + (f" ({each})" if len(rows) > 1 else "")

    print("| new-lab images | " + " | ".join(k for _, k in kinds) + " |")
    print("| --- " * (len(kinds) + 1) + "|")
    sizes = sorted({int(n.split("-")[1]) for n in scores if "-" in n})
    for k in sizes:
        print(f"| {k} | " + " | ".join(cell(scores.get(f"{kind}-{k}", [])) for kind, _ in kinds)
              + " |")  # fmt: skip
    print(f"\nThe base model itself, before any new-lab image: {cell(scores['base'][:1])}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summarise", nargs="+", metavar="DIR", type=Path)
    ap.add_argument("--sizes", default="5,10,20")
    ap.add_argument("--epochs", type=int, default=25, help="epochs of each few-image run")
    ap.add_argument("--base-epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0, help="training seed (not the split's)")
    ap.add_argument("--low-lr", type=float, default=get_preset("nuclei").train.lr / 10)
    ap.add_argument("--out", default="runs/finetune")
    args = ap.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    out = Path(args.out)
    new, other = new_lab_split()
    base_list = write_list(out / "splits" / "other-lab-120.txt", other, "120 other-lab images")
    base = preset_for("base", base_list, args.base_epochs, args.seed, None)
    images, labels = scored_images(base)
    rows = run_and_score("base", base, out, images, labels)
    for k in (int(s) for s in args.sizes.split(",")):
        spec = write_list(out / "splits" / f"new-lab-{k}.txt", new[:k], f"{k} new-lab images")
        base_model = out / "base" / "best.pt"
        for kind, init, lr in (("scratch", None, None), ("init", base_model, None),
                               ("initlow", base_model, args.low_lr)):  # fmt: skip
            preset = preset_for(f"{kind}-{k}", spec, args.epochs, args.seed, init, lr)
            rows += run_and_score(f"{kind}-{k}", preset, out, images, labels)
    with atomic_path(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    tiles = 4 * get_preset("nuclei").train.steps_per_epoch
    print("\n| run | new-lab images | steps of 4 tiles | TTA | AP@0.5 | DSB score |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        k = "0" if r["run"] == "base" else r["run"].split("-")[1]
        print(f"| {r['run']} | {k} | {r['epochs'] * tiles // 4} | {'8x' if r['tta'] else 'no'} | "
              f"{r['ap50']:.3f} | {r['dsb_score']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
