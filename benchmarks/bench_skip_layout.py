"""The `paper` training step with the skip connections' crop-and-concatenate done by autograd's
slicing (the old way: the skip's gradient comes back plain contiguous under channels_last)
against `model._CropConcat` (the gradient keeps the skip's layout), one step of each per
round, interleaved so that a machine whose speed drifts moves both alike. Prints each
round and the median of the per-round speed-ups. Meaningful where the step runs
channels_last: bf16 on a CPU with native bf16, or a GPU.

    .venv/bin/python benchmarks/bench_skip_layout.py [--rounds 8] [--device auto]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from biounet import bench, get_preset
from biounet import model as unet
from biounet.device import resolve_precision, select_device


def sliced_forward(self, x, skip):
    """``Up.forward`` as it was: centre-crop by slicing, then concatenate."""
    x = self.up(x)
    dy = (skip.shape[-2] - x.shape[-2]) // 2
    dx = (skip.shape[-1] - x.shape[-1]) // 2
    skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
    return self.conv(torch.cat([skip, x], dim=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = select_device(args.device)
    preset = get_preset("paper")
    precision = resolve_precision(preset.train.precision, device)
    torch.manual_seed(0)
    step = bench.train_step_fn(unet.UNet(preset.model), preset, device, precision, True)
    current = unet.Up.forward

    def timed(forward) -> float:
        unet.Up.forward = forward
        try:
            return bench.time_once(step, device)
        finally:
            unet.Up.forward = current

    timed(current), timed(sliced_forward)  # warm-up
    rounds = [(timed(sliced_forward), timed(current)) for _ in range(args.rounds)]
    for old, new in rounds:
        print(f"sliced {old:.3f} s   _CropConcat {new:.3f} s   {old / new:.2f}x")
    print(f"paper step on {device} ({precision}), median of {args.rounds} rounds: "
          f"{np.median([o / n for o, n in rounds]):.2f}x faster with _CropConcat")  # fmt: skip


if __name__ == "__main__":
    main()
