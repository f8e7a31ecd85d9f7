"""Instance post-processing speed (goal: <= 50 ms per 256 x 256 image).

Inputs are made from the bundled DSB 2018 labels of every 256 x 256 image: the binary
and contour targets, blurred (Gaussian, sigma 1.5 px) so they look like a network's soft
output. Prints milliseconds per image (median of 5 passes over all images) for
`binary_instances` (components + carved borders grown back) and `contour_instances`
(seeded watershed; also with the `nuclei` preset's stored setting, seeds at the peaks of
P(interior), with it plus the seed split, the slowest option, and with thresholded seeds
instead of peaks), against plain connected components measured in the same run.

    .venv/bin/python benchmarks/bench_instances.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from biounet import get_preset
from biounet.instances import binary_instances, connected_components, contour_instances
from biounet.io import find_data, read_instances
from biounet.targets import binary_target, contour_target


def _median_ms(f, items) -> float:
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for it in items:
            f(it)
        runs.append((time.perf_counter() - t0) / len(items) * 1000)
    return float(np.median(runs))


def main() -> None:
    labels = read_instances(find_data("dsb2018-fluo") / "labels")
    small = [a for a in labels.arrays if a.shape == (256, 256)]
    binary = [ndimage.gaussian_filter(binary_target(a).astype(np.float32), 1.5) for a in small]
    contour = []
    for a in small:
        t = contour_target(a)
        p = np.stack([ndimage.gaussian_filter((t == k).astype(np.float32), 1.5) for k in range(3)])
        contour.append(p / p.sum(0, keepdims=True))
    base = _median_ms(connected_components, binary)
    b = _median_ms(binary_instances, binary)
    c = _median_ms(lambda p: contour_instances(p, min_size=15), contour)
    options = get_preset("nuclei").inference.instance_options("contour")
    fg = options.pop("threshold")
    n = _median_ms(lambda p: contour_instances(p, foreground_threshold=fg, **options), contour)
    split = {**options, "split_solidity": 0.9, "split_depth": 4.0}
    s = _median_ms(lambda p: contour_instances(p, foreground_threshold=fg, **split), contour)
    plain = {**options, "seed_dynamics": 0.0}
    d = _median_ms(lambda p: contour_instances(p, foreground_threshold=fg, **plain), contour)
    print(f"{len(small)} DSB images of 256 x 256")
    print(f"connected components (baseline)  {base:6.2f} ms/image")
    print(f"binary_instances                 {b:6.2f} ms/image  ({b / base:.1f}x the baseline)")
    print(f"contour_instances                {c:6.2f} ms/image  ({c / base:.1f}x the baseline)")
    print(f"contour, nuclei preset setting   {n:6.2f} ms/image  ({n / base:.1f}x the baseline)")
    print(f"the same with the seed split     {s:6.2f} ms/image  ({s / base:.1f}x the baseline)")
    print(f"the same, thresholded seeds      {d:6.2f} ms/image  ({d / base:.1f}x the baseline)")
    print(f"goal <= 50 ms/image: {'met' if max(b, c, n, s, d) <= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
