"""Exported models against PyTorch: biounet.predict of the same network as a checkpoint
(bf16 where the CPU has it, and fp32), as ONNX through onnxruntime and as TorchScript, on a
2048 x 2048 image with the same tiling. Prints megapixels per second and each one's ratio
to PyTorch with the automatic precision, all measured in this run.

    .venv/bin/python benchmarks/bench_onnx.py [--size 2048] [--model models/dsb2018-nuclei.pt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from biounet.bench import time_once
from biounet.checkpoint import model_from_checkpoint
from biounet.device import resolve_precision
from biounet.exported import export, load_model
from biounet.tiling import predict


def timed(fn, repeat: int) -> float:
    """Best of ``repeat`` calls after a warm-up call."""
    fn()
    return min(time_once(fn, torch.device("cpu")) for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--model", default="models/dsb2018-nuclei.pt")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    image = np.random.default_rng(0).random((args.size, args.size)).astype(np.float32)
    mpx = args.size**2 / 1e6
    model, _ = model_from_checkpoint(args.model)
    auto = resolve_precision("auto", torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {f: export(args.model, Path(tmp) / f"m.{f}", f) for f in ("onnx", "torchscript")}
        runs = {
            f"PyTorch checkpoint, auto precision ({auto})": lambda: predict(model, image),
            "PyTorch checkpoint, fp32": lambda: predict(model, image, precision="fp32"),
        }
        for fmt, path in files.items():
            net, _ = load_model(path)
            runs[f"{fmt} (fp32)"] = lambda net=net: predict(net, image)
        for name, fn in runs.items():
            rows.append((name, timed(fn, args.repeat)))
    base = rows[0][1]
    print(f"{args.model}, {args.size} x {args.size}, {torch.get_num_threads()} threads, "
          f"best of {args.repeat}")  # fmt: skip
    for name, seconds in rows:
        print(f"  {name:45s} {seconds:7.2f} s  {mpx / seconds:6.2f} MP/s  "
              f"x{base / seconds:.2f} of the first")  # fmt: skip


if __name__ == "__main__":
    main()
