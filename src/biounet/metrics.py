"""Segmentation metrics as pure numpy functions (no torch).

Conventions: ``prob`` is an (H, W) float map of the foreground (cell) probability;
``label`` an (H, W) integer or bool map, nonzero = foreground.
"""

from __future__ import annotations

import numpy as np


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")


def pixel_error(prob: np.ndarray, label: np.ndarray, *, threshold: float = 0.5) -> float:
    """Fraction of pixels where ``prob > threshold`` disagrees with ``label != 0``."""
    _check(prob, label)
    return float(np.mean((prob > threshold) != (label != 0)))


def iou(pred: np.ndarray, label: np.ndarray) -> float:
    """Jaccard index |P & L| / |P | L| of two binary maps (nonzero = foreground).

    1.0 when both are empty.
    """
    _check(pred, label)
    p, g = pred != 0, label != 0
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice coefficient 2 |P & L| / (|P| + |L|) of two binary maps; 1.0 when both are empty."""
    _check(pred, label)
    p, g = pred != 0, label != 0
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 1.0 if total == 0 else 2 * np.count_nonzero(p & g) / total


def binary_cross_entropy(prob: np.ndarray, label: np.ndarray, *, eps: float = 1e-7) -> float:
    """Mean -[l log p + (1 - l) log(1 - p)] over pixels; equals 2-class softmax CE."""
    _check(prob, label)
    p = np.clip(prob.astype(np.float64), eps, 1 - eps)
    g = label != 0
    return float(-np.mean(np.where(g, np.log(p), np.log1p(-p))))
