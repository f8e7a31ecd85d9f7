"""The ISBI 2012 scores: foreground-restricted Rand and information scores (numpy, no torch).

They follow the organisers' Fiji evaluation (Arganda-Carreras et al., "Crowdsourcing the
creation of image segmentation algorithms for connectomics", Front. Neuroanat. 9:142,
2015, doi:10.3389/fnana.2015.00142): for each threshold the proposal's boundaries are
thinned to one pixel by a seeded watershed (:func:`thinned_segments`), scores are
restricted to the ground truth's foreground (:func:`contingency`), and the maximum over
thresholds is reported (:func:`isbi_scores`, which also gathers the pixel, warping and
SEG scores of the other metric modules).

With p_ij the fraction of foreground pixels in ground-truth segment i and proposal
segment j, t_i = sum_j p_ij, s_j = sum_i p_ij:

- V_rand = 2 sum p_ij^2 / (sum t_i^2 + sum s_j^2) (:func:`rand_scores`);
- V_info = 2 I(S;T) / (H(S) + H(T)) (:func:`information_scores`).

``prob``: (H, W) float foreground probability; ``label``: (H, W) integer or bool, nonzero =
cell, 0 = membrane. Stacks are scored slice by slice and averaged, as the challenge did.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..labels import FOUR_CONNECTED
from ._checks import same_shape
from .instances import seg_score
from .pixel import dice, iou, pixel_fscore
from .warping import warping_error

DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))
METRICS = ("v_rand", "v_info", "pixel_error", "rand_error", "warping_error", "iou", "dice", "seg")


def ground_truth_segments(label: np.ndarray) -> np.ndarray:
    """(H, W) int32: 4-connected components of the foreground (cells), 0 = membrane."""
    return ndimage.label(label != 0, structure=FOUR_CONNECTED)[0].astype(np.int32)


def thinned_segments(prob: np.ndarray, threshold: float) -> np.ndarray:
    """The ISBI proposal at one threshold: pixels above it are seeds (4-connected
    components), a 4-connected seeded watershed on 1 - prob grows them over the image and
    leaves one-pixel boundary lines (label 0). (H, W) int32.

    Only pixels at or below the threshold, plus the seeds' outer rim, are flooded (the
    seeds' interiors cannot change), which halves the work.
    """
    from skimage.segmentation import watershed

    fg = prob > threshold
    seeds, n = ndimage.label(fg, structure=FOUR_CONNECTED)
    if n == 0:
        return np.zeros(prob.shape, np.int32)
    flood = ~ndimage.binary_erosion(fg, structure=FOUR_CONNECTED, border_value=1)
    ws = watershed(1.0 - prob, seeds, connectivity=1, watershed_line=True, mask=flood)
    return np.where(fg, seeds, ws).astype(np.int32)


@dataclass(frozen=True)
class Table:
    """Foreground-restricted contingency table, as counts.

    ``n``: counts n_ij > 0 of pixels in ground-truth segment i and proposal segment j > 0;
    ``rows``: ground-truth segment sizes a_i; ``cols``: proposal segment sizes b_j > 0;
    ``singletons``: proposal boundary pixels (label 0) inside the ground truth's
    foreground, each its own segment of one pixel; ``total``: N.
    """

    n: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    singletons: int
    total: int


def contingency(gt: np.ndarray, seg: np.ndarray) -> Table:
    """The contingency table of ``seg`` against ``gt`` over pixels with gt > 0."""
    same_shape(gt, seg)
    fg = gt > 0
    g = gt[fg].astype(np.int64)
    s = seg[fg].astype(np.int64)
    if g.size and (g.min() < 0 or s.min() < 0):
        raise ValueError("labels must be non-negative")
    boundary = s == 0
    g1, s1 = g[~boundary], s[~boundary]
    if g1.size:
        smax = int(s1.max()) + 1
        keys = g1 * smax + s1
        if (int(g1.max()) + 1) * smax <= 50_000_000:
            n = np.bincount(keys)
        else:  # huge label values: sort instead of a dense histogram
            n = np.unique(keys, return_counts=True)[1]
        n = n[n > 0]
        cols = np.bincount(s1)
        cols = cols[cols > 0]
    else:
        n = cols = np.zeros(0, np.int64)
    rows = np.bincount(g)
    rows = rows[rows > 0]
    return Table(n, rows, cols, int(boundary.sum()), int(g.size))


@dataclass(frozen=True)
class Scores:
    """An F-score with its split and merge parts (all in [0, 1], 1 = perfect)."""

    score: float
    split: float
    merge: float


def rand_scores(gt: np.ndarray, seg: np.ndarray, *, exclude_self_pairs: bool = False) -> Scores:
    """Foreground-restricted Rand scores of segmentation ``seg`` against segments ``gt``.

    With p_ij = n_ij / N, t_i = sum_j p_ij (ground truth) and s_j = sum_i p_ij (proposal):
    V_rand = 2 sum p_ij^2 / (sum t_i^2 + sum s_j^2); split = sum p_ij^2 / sum t_i^2 (falls
    when a cell is split), merge = sum p_ij^2 / sum s_j^2 (falls when cells are merged).
    ``exclude_self_pairs`` subtracts the N pairs of a pixel with itself from every sum, as
    scikit-image's ``adapted_rand_error`` does. No foreground: all 1.
    """
    t = contingency(gt, seg)
    if t.total == 0:
        return Scores(1.0, 1.0, 1.0)
    self_pairs = t.total if exclude_self_pairs else 0
    z = t.singletons  # each contributes 1 to sum n_ij^2 and to sum b_j^2
    sum_p2 = float(np.square(t.n, dtype=np.float64).sum()) + z - self_pairs
    sum_t2 = float(np.square(t.rows, dtype=np.float64).sum()) - self_pairs
    sum_s2 = float(np.square(t.cols, dtype=np.float64).sum()) + z - self_pairs
    if sum_t2 + sum_s2 == 0:
        return Scores(1.0, 1.0, 1.0)
    split = sum_p2 / sum_t2 if sum_t2 else 1.0
    merge = sum_p2 / sum_s2 if sum_s2 else 1.0
    return Scores(2 * sum_p2 / (sum_t2 + sum_s2), split, merge)


def _entropy(counts: np.ndarray, total: int, singletons: int = 0) -> float:
    """-sum p log p of the given counts / total, plus ``singletons`` cells of count 1."""
    p = counts / total
    h = float(-(p * np.log(p)).sum())
    return h + singletons * math.log(total) / total


def information_scores(gt: np.ndarray, seg: np.ndarray) -> Scores:
    """Foreground-restricted information-theoretic scores.

    V_info = 2 I(S;T) / (H(S) + H(T)); split = I / H(S) (falls when a cell is split),
    merge = I / H(T) (falls when cells are merged); natural logarithms (the ratio does not
    depend on the base). A single segment on both sides: all 1.
    """
    t = contingency(gt, seg)
    if t.total == 0:
        return Scores(1.0, 1.0, 1.0)
    H_t = _entropy(t.rows, t.total)
    H_s = _entropy(t.cols, t.total, t.singletons)
    H_ts = _entropy(t.n, t.total, t.singletons)
    mutual = H_t + H_s - H_ts
    if H_t + H_s <= 1e-15:
        return Scores(1.0, 1.0, 1.0)
    split = mutual / H_s if H_s > 1e-15 else 1.0
    merge = mutual / H_t if H_t > 1e-15 else 1.0
    return Scores(2 * mutual / (H_t + H_s), split, merge)


def _threshold_scores(
    p: np.ndarray, g: np.ndarray, thresholds: Sequence[float], metrics: Sequence[str]
) -> dict[str, np.ndarray]:
    """One slice's scores per threshold (arrays of len(thresholds))."""
    keys = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split",
            "v_info_merge", "pixel_f", "rand_f")  # fmt: skip
    rows = {k: np.zeros(len(thresholds)) for k in keys}
    gt = ground_truth_segments(g)
    for k, t in enumerate(thresholds):
        if {"v_rand", "v_info"} & set(metrics):
            seg = thinned_segments(p, t)
            if "v_rand" in metrics:
                r = rand_scores(gt, seg)
                rows["v_rand"][k], rows["v_rand_split"][k], rows["v_rand_merge"][k] = (
                    r.score, r.split, r.merge)  # fmt: skip
            if "v_info" in metrics:
                v = information_scores(gt, seg)
                rows["v_info"][k], rows["v_info_split"][k], rows["v_info_merge"][k] = (
                    v.score, v.split, v.merge)  # fmt: skip
        if "pixel_error" in metrics:
            rows["pixel_f"][k] = pixel_fscore(p > t, g)
        if "rand_error" in metrics:
            components = ndimage.label(p > t, structure=FOUR_CONNECTED)[0]
            rows["rand_f"][k] = rand_scores(gt, components).score
    return rows


