"""Inference speed: biounet.predict (overlap-tile, batched, channels_last, bf16 where the
CPU has it) against MONAI's sliding_window_inference with Gaussian blending (same model,
tile and overlap) and against a plain fp32 whole-image pass, on a 2048 x 2048 image; and
for the paper's valid-padding network, against a naive fixed-tile fp32 loop. Prints
megapixels per second and ratios measured in this run.

    .venv/bin/python benchmarks/bench_predict.py [--size 2048]
    # MONAI is a benchmark-only extra: pip install --no-deps monai
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from biounet.model import UNet
from biounet.normalization import normalize
from biounet.presets import PRESETS
from biounet.tiling import plan_tiles, predict


def timed(fn, repeat: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    N, T = args.size, args.tile
    mpx = N * N / 1e6
    image = rng.random((N, N)).astype(np.float32)
    x = torch.from_numpy(normalize(image))[None, None]

    model = UNet(PRESETS["fast"].model).eval()
    plain = copy.deepcopy(model)  # the baselines get the model as a user would have it
    plan = plan_tiles(model.config, (N, N), tile=T, precision="bf16")
    rows = []
    t_ours = timed(lambda: predict(model, image, tile=T))
    rows.append((f"biounet.predict, tile {T} (auto precision)", t_ours))
    t_ours32 = timed(lambda: predict(model, image, tile=T, precision="fp32"))
    rows.append((f"biounet.predict, tile {T} (fp32)", t_ours32))
    auto = plan_tiles(model.config, (N, N), precision="bf16")
    t_auto = timed(lambda: predict(model, image))
    rows.append((f"biounet.predict, default plan (tile {auto.tile})", t_auto))

    def whole():
        with torch.inference_mode():
            return torch.softmax(plain(x), 1)

    t_whole = timed(whole, 1)
    rows.append(("plain fp32 whole-image pass", t_whole))
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("MONAI not installed (pip install --no-deps monai): skipping that baseline")
        t_monai = None
    else:

        def monai():
            with torch.inference_mode():
                return sliding_window_inference(
                    x, (T, T), plan.batch, lambda t: torch.softmax(plain(t), 1),
                    overlap=0.25, mode="gaussian",
                )  # fmt: skip

        t_monai = timed(monai, 1)
        rows.append(
            (f"MONAI sliding_window_inference (gaussian, fp32, batch {plan.batch})", t_monai)
        )
    print(
        f"fast network ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{N} x {N} image, overlap 0.25:"
    )
    for name, t in rows:
        print(f"  {name:<62} {t:7.2f} s  {mpx / t:6.2f} Mpx/s")
    if t_monai:
        print(f"  ratio MONAI / biounet: {t_monai / t_ours:.2f}x (goal >= 1.5x)")
    print(f"  ratio whole-image fp32 / biounet default: {t_whole / t_auto:.2f}x (goal >= 2x)")

    paper = UNet(PRESETS["paper"].model).eval()
    paper_plain = copy.deepcopy(paper)
    M = min(N, 1024)
    small = image[:M, :M]
    t_paper = timed(lambda: predict(paper, small), 1)
    xs = normalize(small)

    def naive():  # fixed 572 tiles, one at a time, fp32, contiguous memory
        pad = np.pad(xs, ((92, 92 + 388), (92, 92 + 388)), mode="reflect")
        out = np.zeros((M, M), np.float32)
        with torch.inference_mode():
            for y in range(0, M, 388):
                for x0 in range(0, M, 388):
                    t = torch.from_numpy(pad[y : y + 572, x0 : x0 + 572].copy())[None, None]
                    p = F.softmax(paper_plain(t), 1)[0, 1].numpy()
                    h, w = min(388, M - y), min(388, M - x0)
                    out[y : y + h, x0 : x0 + w] = p[:h, :w]
        return out

    t_naive = timed(naive, 1)
    print(f"paper network (valid padding), {M} x {M} image:")
    print(
        f"  {'biounet.predict (auto tile and precision)':<62} {t_paper:7.2f} s  "
        f"{M * M / 1e6 / t_paper:6.2f} Mpx/s"
    )
    print(
        f"  {'naive fixed 572-tile loop, fp32':<62} {t_naive:7.2f} s  "
        f"{M * M / 1e6 / t_naive:6.2f} Mpx/s"
    )
    print(f"  ratio naive / biounet: {t_naive / t_paper:.2f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
