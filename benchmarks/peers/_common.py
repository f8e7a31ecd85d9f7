"""What every peer driver shares: the command line, reading and writing the plain files
biounet exchanges with them, the wall-clock budget and train_log.json.

Runs inside a peer's own virtual environment (benchmarks/peers/setup.sh), so it needs only
numpy, tifffile and imageio, never biounet. Data in: folders of 2D images (PNG / TIFF) and
labels paired by file stem (run.sh makes them from biounet's data and split). Data out,
in OUT/pred/, as ``biounet evaluate`` reads them:

- dsb: ``NAME-instances.tif``, uint16/uint32 instance labels (0 = background), one per
  test image (``evaluate PRED LABELS --instances`` pairs NAME-instances with NAME);
- isbi: ``NAME.tif``, float32 P(cell) in [0, 1] (membrane = 0, as ISBI 2012's labels),
  which ``evaluate PRED LABELS`` scores as probability maps.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

SUFFIXES = (".png", ".tif", ".tiff")


def parse_args(description: str, extra=None) -> argparse.Namespace:
    """The drivers' common command line (``extra(parser)`` adds a peer's own flags)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--task", choices=("dsb", "isbi"), required=True,
                   help="dsb: nuclei instances; isbi: EM membranes (P(cell) maps)")
    p.add_argument("--train-images", type=Path, required=True)
    p.add_argument("--train-labels", type=Path, required=True,
                   help="dsb: instance labels; isbi: masks, 0 = membrane, 255 = cell")
    p.add_argument("--test-images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True,
                   help="OUT/pred (predictions), OUT/work (the peer's files), "
                        "OUT/train_log.json")
    p.add_argument("--minutes", type=float, required=True,
                   help="wall-clock training budget (data preparation not counted)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the peer")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="the peer's own test-time augmentation where it has one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="tiny run to check the plumbing: few steps per epoch")
    if extra:
        extra(p)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "pred").mkdir(exist_ok=True)
    (a.out / "work").mkdir(exist_ok=True)
    return a


def limit_threads(n: int) -> None:
    """Ask every numeric library to use ``n`` threads (call before importing them)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by name."""
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"{folder}: no PNG/TIFF images")
    return files


def read(path: Path) -> np.ndarray:
    """(H, W) array of a 2D PNG / TIFF, in its stored dtype (equal colour channels -> gray)."""
    a = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else iio.imread(path)
    if a.ndim == 3:  # colour: the bundled images have equal channels
        a = a[..., 0] if a.shape[-1] in (3, 4) else a[0]
    return np.asarray(a)


def pairs(images: Path, labels: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, image, label) for every image of ``images`` with a label of the same stem."""
    by_stem = {f.stem: f for f in image_files(labels)}
    out = []
    for f in image_files(images):
        if f.stem not in by_stem:
            raise SystemExit(f"{f}: no label named {f.stem}.* in {labels}")
        out.append((f.stem, read(f), read(by_stem[f.stem])))
    return out


def write_prediction(out: Path, task: str, stem: str, array: np.ndarray) -> None:
    """OUT/pred/STEM-instances.tif (dsb: instance labels) or STEM.tif (isbi: P(cell))."""
    if task == "dsb":
        lab = np.asarray(array)
        dtype = np.uint16 if lab.max(initial=0) < 65536 else np.uint32
        tifffile.imwrite(out / "pred" / f"{stem}-instances.tif", lab.astype(dtype),
                         compression="zlib")
    else:
        p = np.clip(np.asarray(array, np.float32), 0.0, 1.0)
        tifffile.imwrite(out / "pred" / f"{stem}.tif", p)


class Budget:
    """The wall-clock training budget: ``left()`` seconds, ``over()`` once spent."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60.0
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def over(self) -> bool:
        return self.left() <= 0


def write_log(out: Path, **fields) -> None:
    """OUT/train_log.json: what training reached (steps, epochs, wall seconds, settings)."""
    (out / "train_log.json").write_text(json.dumps(fields, indent=1, default=str) + "\n")
    print("train_log:", json.dumps(fields, default=str))