def isbi_scores(
    prob: np.ndarray | Sequence[np.ndarray],
    label: np.ndarray | Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    metrics: Sequence[str] = METRICS,
    warping_threshold: float = 0.5,
) -> dict:
    """Score probability maps (H, W) or stacks against labels: each metric per slice,
    averaged over slices; V_rand, V_info, pixel and Rand errors per threshold, with the
    best value and its threshold. Keys as in ``biounet evaluate --json``; ``per_image``:
    each slice's scores (those of thresholds at the chosen threshold), whose means these are.
    """
    probs = [prob] if isinstance(prob, np.ndarray) and prob.ndim == 2 else list(prob)
    labels = [label] if isinstance(label, np.ndarray) and label.ndim == 2 else list(label)
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probability maps but {len(labels)} labels")
    pairs = list(zip(probs, labels, strict=True))
    for p, g in pairs:
        same_shape(p, g)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
    if not pairs:
        raise ValueError("no slices to score")
    with ThreadPoolExecutor(max_workers=min(len(pairs), os.cpu_count() or 1)) as pool:
        per_slice = list(pool.map(lambda pg: _threshold_scores(*pg, thresholds, metrics), pairs))
    rows = {k: np.array([r[k] for r in per_slice]) for k in per_slice[0]} if per_slice else {}
    out: dict = {}
    detail = {"thresholds": list(thresholds)}
    for name in ("v_rand", "v_info"):
        if name in metrics:
            mean = rows[name].mean(axis=0)
            k = int(np.argmax(mean))
            out[name] = float(mean[k])
            out[f"{name}_split"] = float(rows[f"{name}_split"].mean(axis=0)[k])
            out[f"{name}_merge"] = float(rows[f"{name}_merge"].mean(axis=0)[k])
            out[f"{name}_threshold"] = thresholds[k]
            detail[name] = [float(v) for v in mean]
    for name, key in (("pixel_error", "pixel_f"), ("rand_error", "rand_f")):
        if name in metrics:
            mean = rows[key].mean(axis=0)
            k = int(np.argmax(mean))
            out[name] = float(1 - mean[k])
            out[f"{name}_threshold"] = thresholds[k]
            detail[name] = [float(1 - v) for v in mean]
    per_image: dict[str, list[float]] = {}
    for name in ("v_rand", "v_info"):
        if name in metrics:
            k = thresholds.index(out[f"{name}_threshold"])
            per_image[name] = [float(v) for v in rows[name][:, k]]
    for name, key in (("pixel_error", "pixel_f"), ("rand_error", "rand_f")):
        if name in metrics:
            k = thresholds.index(out[f"{name}_threshold"])
            per_image[name] = [float(1 - v) for v in rows[key][:, k]]
    if "warping_error" in metrics:
        per_image["warping_error"] = [warping_error(p, g, threshold=warping_threshold)
                                      for p, g in pairs]  # fmt: skip
    if "iou" in metrics:
        per_image["iou"] = [iou(p > 0.5, g) for p, g in pairs]
    if "dice" in metrics:
        per_image["dice"] = [dice(p > 0.5, g) for p, g in pairs]
    if "seg" in metrics:
        per_image["seg"] = [seg_score(ground_truth_segments(g),
                                      ndimage.label(p > 0.5, structure=FOUR_CONNECTED)[0])
                            for p, g in pairs]  # fmt: skip
    for name in ("warping_error", "iou", "dice", "seg"):
        if name in per_image:
            out[name] = float(np.mean(per_image[name]))
    out["thresholds"] = detail
    out["per_image"] = [{k: float(v[i]) for k, v in per_image.items()} for i in range(len(pairs))]
    return out
