"""Peak memory of predicting images larger than memory: ``biounet predict MODEL in.zarr
--out out.zarr`` with an (untrained) `fast` network, no TTA, on synthetic uint8 Zarr
images of 4096^2, 8192^2 and 16384^2 pixels, each in a fresh process. Prints each run's
peak resident memory and time, and the ratio of the largest image's peak to the smallest
one's (goal: within 1.25x, and every peak under 1.5 GB): the image is read, predicted and
written block by block, so memory must not grow with its area (16x here).

    .venv/bin/python benchmarks/bench_large.py [--sizes 4096 8192 16384] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from biounet.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB -> bytes
print(json.dumps({"code": code, "peak": peak, "seconds": time.perf_counter() - t}))
"""


def fast_checkpoint(folder: Path) -> Path:
    """An untrained network of the `fast` preset (weights as initialised, seed 0)."""
    import torch

    from biounet.checkpoint import save_checkpoint
    from biounet.model import UNet
    from biounet.presets import PRESETS

    torch.manual_seed(0)
    preset = PRESETS["fast"]
    weights = UNet(preset.model).state_dict()
    return save_checkpoint(folder / "fast.pt", {"preset": preset.to_dict(), "model": weights})


def synthetic_zarr(path: Path, n: int) -> Path:
    """An (n, n) uint8 Zarr of smooth blobs and noise, 1024 x 1024 chunks, written a band of
    chunks at a time."""
    import numpy as np
    import zarr

    rng = np.random.default_rng(n)
    array = zarr.create_array(str(path), shape=(n, n), dtype=np.uint8, chunks=(1024, 1024),
                              dimension_names=("y", "x"))  # fmt: skip
    x = np.arange(n, dtype=np.float32)
    for y in range(0, n, 1024):
        yy = np.arange(y, min(y + 1024, n), dtype=np.float32)[:, None]
        blobs = np.sin(yy / 37.0) * np.cos(x / 53.0)  # cell-sized bumps
        noise = rng.normal(0, 20, (len(yy), n))
        array[y : y + len(yy)] = np.clip(128 + 80 * blobs + noise, 0, 255).astype(np.uint8)
    return path


def run(model: Path, image: Path, out: Path) -> dict:
    argv = ["predict", str(model), str(image), "--out", str(out), "--no-tta", "--no-progress"]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"predict failed on {image}:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"predict exited {result['code']} on {image}:\n{done.stderr[-2000:]}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep its files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        model = fast_checkpoint(folder)
        results = {}
        for n in args.sizes:
            image = synthetic_zarr(folder / f"in-{n}.zarr", n)
            r = results[n] = run(model, image, folder / f"out-{n}.zarr")
            print(f"{n} x {n} uint8 ({n * n / 1e6:.0f} Mpx): peak RSS {r['peak'] / 1e9:.2f} GB, "
                  f"{r['seconds']:.0f} s ({n * n / 1e6 / r['seconds']:.2f} Mpx/s)", flush=True)
            if not args.keep:  # keep the disk small
                import shutil

                shutil.rmtree(image)
                shutil.rmtree(folder / f"out-{n}.zarr")
    small, big = min(results), max(results)
    ratio = results[big]["peak"] / results[small]["peak"]
    worst = max(r["peak"] for r in results.values())
    met = ratio <= 1.25 and worst < 1.5e9
    print(f"{(big / small) ** 2:.0f}x the area: {ratio:.3f}x the peak RSS "
          f"({results[small]['peak'] / 1e9:.2f} -> {results[big]['peak'] / 1e9:.2f} GB); goal "
          f"<= 1.25x and < 1.5 GB: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t:.0f} s in all)")
