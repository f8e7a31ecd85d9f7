"""The two steps of the nnU-Net DSB cell that use biounet's own code (run in biounet's .venv).

    python nnunet_biounet.py targets LABELS OUT      # instance labels -> classes 0/1/2
    python nnunet_biounet.py instances PROBS PRED    # nnU-Net probabilities -> instances

``targets``: each instance label image of LABELS becomes OUT/NAME.png, uint8 classes 0
background, 1 interior, 2 boundary: biounet.targets.contour_target with the nuclei
preset's boundary width (1) and touch width (0), what biounet's `nuclei` model learns.
``instances``: each PROBS/CASE.npz that nnUNetPredictor wrote (``probabilities``,
(3, 1, H, W) float: background, interior, boundary) becomes PRED/CASE-instances.tif by
biounet.instances.instances with the nuclei preset's inference settings (foreground
threshold, seeds, filters), the same seeded watershed as ``biounet predict --instances``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from biounet.instances import instances
from biounet.io import read_instances
from biounet.presets import NUCLEI
from biounet.targets import contour_target


def targets(labels: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    read = read_instances(labels)
    width, touch = NUCLEI.train.boundary_width, NUCLEI.train.touch_width
    for name, lab in zip(read.names, read.arrays, strict=True):
        iio.imwrite(out / f"{name}.png", contour_target(lab, width, touch))
    print(f"{len(read)} contour targets (width {width}, touch {touch}) -> {out}")


def to_instances(probs: Path, pred: Path) -> None:
    import time

    t0 = time.monotonic()
    pred.mkdir(parents=True, exist_ok=True)
    options = NUCLEI.inference.instance_options("contour")
    files = sorted(probs.glob("*.npz"))
    for f in files:
        p = np.load(f)["probabilities"].astype(np.float32)[:, 0]  # (3, H, W)
        lab = instances(p, **options)
        tifffile.imwrite(pred / f"{f.stem}-instances.tif", lab, compression="zlib")
    seconds = time.monotonic() - t0
    print(f"{len(files)} instance images ({options}) -> {pred} in {seconds:.2f} s")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("targets", "instances"):
        raise SystemExit(__doc__)
    step = targets if sys.argv[1] == "targets" else to_instances
    step(Path(sys.argv[2]), Path(sys.argv[3]))
