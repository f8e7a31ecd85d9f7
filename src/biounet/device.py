"""Device and numeric precision, chosen once per run and passed down."""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

log = logging.getLogger("biounet")


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: cuda if present, else cpu. Otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested, but no CUDA GPU is available")
    return device


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX (where bf16 convolutions are fast)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds up convolutions on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_native_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where the hardware has it, else ``"fp32"``."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "bf16" and not bf16_is_fast(device):
        log.warning("bf16 requested on %s without native bf16 support: it will be slow", device)
    return precision


def autocast(device: torch.device, precision: str):
    """Context manager: bf16 autocast if ``precision == "bf16"``, otherwise nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """The layout that makes convolutions fast: channels_last on GPUs and for bf16 on the
    CPU (oneDNN's bf16 kernels want it); plain NCHW for fp32 on the CPU, where
    channels_last is no faster and for the paper's network 1.8x slower (2 Zen 3 cores,
    ``biounet bench --preset paper``)."""
    if device.type == "cuda" or precision == "bf16":
        return torch.channels_last
    return torch.contiguous_format
