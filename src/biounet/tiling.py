"""Inference: image -> probability map.

A valid-padding network is given the image mirror-padded by its border (92 px for depth
4), so every output pixel sees real or mirrored context; a same-padding network is given
the image mirror-padded up to a multiple of 2**depth. Any image size works: the padding
absorbs sizes the network cannot take and the output is cropped back to (H, W).
This module runs one pass over the whole padded image; overlap-tiling plugs in here.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .checkpoint import model_from_checkpoint
from .dataset import mirror_pad
from .device import autocast, resolve_precision
from .io import normalize
from .model import UNet, border, is_valid_input_size, valid_input_size


def padding_for(size: int, depth: int, padding: str) -> tuple[int, int]:
    """(before, after) mirror padding of an image edge ``size`` so the network's output
    covers it, with the image's first pixel at output index 0 (valid) or ``before`` (same)."""
    if padding == "valid":
        b = border(depth)
        total = valid_input_size(size, depth, padding)
        return b, total - size - b
    total = size
    while not is_valid_input_size(total, depth, padding):
        total += 1
    extra = total - size
    return extra // 2, extra - extra // 2


@contextmanager
def evaluating(model: torch.nn.Module):
    """Put ``model`` in eval mode under inference_mode; restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def class_probabilities(model: UNet, image: np.ndarray, *, precision: str = "auto") -> np.ndarray:
    """(H, W) image, any dtype -> (C, H, W) float32 class probabilities (C = 1: sigmoid).

    The image is normalised to zero mean and unit variance, as in training.
    """
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"expected a non-empty (H, W) image, got shape {image.shape}")
    cfg = model.config
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    H, W = image.shape
    (top, bottom), (left, right) = (padding_for(s, cfg.depth, cfg.padding) for s in (H, W))
    x = mirror_pad(normalize(image), top, bottom, left, right)
    x = torch.from_numpy(x)[None, None].to(device).contiguous(memory_format=torch.channels_last)
    with evaluating(model), autocast(device, precision):
        logits = model(x).float()  # (1, C, H', W')
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
    oy, ox = (0, 0) if cfg.padding == "valid" else (top, left)
    return probs[0, :, oy : oy + H, ox : ox + W].cpu().numpy()


def predict(
    model_or_checkpoint: UNet | str | Path,
    image: np.ndarray,
    *,
    precision: str = "auto",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Foreground probability map of one image.

    Args:
        model_or_checkpoint: a :class:`UNet` or the path of a biounet checkpoint.
        image: (H, W) array of any dtype and size.
        precision: "auto" (bf16 where fast), "bf16" or "fp32".
        device: where to run a checkpoint's model (default: cpu); a model runs where it is.

    Returns (H, W) float32 probability of the foreground (cell) class for 1- and 2-output
    networks, (C, H, W) class probabilities for more outputs.
    """
    if isinstance(model_or_checkpoint, UNet):
        model = model_or_checkpoint
    else:
        model, _ = model_from_checkpoint(model_or_checkpoint, device or "cpu")
    probs = class_probabilities(model, image, precision=precision)
    if probs.shape[0] == 1:
        return probs[0]
    if probs.shape[0] == 2:
        return probs[1]
    return probs
