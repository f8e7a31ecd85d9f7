"""Compiled against eager prediction with the shipped models in their own precision (bf16
where the CPU has it): the share of equal mask pixels on ISBI 2012 slices 25-29 with
`models/isbi2012.pt` (goal: at least 99.9 %), and of equal nucleus pixels on the 40
held-out DSB images with `models/dsb2018-nuclei.pt`, with the largest probability
difference and the speed ratio (compile time apart).

    .venv/bin/python benchmarks/bench_compile_equal.py [--tta] [--nuclei 40]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from biounet import segment
from biounet.checkpoint import model_from_checkpoint
from biounet.config import TileOptions
from biounet.io import find_data, read_images
from biounet.tiling import probabilities


def compare(model, preset, images, tta: bool, instances: bool) -> dict:
    config = replace(preset.inference, tta=tta)
    agree, maxdiff, times, first = [], [], {"eager": 0.0, "compiled": 0.0}, None
    for img in images:
        out = {}
        for name, compile in (("eager", False), ("compiled", True)):
            t = time.perf_counter()
            if instances:
                seg = segment((model, preset), img, config, outputs=["instances"],
                              options=TileOptions(compile=compile))  # fmt: skip
                out[name] = (seg.instances > 0, None)
            else:
                p = probabilities(model, img, TileOptions(tta=tta, compile=compile))
                out[name] = (p > 0.5, p)
            seconds = time.perf_counter() - t
            if compile and first is None:
                first = seconds  # the first compiled call compiles
            else:
                times[name] += seconds
        agree.append(np.mean(out["eager"][0] == out["compiled"][0]))
        if out["eager"][1] is not None:
            maxdiff.append(float(np.abs(out["eager"][1] - out["compiled"][1]).max()))
    return {"agree": agree, "maxdiff": maxdiff, "times": times, "compile_seconds": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--nuclei", type=int, default=40, help="held-out DSB images (0: skip)")
    args = ap.parse_args()
    root = find_data("isbi2012").parent.parent
    cases = [("models/isbi2012.pt", read_images(find_data("isbi2012") / "train-volume.tif")
              .arrays[25:30], False, "ISBI slices 25-29, masks p > 0.5")]  # fmt: skip
    if args.nuclei:
        dsb = find_data("dsb2018-fluo")
        lines = (dsb.parent / "splits" / "dsb2018-fluo-holdout.txt").read_text().splitlines()
        held = [n.strip() for n in lines if n.strip() and not n.startswith("#")]
        imgs = read_images(dsb / "images")
        keep = set(held[: args.nuclei])
        arrays = [a for n, a in zip(imgs.names, imgs.arrays, strict=True) if n in keep]
        cases.append(("models/dsb2018-nuclei.pt", arrays, True,
                      f"{len(arrays)} held-out DSB images, nucleus pixels"))  # fmt: skip
    for path, images, instances, what in cases:
        model, preset = model_from_checkpoint(root / path)
        r = compare(model, preset, images, args.tta, instances)
        t = r["times"]
        print(f"{path} ({'TTA' if args.tta else 'no TTA'}), {what}:")
        print(f"  compiled vs eager agree on {100 * np.mean(r['agree']):.3f} % of pixels (worst "
              f"image {100 * min(r['agree']):.3f} %; goal >= 99.9 %)"
              + (f"; max |dp| {max(r['maxdiff']):.4f}" if r["maxdiff"] else ""))  # fmt: skip
        print(f"  eager {t['eager']:.2f} s, compiled {t['compiled']:.2f} s (+ {r['compile_seconds']:.1f} s "
              f"for the first image, compiling): {t['eager'] / t['compiled']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
