"""Data-parallel training against one process, measured in this run: ``biounet train`` on
the bundled ISBI 2012 data with one process of T threads and batch R * b (the baseline)
against ``torchrun`` with R ranks of T / R threads and batch b each, so that both take
steps of the same global batch. Prints steps per second, tiles per second and the ratio
to the baseline. Each run trains 2 epochs of ``--steps`` steps without validation and is
timed by its second epoch (log.csv), which leaves out start-up, data loading and the
first steps' warm-up.

CPU (this machine's cores; the default compares 2 ranks x 1 thread with 1 x 2 threads):
    .venv/bin/python benchmarks/bench_ddp.py
GPU scaling (1, 2, ... N ranks of one GPU each, batch b per rank: weak scaling):
    .venv/bin/python benchmarks/bench_ddp.py --device cuda --ranks 1,2,4,8 --batch 8
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(ranks: int, threads: int, batch: int, args, out: Path) -> float:
    """Seconds of the second epoch of one training run."""
    train = ["-m", "biounet", "train", "--preset", args.preset, "--epochs", "2",
             "--steps-per-epoch", str(args.steps), "--batch-size", str(batch), "--val-every",
             "0", "--time-limit", "0", "--device", args.device, "--out", str(out),
             "--no-progress"]  # fmt: skip
    if ranks > 1 or args.device != "cpu":  # GPU runs all go through torchrun alike
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-port", str(29500 + ranks), *train]  # fmt: skip
    else:
        cmd = [sys.executable, *train]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    rows = list(csv.DictReader((out / "log.csv").open()))
    return float(rows[-1]["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--ranks", default="2", help="comma-separated rank counts to compare")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="CPU threads in all (per run; divided among the ranks)")
    ap.add_argument("--batch", type=int, default=4, help="batch per rank")
    ap.add_argument("--steps", type=int, default=10, help="steps per epoch")
    ap.add_argument("--preset", default="fast")
    args = ap.parse_args()
    counts = [int(r) for r in args.ranks.split(",")]
    gpu = args.device != "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        if not gpu:  # the baseline: one process, all the threads, the global batch
            base_ranks = max(counts)
            s = run(1, args.threads, args.batch * base_ranks, args, Path(tmp) / "base")
            results.append((f"1 process x {args.threads} threads, batch "
                            f"{args.batch * base_ranks}", s, args.batch * base_ranks))  # fmt: skip
        for r in counts:
            threads = max(1, args.threads // r)
            s = run(r, threads, args.batch, args, Path(tmp) / f"r{r}")
            what = f"{r} ranks x {'1 GPU' if gpu else f'{threads} threads'}, batch {args.batch}"
            results.append((what, s, args.batch * r))
    base_tiles = args.steps * results[0][2] / results[0][1]
    print(f"{args.preset} preset, {args.steps} steps per epoch, {args.device}")
    print(f"{'run':44s} {'steps/s':>8s} {'tiles/s':>8s} {'ratio':>6s}")
    for what, s, global_batch in results:
        tiles = args.steps * global_batch / s
        print(f"{what:44s} {args.steps / s:8.3f} {tiles:8.2f} {tiles / base_tiles:6.2f}")
    if gpu:
        print("ratio: tiles per second against 1 rank (ideal: the number of ranks)")


if __name__ == "__main__":
    main()
