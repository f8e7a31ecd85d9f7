"""Peak memory of overlap-tile inference: the paper network on a large image (default
8192 x 8192; goal: under 3 GB peak RSS on CPU) against the same run on an image 16x
smaller in area, each in a fresh process. Prints peak RSS, the ratio of the two peaks (16x
the area should cost far less than 16x the memory), and how much of the growth is the image
and the output themselves.

    .venv/bin/python benchmarks/bench_memory.py [--size 8192]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import json, resource, sys, time
import numpy as np, torch
from biounet.model import UNet
from biounet.presets import PRESETS
from biounet.tiling import predict
n = int(sys.argv[1])
torch.manual_seed(0)
model = UNet(PRESETS["paper"].model).eval()
image = (np.random.default_rng(0).random((n, n)) * 255).astype(np.uint8)
t = time.perf_counter()
prob = predict(model, image)
assert prob.shape == (n, n) and prob.dtype == np.float32
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
print(json.dumps({"size": n, "peak_gib": peak, "seconds": time.perf_counter() - t}))
"""


def run(n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    args = ap.parse_args()
    t = time.perf_counter()
    small, big = run(args.size // 4), run(args.size)
    for r in (small, big):
        print(
            f"paper network, {r['size']} x {r['size']}: peak RSS {r['peak_gib']:.2f} GiB, "
            f"{r['seconds']:.0f} s"
        )
    image_gib = args.size**2 * (4 + 4 + 1) / 2**30  # normalised + padded input, output, raw
    print(
        f"16x the area: {big['peak_gib'] / small['peak_gib']:.2f}x the peak RSS; "
        f"growth {big['peak_gib'] - small['peak_gib']:.2f} GiB "
        f"(image, padded copy and output alone: {image_gib:.2f} GiB); goal < 3 GB total: "
        f"{'met' if big['peak_gib'] * 2**30 < 3e9 else 'NOT met'} ({time.perf_counter() - t:.0f} s)"
    )


if __name__ == "__main__":
    main()
