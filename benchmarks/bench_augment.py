"""Augmentation speed: biounet's one-grid elastic + rotation + shift + flip + gray pipeline
on a 572 x 572 tile with label and weight map, against the `elasticdeform` package (image +
label only, same 3 x 3 grid, 10 px), and the loader's throughput against the `paper`
preset's training speed. Prints ratios measured in this run.

    .venv/bin/python benchmarks/bench_augment.py    # needs: pip install elasticdeform
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tifffile
import torch

from biounet.augment import augment
from biounet.dataset import TileSampler
from biounet.io import find_data
from biounet.losses import segmentation_loss
from biounet.model import UNet
from biounet.normalization import normalize
from biounet.presets import PRESETS
from biounet.weights import cached_weight_maps


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    preset = PRESETS["paper"]
    cfg, S, s = preset.train.augment, preset.train.tile, 388
    root = find_data("isbi2012")
    images = [normalize(a) for a in tifffile.imread(root / "train-volume.tif")[:25]]
    masks = [(m == 255).astype(np.uint8) for m in tifffile.imread(root / "train-labels.tif")[:25]]
    weights = cached_weight_maps(masks, 10.0, 5.0)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    sampler = TileSampler(images, masks, S, s, rng, weights, cfg.margin(S))

    def ours():
        x, y, w = sampler.sample(1)
        return augment(x, y, w, cfg, gen, tile=S, label_size=s)

    t_ours = timed(ours, 30)
    print(f"biounet: 572 tile + label + weights, sampled and augmented: {t_ours * 1e3:.1f} ms")

    try:
        import elasticdeform
    except ImportError:
        print("elasticdeform not installed: pip install elasticdeform (benchmark only)")
        t_ed = None
    else:
        img, lab = images[0][:S, :S].copy(), masks[0][:S, :S].copy()

        def theirs():
            return elasticdeform.deform_random_grid([img, lab], sigma=10, points=3, order=[3, 0])

        t_ed = timed(theirs, 10)
        print(f"elasticdeform: 572 image + label (3 x 3 grid, bicubic image): {t_ed * 1e3:.1f} ms")
        print(f"ratio elasticdeform / biounet: {t_ed / t_ours:.1f}x faster")

    model = UNet(preset.model).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    x, y, w = ours()
    x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = segmentation_loss(logits, y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_step = timed(step, 2)
    print(f"paper preset training step (572 tile, bf16): {t_step:.2f} s")
    print(f"loader throughput / training steps per second: {t_step / t_ours:.0f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
