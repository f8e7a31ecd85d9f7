"""bf16 against fp32: the share of pixels whose thresholded (0.5) masks agree, on ISBI 2012
slices 25-29, for a trained checkpoint (goal: at least 99.9 %), and the speed ratio.

    .venv/bin/python benchmarks/bench_precision.py runs/main/best.pt [--tta]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from biounet import predict
from biounet.checkpoint import model_from_checkpoint
from biounet.io import find_data, read_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--tta", action="store_true")
    args = ap.parse_args()
    model, preset = model_from_checkpoint(args.checkpoint)
    images = read_images(find_data("isbi2012") / "train-volume.tif").arrays[25:30]
    agree, maxdiff, times = [], [], {"fp32": 0.0, "bf16": 0.0}
    for img in images:
        probs = {}
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            probs[precision] = predict(model, img, precision=precision, tta=args.tta)
            times[precision] += time.perf_counter() - t
        agree.append(np.mean((probs["fp32"] > 0.5) == (probs["bf16"] > 0.5)))
        maxdiff.append(np.abs(probs["fp32"] - probs["bf16"]).max())
    tta = " with TTA" if args.tta else ""
    print(f"{preset.name} checkpoint {args.checkpoint}, slices 25-29{tta}:")
    print(
        f"  bf16 vs fp32 masks agree on {100 * np.mean(agree):.3f} % of pixels "
        f"(worst slice {100 * min(agree):.3f} %; goal >= 99.9 %); max |dp| {max(maxdiff):.3f}"
    )
    print(
        f"  time fp32 {times['fp32']:.2f} s, bf16 {times['bf16']:.2f} s: "
        f"{times['fp32'] / times['bf16']:.2f}x"
    )


if __name__ == "__main__":
    main()
