"""Training and inference speed of a preset on this machine, against baselines measured in
the same run: the same model in plain fp32 NCHW eager PyTorch, and the machine's own peak
for a large 3x3 convolution in fp32 and in bf16.

Achieved GFLOP/s count the multiply-adds of every convolution (2 FLOPs each), forward and
backward (backward = 2x forward), from the shapes seen in one forward pass.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .config import Preset
from .device import autocast, compiled, memory_format, resolve_precision, select_device
from .losses import segmentation_loss
from .model import UNet, output_size
from .tiling import predict


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (GPU work finished before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def _timed(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    return float(np.median([time_once(fn, device) for _ in range(repeat)]))


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of the convolutions in one forward pass of ``x``."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, nn.ConvTranspose2d):
            total += 2 * inputs[0].numel() * m.out_channels * k
        else:
            total += 2 * out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]  # fmt: skip
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def conv_peak_fn(precision: str, device: torch.device) -> tuple[Callable[[], object], int]:
    """A large 3x3 convolution (128 -> 128 channels, 128 x 128, batch 8), forward only,
    channels_last, in fp32 or under bf16 autocast, and its FLOPs."""
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(8, 128, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 128 * 128 * 128 * 128 * 9

    def run():
        with torch.inference_mode(), autocast(device, precision):
            conv(x)

    return run, flops


def train_step_fn(
    model: UNet, preset: Preset, device: torch.device, precision: str, fast: bool,
    compile: bool = False,
) -> Callable[[], None]:
    """One training step at the preset's tile and batch: ``fast`` = biounet's set-up (the
    layout of :func:`memory_format`, autocast as ``precision``; ``compile``: through
    torch.compile), else plain fp32 NCHW eager."""
    cfg = preset.train
    m = copy.deepcopy(model).to(device).train()
    out = output_size(cfg.tile, preset.model.depth, preset.model.padding)
    x = torch.randn(cfg.batch_size, preset.model.in_channels, cfg.tile, cfg.tile, device=device)
    y = torch.randint(0, max(2, preset.model.out_channels), (cfg.batch_size, out, out),
                      device=device)  # fmt: skip
    if preset.model.out_channels == 1:
        y = y.clamp(max=1)
    if fast:
        layout = memory_format(device, precision)
        m = m.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)
    opt = torch.optim.SGD(m.parameters(), lr=1e-6, momentum=0.9)
    net = compiled(m, compile)

    def step():
        with autocast(device, precision if fast else "fp32"):
            logits = net(x)
        loss = segmentation_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_bench(
    preset: Preset,
    *,
    model: UNet | None = None,
    device: str = "auto",
    repeat: int = 5,
    image_size: int = 2048,
    tta: bool = True,
    predict_model: tuple[str, UNet] | None = None,
    compile: bool = False,
) -> dict:
    """Measure ``preset`` (or ``model``, e.g. a shipped checkpoint's) and return a dict of
    timings and ratios. Inference is timed on a random ``image_size``^2 image (0: skipped)
    with ``predict_model`` (name, network), default the trained model.

    The four training-side measurements (biounet's step, the plain baseline's step, the
    fp32 and bf16 convolution peaks) run interleaved, one of each per round, for
    ``repeat`` rounds after a warm-up of each. Every ratio is taken within a round and the
    median over rounds is reported, so a machine whose speed drifts during the run (a
    shared host) moves numerator and denominator together. Rates are medians over rounds.

    ``compile``: a fifth interleaved measurement, biounet's step through torch.compile
    (its first call, the compile, timed apart), and prediction compiled against eager,
    timed alternately after a compiling call each.
    """
    dev = select_device(device)
    precision = resolve_precision(preset.train.precision, dev)
    torch.manual_seed(0)
    model = model if model is not None else UNet(preset.model)
    cfg = preset.train
    x = torch.zeros(cfg.batch_size, preset.model.in_channels, cfg.tile, cfg.tile)
    flops = 3 * forward_flops(copy.deepcopy(model).eval(), x)  # forward + backward
    fast = train_step_fn(model, preset, dev, precision, True)
    plain = train_step_fn(model, preset, dev, precision, False)
    (peak32, flops32), (peak16, flops16) = conv_peak_fn("fp32", dev), conv_peak_fn("bf16", dev)
    fns = [fast, plain, peak32, peak16]
    compile_seconds = None
    if compile:
        fns.append(train_step_fn(model, preset, dev, precision, True, compile=True))
        compile_seconds = time_once(fns[-1], dev)  # the first call compiles
    for fn in fns:  # warm-up
        fn()
    rounds = [[time_once(fn, dev) for fn in fns] for _ in range(repeat)]
    columns = [np.array(column) for column in zip(*rounds, strict=True)]
    t_fast, t_plain, t32, t16 = columns[:4]
    t_peak, peak_flops = (t16, flops16) if precision == "bf16" else (t32, flops32)
    result = {
        "preset": preset.name,
        "device": str(dev),
        "precision": precision,
        "tile": cfg.tile,
        "batch": cfg.batch_size,
        "rounds": repeat,
        "train_steps_per_s": float(np.median(1 / t_fast)),
        "train_gflops": float(np.median(flops / t_fast / 1e9)),
        "baseline_steps_per_s": float(np.median(1 / t_plain)),
        "baseline_gflops": float(np.median(flops / t_plain / 1e9)),
        "speedup_vs_baseline": float(np.median(t_plain / t_fast)),
        "conv_peak_fp32_gflops": float(np.median(flops32 / t32 / 1e9)),
        "conv_peak_bf16_gflops": float(np.median(flops16 / t16 / 1e9)),
        "share_of_peak": float(np.median((flops / t_fast) / (peak_flops / t_peak))),
    }
    if compile:
        t_comp = columns[4]
        result.update({
            "compile_seconds": compile_seconds,
            "compiled_steps_per_s": float(np.median(1 / t_comp)),
            "compiled_speedup_vs_eager": float(np.median(t_fast / t_comp)),
            "compiled_share_of_peak": float(np.median((flops / t_comp) / (peak_flops / t_peak))),
        })  # fmt: skip
    if image_size:
        image = np.random.default_rng(0).random((image_size, image_size)).astype(np.float32)
        name, m = predict_model or (f"the {preset.name} network", model)
        m = copy.deepcopy(m).to(dev).eval()
        mpx = image_size**2 / 1e6
        result["predict_model"] = name
        result["predict_image"] = image_size
        for key, views in [("predict", False)] + ([("predict_tta", True)] if tta else []):
            if not compile:
                result[f"{key}_mpx_per_s"] = mpx / _timed(lambda v=views: predict(
                    m, image, tta=v), 1, dev)  # fmt: skip
                continue
            t0 = time.perf_counter()
            predict(m, image, tta=views, compile=True)  # compiles its tile shape
            result[f"{key}_compile_seconds"] = time.perf_counter() - t0
            pairs = [(time_once(lambda v=views: predict(m, image, tta=v), dev),
                      time_once(lambda v=views: predict(m, image, tta=v, compile=True), dev))
                     for _ in range(2)]  # fmt: skip
            eager, comp = (np.array(c) for c in zip(*pairs, strict=True))
            result[f"{key}_mpx_per_s"] = float(np.median(mpx / eager))
            result[f"{key}_compiled_mpx_per_s"] = float(np.median(mpx / comp))
    return result


def format_bench(r: dict) -> str:
    """Human-readable lines for :func:`run_bench`'s result."""
    lines = [
        f"{r['preset']} on {r['device']} ({r['precision']}), tile {r['tile']}, batch {r['batch']}:",
        f"  training      {r['train_steps_per_s']:.3f} steps/s, {r['train_gflops']:.0f} GFLOP/s",
        f"  baseline      {r['baseline_steps_per_s']:.3f} steps/s, {r['baseline_gflops']:.0f} "
        "GFLOP/s (plain fp32 NCHW eager)",
        f"  conv peak     fp32 {r['conv_peak_fp32_gflops']:.0f} GFLOP/s, bf16 "
        f"{r['conv_peak_bf16_gflops']:.0f} GFLOP/s (3x3, 128 channels)",
        f"  ratios        {r['speedup_vs_baseline']:.2f}x the baseline; "
        f"{100 * r['share_of_peak']:.0f} % of the {r['precision']} conv peak (medians of "
        f"{r['rounds']} interleaved rounds)",
    ]
    if "compiled_steps_per_s" in r:
        lines.append(f"  compiled      {r['compiled_steps_per_s']:.3f} steps/s, "
                     f"{r['compiled_speedup_vs_eager']:.2f}x eager, "
                     f"{100 * r['compiled_share_of_peak']:.0f} % of the conv peak (first step: "
                     f"{r['compile_seconds']:.1f} s, compiling)")  # fmt: skip
    if "predict_mpx_per_s" in r:
        tta = (f", with --tta {r['predict_tta_mpx_per_s']:.2f} Mpx/s"
               if "predict_tta_mpx_per_s" in r else "")  # fmt: skip
        lines.append(
            f"  predict       {r['predict_mpx_per_s']:.2f} Mpx/s{tta} "
            f"({r['predict_model']}, {r['predict_image']} x {r['predict_image']})"
        )
    if "predict_compiled_mpx_per_s" in r:
        tta = (f", with --tta {r['predict_tta_compiled_mpx_per_s']:.2f} Mpx/s"
               if "predict_tta_compiled_mpx_per_s" in r else "")  # fmt: skip
        lines.append(f"  compiled      {r['predict_compiled_mpx_per_s']:.2f} Mpx/s{tta} "
                     f"(compiling: {r['predict_compile_seconds']:.1f} s)")  # fmt: skip
    return "\n".join(lines)
