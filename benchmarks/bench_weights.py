"""Weight-map speed: biounet.weight_map on all 30 ISBI 2012 training labels (goal: at most
1.5 s in total on 2 cores) against the slow reference kept in the tests (one full-image
distance transform per cell, sorted) on one slice. Prints the ratio per slice.

    .venv/bin/python benchmarks/bench_weights.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from biounet import weight_map
from biounet.io import find_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_weights import slow_weight_map  # noqa: E402


def main() -> None:
    labels = tifffile.imread(find_data("isbi2012") / "train-labels.tif")
    weight_map(labels[0])  # warm-up
    t = time.perf_counter()
    maps = [weight_map(lab) for lab in labels]
    fast = time.perf_counter() - t
    t = time.perf_counter()
    ref = slow_weight_map(labels[0])
    slow = time.perf_counter() - t
    err = float(np.abs(maps[0] - ref).max())
    print(
        f"biounet.weight_map: {len(labels)} slices of 512 x 512 in {fast:.2f} s "
        f"({fast / len(labels) * 1e3:.0f} ms per slice; goal <= 1.5 s in total)"
    )
    print(f"slow reference: {slow:.2f} s for one slice; max |difference| {err:.1e}")
    print(f"ratio per slice: {slow / (fast / len(labels)):.0f}x faster")


if __name__ == "__main__":
    main()
