"""The figures of README.md and docs/, from trained models:

- docs/isbi2012-slice25.png: held-out ISBI 2012 slice 25, input | ground truth |
  prediction (8-fold TTA) | thinned segmentation at the threshold that maximises V_rand.
- docs/nuclei.png: held-out DSB 2018 images with touching nuclei, image | reference
  outlines | predicted outlines.

    .venv/bin/python experiments/figures.py [--isbi models/isbi2012.pt]
        [--nuclei runs/nuclei/nuclei/best.pt] [--out docs]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from biounet import model_from_checkpoint, predict, segment
from biounet.dataset import parse_slices
from biounet.io import find_data, read_images, read_instances, read_masks, resolve_data_path
from biounet.metrics import isbi_scores, thinned_segments
from biounet.plots import plot_outlines, plot_segmentation


def isbi_figure(checkpoint: Path, out: Path, slice_: int = 25) -> None:
    root = find_data("isbi2012")
    image = read_images(root / "train-volume.tif").arrays[slice_]
    label = read_masks(root / "train-labels.tif").arrays[slice_]
    prob = predict(checkpoint, image, tta=True)
    r = isbi_scores(prob, label, metrics=("v_rand", "v_info"))
    seg = thinned_segments(prob, r["v_rand_threshold"])
    title = (f"ISBI 2012 slice {slice_} (held out), {checkpoint.name}: V_rand {r['v_rand']:.4f}, "
             f"V_info {r['v_info']:.4f} at threshold {r['v_rand_threshold']:g}")  # fmt: skip
    plot_segmentation(image, label * 255, prob, seg, out / f"isbi2012-slice{slice_}.png", title)


def nuclei_figure(checkpoint: Path, out: Path, count: int = 3) -> None:
    model, preset = model_from_checkpoint(checkpoint)
    cfg = preset.train
    tta_on = replace(preset.inference, tta=True)  # the stored setting, on 8-view averages
    images = read_images(resolve_data_path(cfg.images))
    labels = read_instances(resolve_data_path(cfg.labels))
    order = {n: i for i, n in enumerate(labels.names)}
    held = parse_slices(cfg.val_slices, len(images), "held-out", images.names)

    def touching(i: int) -> int:  # objects minus foreground components: touching pairs
        lab = labels.arrays[order[images.names[i]]]
        return len(np.unique(lab)) - 1 - ndimage.label(lab > 0)[1]

    chosen = sorted(held, key=touching, reverse=True)[:count]
    crops = []
    for i in chosen:
        img, lab = images.arrays[i], labels.arrays[order[images.names[i]]]
        pred = segment((model, preset), img, tta_on, outputs=["instances"]).instances
        crops.append([a[:256, :256] for a in (img, lab, pred)])
    plot_outlines(*zip(*crops, strict=True), out / "nuclei.png",
                  [images.names[i] for i in chosen])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isbi", default="models/isbi2012.pt")
    ap.add_argument("--nuclei", default="models/dsb2018-nuclei.pt")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    out = Path(args.out)
    if Path(args.isbi).is_file():
        isbi_figure(Path(args.isbi), out)
        print(f"wrote {out / 'isbi2012-slice25.png'}")
    if Path(args.nuclei).is_file():
        nuclei_figure(Path(args.nuclei), out)
        print(f"wrote {out / 'nuclei.png'}")


if __name__ == "__main__":
    main()
