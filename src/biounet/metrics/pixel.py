"""Pixel scores of a probability map or binary map against a label image (numpy, no torch).

``prob``: (H, W) float foreground probability; ``pred`` / ``label``: (H, W) integer or bool,
nonzero = foreground (cell), 0 = background (membrane). Each score is a Python float.

- pixel error: the fraction of disagreeing pixels, as in the ISBI 2012 challenge
  (Arganda-Carreras et al., Front. Neuroanat. 9:142, 2015, doi:10.3389/fnana.2015.00142).
- IoU (Jaccard index) |P & L| / |P | L|; Dice 2 |P & L| / (|P| + |L|), the same as the
  foreground F-score 2 TP / (2 TP + FP + FN).
- binary cross entropy -[l log p + (1 - l) log(1 - p)], the 2-class softmax cross entropy.
- multi-class: ``pred`` / ``label`` are class maps 0..C-1; :func:`confusion_matrix` counts
  (reference, predicted) class pairs, leaving out reference pixels of an ``ignore`` value
  (``labels.IGNORE_INDEX``, 255, in biounet's class maps); :func:`class_scores` turns it into
  per-class IoU and Dice of classes 1..C-1 and their means (NaN for a class in neither map,
  left out of the means).
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


# ---------------------------------------------------------------------------------------
# Multi-class: per-class IoU and Dice of class maps 0..C-1


def confusion_matrix(
    pred: np.ndarray, label: np.ndarray, *, num_classes: int, ignore: int | None = None
) -> np.ndarray:
    """(C, C) int64 pixel counts: ``[g, p]`` = pixels of reference class g predicted as p.

    ``pred`` and ``label`` are integer class maps of one shape ((H, W) or (N, H, W)) with
    values 0..``num_classes``-1; pixels where ``label == ignore`` are left out (their
    prediction is not looked at). ValueError showing the first value out of range.
    """
    same_shape(pred, label)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    keep = label != ignore if ignore is not None else np.ones(label.shape, bool)
    p, g = pred[keep], label[keep]
    for name, a in (("pred", p), ("label", g)):
        bad = (a < 0) | (a >= num_classes)
        if bad.any():
            raise ValueError(f"{name} has value {a[bad].flat[0]}, outside the classes "
                             f"0..{num_classes - 1}")  # fmt: skip
    pairs = g.astype(np.int64) * num_classes + p.astype(np.int64)
    return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_scores(confusion: np.ndarray) -> dict:
    """Per-class IoU and Dice of the foreground classes 1..C-1, and their means.

    For class c with TP = ``confusion[c, c]``, FP = the rest of column c, FN = the rest of
    row c: IoU_c = TP / (TP + FP + FN) and Dice_c = 2 TP / (2 TP + FP + FN). A class absent
    from both the reference and the prediction (TP + FP + FN = 0) has no score: NaN, left
    out of the means; the means are NaN when no foreground class occurs at all. Class 0
    (background) is not scored.

    Returns ``{"iou_per_class": [...], "dice_per_class": [...], "mean_iou": float,
    "mean_dice": float}``, the lists over classes 1..C-1 (Python floats).
    """
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)[1:]
    fp = cm.sum(axis=0)[1:] - tp
    fn = cm.sum(axis=1)[1:] - tp
    seen = tp + fp + fn > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou_c = np.where(seen, tp / (tp + fp + fn), np.nan)
        dice_c = np.where(seen, 2 * tp / (2 * tp + fp + fn), np.nan)

    def mean(a: np.ndarray) -> float:
        return float(a[seen].mean()) if seen.any() else float("nan")

    return {"iou_per_class": [float(v) for v in iou_c],
            "dice_per_class": [float(v) for v in dice_c],
            "mean_iou": mean(iou_c), "mean_dice": mean(dice_c)}  # fmt: skip


def iou_per_class(
    pred: np.ndarray, label: np.ndarray, *, num_classes: int, ignore: int | None = None
) -> np.ndarray:
    """(C-1,) float64 IoU of each class 1..C-1 of two class maps (see :func:`class_scores`;
    NaN for a class in neither)."""
    cm = confusion_matrix(pred, label, num_classes=num_classes, ignore=ignore)
    return np.array(class_scores(cm)["iou_per_class"])


def dice_per_class(
    pred: np.ndarray, label: np.ndarray, *, num_classes: int, ignore: int | None = None
) -> np.ndarray:
    """(C-1,) float64 Dice of each class 1..C-1 of two class maps (see :func:`class_scores`;
    NaN for a class in neither)."""
    cm = confusion_matrix(pred, label, num_classes=num_classes, ignore=ignore)
    return np.array(class_scores(cm)["dice_per_class"])


def class_scores_many(
    preds, labels, *, num_classes: int, ignore: int | None = None
) -> dict:
    """:func:`class_scores` of image pairs of any sizes, counted over all their pixels
    together (one confusion matrix for the set, as PASCAL VOC and Cityscapes score mIoU,
    so a class missing from one image does not make that image's score undefined).

    Also returns ``"pixels"``: the pixels scored (not ignored).
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    cm = np.zeros((num_classes, num_classes), np.int64)
    for p, g in zip(preds, labels, strict=True):
        cm += confusion_matrix(p, g, num_classes=num_classes, ignore=ignore)
    return {**class_scores(cm), "pixels": int(cm.sum())}
