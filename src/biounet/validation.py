"""Validation during training: a model's scores on the held-out images (loss, pixel error,
IoU, Dice, V_rand and V_info, the mean IoU of many classes), with the pixels nobody
labelled left out."""

from __future__ import annotations

import numpy as np

from . import metrics
from .dataset import Data
from .labels import IGNORE_INDEX
from .metrics.pixel import class_scores_many
from .model import UNet
from .tiling import predict


def validate(
    model: UNet, data: Data, precision: str, isbi: bool = True
) -> tuple[dict, list[np.ndarray]]:
    """Predictions of the validation images: loss, pixel error, IoU, Dice and, if ``isbi``,
    the ISBI 2012 V_rand and V_info (thinned, maximal over thresholds 0, 0.1, ..., 1), of
    the foreground (every class but 0) against class 0; for masks of more than 2 classes
    also ``val_mean_iou``, the mean IoU of classes 1..C-1 (argmax, pooled over the images).
    Pixels that are not labelled (IGNORE_INDEX) are left out of every score (V_rand and
    V_info: counted as reference background, which their foreground-restricted tables
    leave out)."""
    probs = [predict(model, img, precision=precision) for img in data.val_images]
    masks = data.val_masks
    scores = {}
    if probs and probs[0].ndim == 3 and data.train_instances is None and data.num_classes > 2:
        classes = [p.argmax(0).astype(np.uint8) for p in probs]
        mean_iou = class_scores_many(classes, masks, num_classes=data.num_classes,
                                     ignore=IGNORE_INDEX)["mean_iou"]  # fmt: skip
        scores["val_mean_iou"] = mean_iou
    if probs and probs[0].ndim == 3:  # more than 2 classes: foreground (not 0) vs class 0
        probs = [1.0 - p[0] for p in probs]
        masks = [np.where(m == IGNORE_INDEX, m, m != 0).astype(np.uint8) for m in masks]
    pairs = [_labelled(p, m) for p, m in zip(probs, masks, strict=True)]
    if isbi:  # not labelled: reference background
        masks = [np.where(m == IGNORE_INDEX, 0, m).astype(np.uint8) for m in masks]
    scores.update({
        "val_loss": np.mean([metrics.binary_cross_entropy(p, m) for p, m in pairs]),
        "val_pixel_error": np.mean([metrics.pixel_error(p, m) for p, m in pairs]),
        "val_iou": np.mean([metrics.iou(p > 0.5, m) for p, m in pairs]),
        "val_dice": np.mean([metrics.dice(p > 0.5, m) for p, m in pairs]),
    })  # fmt: skip
    if isbi:
        r = metrics.isbi_scores(probs, masks, metrics=("v_rand", "v_info"))
        scores.update(v_rand=r["v_rand"], v_info=r["v_info"])
    return {k: float(v) for k, v in scores.items()}, probs


def _labelled(prob: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prob, mask) at the labelled pixels only (1-D) where ``mask`` holds IGNORE_INDEX;
    as they are otherwise."""
    keep = mask != IGNORE_INDEX
    return (prob, mask) if keep.all() else (prob[keep], mask[keep])
