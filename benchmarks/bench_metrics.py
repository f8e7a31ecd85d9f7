"""Metric speed on the 30-slice ISBI 2012 stack (a blurred, noisy copy of the labels as
the prediction): all metrics but warping error over 11 thresholds (goal < 20 s on 2
cores), and warping error (goal < 60 s), against scikit-image's watershed-free
`adapted_rand_error` at one threshold as a same-run yardstick.

    .venv/bin/python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import time

import numpy as np
import tifffile
from scipy import ndimage
from skimage.metrics import adapted_rand_error

from biounet.io import find_data
from biounet.metrics import FOUR, isbi_scores, warping_error


def main() -> None:
    labels = tifffile.imread(find_data("isbi2012") / "train-labels.tif")
    rng = np.random.default_rng(0)
    probs = [
        np.clip(ndimage.gaussian_filter((lab == 255).astype(np.float32), 2)
                + rng.normal(0, 0.1, lab.shape), 0, 1).astype(np.float32)
        for lab in labels
    ]  # fmt: skip
    t = time.perf_counter()
    r = isbi_scores(probs, labels, metrics=("v_rand", "v_info", "pixel_error", "rand_error",
                                            "iou", "dice", "seg"))  # fmt: skip
    t_all = time.perf_counter() - t
    t = time.perf_counter()
    w = np.mean([warping_error(p, g) for p, g in zip(probs, labels, strict=True)])
    t_warp = time.perf_counter() - t
    t = time.perf_counter()
    for p, g in zip(probs, labels, strict=True):
        adapted_rand_error(ndimage.label(g > 0, structure=FOUR)[0],
                           ndimage.label(p > 0.5, structure=FOUR)[0])  # fmt: skip
    t_sk = time.perf_counter() - t
    print(
        f"30 slices x 11 thresholds, all metrics but warping: {t_all:.1f} s (goal < 20 s); "
        f"V_rand {r['v_rand']:.4f}, V_info {r['v_info']:.4f}"
    )
    print(f"warping error, 30 slices: {t_warp:.1f} s (goal < 60 s); {w:.6f}")
    print(
        f"yardstick: scikit-image adapted_rand_error, 30 slices x 1 threshold, no thinning: "
        f"{t_sk:.2f} s; ours per slice-threshold {t_all / 330 * 1e3:.0f} ms vs "
        f"{t_sk / 30 * 1e3:.0f} ms ({t_all / 330 / (t_sk / 30):.1f}x, thinning included)"
    )


if __name__ == "__main__":
    main()
