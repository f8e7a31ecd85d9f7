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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from biounet import model_from_checkpoint, predict, segment
from biounet.dataset import parse_slices
from biounet.io import find_data, read_images, read_instances, read_masks, resolve_data_path
from biounet.metrics import isbi_scores, thinned_segments
from biounet.plots import pyplot, save_figure


def _colours(n: int, seed: int = 0) -> np.ndarray:
    """(n + 1, 3) random bright colours, row 0 black (background)."""
    c = np.random.default_rng(seed).uniform(0.25, 1.0, (n + 1, 3))
    c[0] = 0
    return c


def plot_segmentation(
    image: np.ndarray,
    label: np.ndarray,
    prob: np.ndarray,
    segments: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """One held-out slice: input | ground truth | prediction P(cell) | thinned segmentation
    (the ISBI 2012 proposal: segments in colour, one-pixel boundaries black)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = (
        (image, "input", {"cmap": "gray"}),
        (label, "ground truth (cell = white)", {"cmap": "gray"}),
        (prob, "prediction P(cell)", {"cmap": "magma", "vmin": 0, "vmax": 1}),
        (_colours(int(segments.max()))[segments], "thinned segmentation", {}),
    )
    for ax, (data, name, kw) in zip(axes, panels, strict=True):
        ax.imshow(data, **kw)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94) if title else None)
    return save_figure(fig, path)


def plot_outlines(
    images: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    path: str | Path,
    names: Sequence[str] | None = None,
) -> Path:
    """One row per image: image | reference outlines | predicted outlines (instance
    boundaries drawn in colour over the image, one colour per object)."""
    from skimage.segmentation import find_boundaries

    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(12, 4 * n), squeeze=False)
    for i in range(n):
        img = images[i].astype(np.float32)
        lo, hi = np.percentile(img, (0.5, 99.5))
        gray = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)[..., None].repeat(3, -1)
        for ax, lab, what in ((axes[i][1], references[i], "reference"),
                              (axes[i][2], predictions[i], "predicted")):  # fmt: skip
            lab = np.asarray(lab, np.int64)
            edge = find_boundaries(lab, mode="inner")
            over = gray.copy()
            over[edge] = _colours(int(lab.max()), seed=i)[lab[edge]]
            ax.imshow(over)
            ax.set_title(f"{what} outlines ({len(np.unique(lab)) - 1} objects)", fontsize=10)
        axes[i][0].imshow(gray)
        axes[i][0].set_title(names[i] if names else "image", fontsize=10)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


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


HOLDOUT = "@data/splits/dsb2018-fluo-holdout.txt"  # the 40 no shipped or preset model trains on


def nuclei_figure(checkpoint: Path, out: Path, count: int = 3) -> None:
    model, preset = model_from_checkpoint(checkpoint)
    tta_on = replace(preset.inference, tta=True)  # the stored setting, on 8-view averages
    images = read_images(resolve_data_path("data/dsb2018-fluo/images"))
    labels = read_instances(resolve_data_path("data/dsb2018-fluo/labels"))
    order = {n: i for i, n in enumerate(labels.names)}
    held = parse_slices(HOLDOUT, len(images), "held-out", images.names)

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
