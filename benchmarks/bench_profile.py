"""Where a training step's time goes: the top operators by self time for a preset's step
(biounet's set-up: channels_last and bf16 autocast where the CPU has bf16), eager against
``torch.compile``, and the compiled step's speed relative to the eager one measured in
the same run (median of interleaved rounds).

    .venv/bin/python benchmarks/bench_profile.py [--preset paper] [--steps 3] [--top 12]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from biounet import get_preset
from biounet.bench import train_step_fn
from biounet.device import resolve_precision, select_device
from biounet.model import UNet


def self_times(step, steps: int) -> tuple[dict[str, float], float]:
    """Operator name -> self CPU seconds over ``steps`` profiled steps, and their total."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    times: dict[str, float] = {}
    for e in prof.key_averages():
        times[e.key] = times.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
    return times, sum(times.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()

    torch.manual_seed(0)
    preset = get_preset(args.preset)
    dev = select_device("cpu")
    precision = resolve_precision("auto", dev)
    model = UNet(preset.model)
    eager = train_step_fn(model, preset, dev, precision, True, compile=False)
    comp = train_step_fn(model, preset, dev, precision, True, compile=True)
    t0 = time.perf_counter()
    comp()
    print(f"{args.preset}: {precision}, first compiled step (compiling) "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    for fn in (eager, comp):
        fn()  # warm-up
    ratios = []
    for _ in range(args.rounds):
        t = []
        for fn in (eager, comp):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        ratios.append(t[0] / t[1])
    print(f"compiled step against eager: {np.median(ratios):.2f}x "
          f"(median of {args.rounds} interleaved rounds)")  # fmt: skip

    tables = {}
    for name, fn in (("eager", eager), ("compiled", comp)):
        times, total = self_times(fn, args.steps)
        tables[name] = (times, total)
        print(f"\n{name}: {total / args.steps:.3f} s of operator self time a step; top "
              f"{args.top} by self time")  # fmt: skip
        print("| operator | s a step | share |")
        print("| --- | --- | --- |")
        for key, s in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"| `{key}` | {s / args.steps:.3f} | {100 * s / total:.1f} % |")
    conv = ("aten::mkldnn_convolution", "aten::convolution_backward")
    for name, (times, total) in tables.items():
        c = sum(s for k, s in times.items() if k in conv)
        print(f"{name}: convolutions (forward and backward) {100 * c / total:.0f} % of self time")


if __name__ == "__main__":
    main()
