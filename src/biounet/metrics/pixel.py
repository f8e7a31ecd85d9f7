"""Pixel scores of a probability map or binary map against a label image (numpy, no torch).

``prob``: (H, W) float foreground probability; ``pred`` / ``label``: (H, W) integer or bool,
nonzero = foreground (cell), 0 = background (membrane). Each score is a Python float.

- pixel error: the fraction of disagreeing pixels, as in the ISBI 2012 challenge
  (Arganda-Carreras et al., Front. Neuroanat. 9:142, 2015, doi:10.3389/fnana.2015.00142).
- IoU (Jaccard index) |P & L| / |P | L|; Dice 2 |P & L| / (|P| + |L|), the same as the
  foreground F-score 2 TP / (2 TP + FP + FN).
- binary cross entropy -[l log p + (1 - l) log(1 - p)], the 2-class softmax cross entropy.
"""

from __future__ import annotations

import numpy as np

from ._checks import same_shape


def pixel_error(prob: np.ndarray, label: np.ndarray, *, threshold: float = 0.5) -> float:
    """Fraction of pixels where ``prob > threshold`` disagrees with ``label != 0``."""
    same_shape(prob, label)
    return float(np.mean((prob > threshold) != (label != 0)))


def iou(pred: np.ndarray, label: np.ndarray) -> float:
    """Jaccard index |P & L| / |P | L| of two binary maps (nonzero = foreground).

    1.0 when both are empty.
    """
    same_shape(pred, label)
    p, g = pred != 0, label != 0
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice coefficient 2 |P & L| / (|P| + |L|) of two binary maps; 1.0 when both are empty."""
    same_shape(pred, label)
    p, g = pred != 0, label != 0
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 1.0 if total == 0 else 2 * np.count_nonzero(p & g) / total


def binary_cross_entropy(prob: np.ndarray, label: np.ndarray, *, eps: float = 1e-7) -> float:
    """Mean -[l log p + (1 - l) log(1 - p)] over pixels; equals 2-class softmax CE."""
    same_shape(prob, label)
    p = np.clip(prob.astype(np.float64), eps, 1 - eps)
    g = label != 0
    return float(-np.mean(np.where(g, np.log(p), np.log1p(-p))))


def pixel_fscore(pred: np.ndarray, label: np.ndarray) -> float:
    """F1 score of the foreground class: 2 TP / (2 TP + FP + FN); 1.0 when both are empty."""
    return dice(pred, label)
