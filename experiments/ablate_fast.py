"""What is each of the paper's ideas worth on ISBI 2012? Variants of the `fast` preset,
trained at the same budget (30 epochs x 30 steps, same seed) on slices 0-24 and scored on
slices 25-29 with the official metrics (as `biounet evaluate`), each without and with
8-fold test-time averaging. best.pt is chosen on training loss, so slices 25-29 never
select the model.

    .venv/bin/python experiments/ablate_fast.py [--variants fast,weights,...] [--out runs/ablate]

Variants:
    fast         the preset: same padding, paper augmentation, no weight map, bf16
    weights      + the paper's border weight map (w0 10, sigma 5)
    no-elastic   without the elastic deformation (rotation, shift, flips, gray values stay)
    flips-only   flips and quarter turns only (no elastic, rotation, shift, gray values)
    valid        valid padding like the paper (380 -> 196 tiles, batch 4: about the same
                 pixels computed per step as 8 x 256^2)
    fp32         fp32 instead of bf16 autocast (the bf16 quality check: V_rand within 0.005)

Resumable: a variant whose run directory holds last.pt continues from it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from biounet import get_preset, model_from_checkpoint, predict, train
from biounet.device import select_device
from biounet.io import atomic_path, find_data, read_images, read_masks
from biounet.metrics import isbi_scores

KEYS = ("v_rand", "v_info", "pixel_error", "rand_error", "warping_error")


def variant(name: str):
    p = get_preset("fast")
    t, m = p.train, p.model
    changes = {
        "fast": {},
        "weights": {"weight_map": True},
        "no-elastic": {"augment": replace(t.augment, elastic=False)},
        "flips-only": {
            "augment": replace(t.augment, elastic=False, rotate=False, shift=False, gray=False)
        },  # fmt: skip
        "valid": {"tile": 380, "batch_size": 4},
        "fp32": {"precision": "fp32"},
    }[name]
    if name == "valid":
        m = replace(m, padding="valid")
    # equal steps for every variant: no time limit (slower variants would get fewer epochs)
    changes = {"time_limit": 0.0, **changes}
    return replace(p, name=f"fast-{name}", model=m, train=replace(t, **changes))


VARIANTS = ("fast", "weights", "no-elastic", "flips-only", "valid", "fp32")


def score(checkpoint: Path, tta: bool) -> dict:
    root = find_data("isbi2012")
    images = read_images(root / "train-volume.tif").arrays[25:30]
    labels = read_masks(root / "train-labels.tif").arrays[25:30]
    model, _ = model_from_checkpoint(checkpoint, select_device("auto"))
    probs = [predict(model, img, tta=tta) for img in images]
    r = isbi_scores(probs, labels, metrics=KEYS)
    return {k: r[k] for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="runs/ablate")
    ap.add_argument("--epochs", type=int, default=None, help="override (quick checks)")
    args = ap.parse_args()
    rows = []
    for name in args.variants.split(","):
        run = Path(args.out) / name
        if (run / "last.pt").exists():
            result = train(None, run, resume=True, epochs=args.epochs, progress=False)
        else:
            result = train(variant(name), run, epochs=args.epochs, progress=False)
        for tta in (False, True):
            row = {"variant": name, "tta": tta, "train_min": round(result["total_seconds"] / 60, 1),
                   **score(run / "best.pt", tta)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    with atomic_path(Path(args.out) / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    print("\n| variant | TTA | training | V_rand | V_info | pixel error | Rand error | warping |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {'8x' if r['tta'] else 'no'} | {r['train_min']} min | "
              + " | ".join(f"{r[k]:.4f}" for k in KEYS) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
