"""Losses on raw logits, computed in float32. Per-pixel weights multiply the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax cross entropy: mean over pixels of w(x) * -log p_{l(x)}(x).

    logits (B, C, H, W), C >= 2; target (B, H, W) int64 class indices; weight (B, H, W)
    float or None (all ones). Returns a scalar float32.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")  # (B, H, W)
    return (ce * weight).mean() if weight is not None else ce.mean()


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Sigmoid binary cross entropy: logits (B, 1, H, W), target (B, H, W) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(
        logits[:, 0].float(), target.float(), weight=weight, reduction="mean"
    )


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE for 1 logit channel, softmax cross entropy for 2 or more."""
    if logits.shape[1] == 1:
        return weighted_bce(logits, target, weight)
    return weighted_cross_entropy(logits, target, weight)
