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


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """1 - soft Dice of the foreground, per tile, averaged over the batch.

    Foreground: every class but 0 (target > 0); its probability is the sigmoid of a single
    logit or 1 - P(class 0) under the softmax. Per tile: 1 - (2 sum(p t) + smooth) /
    (sum p + sum t + smooth), so a tile with few objects counts as much as a crowded one
    (and an empty tile predicted empty costs 0). ``valid``: (B, H, W) bool pixels to count
    (None: all). Returns a scalar float32.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        fg = torch.sigmoid(logits[:, 0])
    else:
        fg = 1 - torch.softmax(logits, dim=1)[:, 0]
    t = (target > 0).float()
    if valid is not None:
        fg, t = fg * valid, t * valid
    inter = (fg * t).sum(dim=(1, 2))
    total = fg.sum(dim=(1, 2)) + t.sum(dim=(1, 2))
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    dice: float = 0.0,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """BCE for 1 logit channel, softmax cross entropy for 2 or more; plus ``dice`` times
    :func:`soft_dice_loss` if ``dice`` > 0.

    ``ignore_index``: target pixels of this value (``labels.IGNORE_INDEX``, 255) are not
    labelled: their loss weight is 0 (the mean still runs over every pixel), they are left
    out of the Dice term, and their class index is taken as 0 so that it stays valid; so
    neither the loss nor its gradient depends on what lies under them.
    """
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index
        target = torch.where(valid, target, torch.zeros_like(target))
        weight = valid.float() if weight is None else weight * valid
    if logits.shape[1] == 1:
        loss = weighted_bce(logits, target, weight)
    else:
        loss = weighted_cross_entropy(logits, target, weight)
    return loss + dice * soft_dice_loss(logits, target, valid=valid) if dice > 0 else loss
