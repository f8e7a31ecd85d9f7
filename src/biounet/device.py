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


class Compiled:
    """``module`` through ``torch.compile`` (static shapes), falling back to ``module``
    itself, with one warning, where compiling fails (no C++ compiler, an operator the
    compiler does not take): a run never ends because of it. Compiling happens at the
    first call of each new input shape; the compiled code shares ``module``'s parameters,
    so training, checkpoints and ``state_dict`` see one set of weights."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)
        self.failed: str | None = None  # why compiling failed, once it has

    def __getattr__(self, name):  # train(), eval(), parameters(), ...: the module's own
        if name == "module":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.module, name)

    def __deepcopy__(self, memo):  # a copied module compiles afresh (compiled() below)
        return None

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # any compiler failure: the eager module does the same
                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                log.warning("torch.compile failed (%s); running without it", self.failed)
        return self.module(*args, **kwargs)


def compiled(module: torch.nn.Module, enabled: bool = True):
    """``module`` itself, or with ``enabled`` its :class:`Compiled` wrapper: one per module,
    kept in the module (so repeated calls reuse what was compiled, and both are freed
    together; a deep copy of the module compiles afresh)."""
    if not enabled:
        return module
    wrapper = module.__dict__.get("_biounet_compiled")
    if wrapper is None:
        wrapper = module.__dict__["_biounet_compiled"] = Compiled(module)
    return wrapper
