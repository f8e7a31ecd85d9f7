"""Seconds per held-out DSB image with 8-view test-time averaging: nuclei models against the
first one named (the baseline), measured in the same run, in interleaved rounds.

    .venv/bin/python benchmarks/bench_nuclei_time.py [--models A.pt B.pt ...] [--rounds 3]
        [--widths 16,24,32] [--images 40] [--no-tta] [--threads N]

--models: each model segments the held-out images with its stored settings (network, TTA,
watershed: what `biounet predict --instances` does), default models/dsb2018-nuclei.pt.
To time the model a commit shipped: `git show REV:models/dsb2018-nuclei.pt > old.pt`.
--widths: instead, the first model's network at other base channel counts with random
weights, the network and its 8 views only (random weights make the watershed's time
meaningless); the ratio is against the first width.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from biounet import segment
from biounet.checkpoint import model_from_checkpoint
from biounet.config import TileOptions
from biounet.io import find_data, read_images
from biounet.model import UNet, count_parameters
from biounet.tiling import probabilities


def held_out(n: int) -> list[np.ndarray]:
    dsb = find_data("dsb2018-fluo")
    lines = (dsb.parent / "splits" / "dsb2018-fluo-holdout.txt").read_text().splitlines()
    keep = [s.strip() for s in lines if s.strip() and not s.startswith("#")][:n]
    imgs = read_images(dsb / "images")
    by_name = dict(zip(imgs.names, imgs.arrays, strict=True))
    return [by_name[k] for k in keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["models/dsb2018-nuclei.pt"])
    ap.add_argument("--widths", help="comma-separated base channel counts (random weights)")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = held_out(args.images)
    pixels = sum(a.shape[0] * a.shape[1] for a in images)
    base_model, base_preset = model_from_checkpoint(args.models[0])
    runs = {}
    if args.widths:
        for c in (int(w) for w in args.widths.split(",")):
            torch.manual_seed(0)
            net = UNet(replace(base_preset.model, base_channels=c, channels=None)).eval()
            runs[f"{c} base channels ({count_parameters(net) / 1e6:.2f} M parameters)"] = (
                lambda img, net=net: probabilities(net, img, TileOptions(tta=args.tta)))
    else:
        for path in args.models:
            model, preset = model_from_checkpoint(path)
            config = replace(preset.inference, tta=args.tta)
            runs[f"{path} ({preset.model.base_channels} base channels)"] = (
                lambda img, m=model, p=preset, c=config:
                segment((m, p), img, c, outputs=["instances"]))  # fmt: skip
    for run in runs.values():  # warm-up: first calls allocate and pick kernels
        run(images[0])
    seconds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            for img in images:
                run(img)
            seconds[name].append(time.perf_counter() - t)
    first = None
    print(f"{len(images)} held-out DSB images ({pixels / len(images) / 1e3:.0f} kpx on average), "
          f"{'8-view TTA' if args.tta else 'one view'}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds:")  # fmt: skip
    for name, s in seconds.items():
        per_image = float(np.median(s)) / len(images)
        first = first or per_image
        print(f"  {name}: {per_image:.3f} s per image, {per_image / first:.2f}x the first")


if __name__ == "__main__":
    main()
