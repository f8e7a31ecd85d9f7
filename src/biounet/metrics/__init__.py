"""Segmentation metrics as pure numpy functions (no torch).

Conventions: ``prob`` is an (H, W) float map of the foreground (cell) probability;
``label`` an (H, W) integer or bool map, nonzero = foreground (cell), 0 = membrane /
background. Stacks are scored slice by slice and averaged, as the ISBI 2012 challenge did.

The ISBI 2012 metrics follow the organisers' Fiji evaluation (Arganda-Carreras et al.,
"Crowdsourcing the creation of image segmentation algorithms for connectomics", Front.
Neuroanat. 9:142, 2015, doi:10.3389/fnana.2015.00142): for each threshold the proposal's
boundaries are thinned to one pixel by a seeded watershed, scores are restricted to the
ground truth's foreground, and the maximum over thresholds is reported.

Instance metrics compare two label images (0 = background, each positive id one object):
``instance_ious`` (the IoU matrix), ``match_instances`` (one-to-one matching at an IoU
threshold), ``instance_scores`` / ``instance_scores_many`` (the 2018 Data Science Bowl
score, AP@0.5, F1, Cell Tracking Challenge SEG, merge and split counts) and ``seg_score``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FOUR = ndimage.generate_binary_structure(2, 1)
DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))
METRICS = ("v_rand", "v_info", "pixel_error", "rand_error", "warping_error", "iou", "dice", "seg")


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")


# ---------------------------------------------------------------------------------------
# Pixel overlap


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


def pixel_fscore(pred: np.ndarray, label: np.ndarray) -> float:
    """F1 score of the foreground class: 2 TP / (2 TP + FP + FN); 1.0 when both are empty."""
    return dice(pred, label)


# ---------------------------------------------------------------------------------------
# Segments and the contingency table


def ground_truth_segments(label: np.ndarray) -> np.ndarray:
    """(H, W) int32: 4-connected components of the foreground (cells), 0 = membrane."""
    return ndimage.label(label != 0, structure=FOUR)[0].astype(np.int32)


def thinned_segments(prob: np.ndarray, threshold: float) -> np.ndarray:
    """The ISBI proposal at one threshold: pixels above it are seeds (4-connected
    components), a 4-connected seeded watershed on 1 - prob grows them over the image and
    leaves one-pixel boundary lines (label 0). (H, W) int32.

    Only pixels at or below the threshold, plus the seeds' outer rim, are flooded (the
    seeds' interiors cannot change), which halves the work.
    """
    from skimage.segmentation import watershed

    fg = prob > threshold
    seeds, n = ndimage.label(fg, structure=FOUR)
    if n == 0:
        return np.zeros(prob.shape, np.int32)
    flood = ~ndimage.binary_erosion(fg, structure=FOUR, border_value=1)
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
    _check(gt, seg)
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


# ---------------------------------------------------------------------------------------
# Instances
#
# Two (H, W) label images: 0 = background, every positive id one object (ids need not be
# consecutive; an object need not be connected). Everything below is computed from one
# sparse table of the pixel overlaps between objects, built by counting label pairs.

DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5, 0.55, ..., 0.95


def _instance_labels(a: np.ndarray, name: str) -> np.ndarray:
    """A label image as a flat int64 array; refuses negative or non-integer values."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a.ravel().astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise ValueError(f"{name} must hold integer labels, got non-integer value {a[bad][0]}")
    elif not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label image, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{name} labels must be non-negative, got minimum {a.min()}")
    if a.size and a.max() >= 2**63:  # would not fit int64
        raise ValueError(f"{name} labels must be below 2**63, got maximum {a.max()}")
    return a.ravel().astype(np.int64)


def _check_instances(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _check(np.asarray(gt), np.asarray(pred))
    return _instance_labels(gt, "gt"), _instance_labels(pred, "pred")


def _compact(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat non-negative labels -> (ids (n,) sorted, same labels renumbered 1..n, 0 kept)."""
    top = int(a.max()) if a.size else 0
    if top <= 4 * a.size + 1024:  # dense lookup table: no sort
        present = np.bincount(a, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lut[a]
    ids, inverse = np.unique(a, return_inverse=True)  # huge ids: sort instead
    if ids[0] == 0:
        return ids[1:], inverse
    return ids, inverse + 1


@dataclass(frozen=True)
class _Overlaps:
    """Sparse overlap table of two label images.

    ``gi``, ``pj``, ``inter``: (k,) every pair of reference object (index into ``gt_ids``)
    and predicted object (index into ``pred_ids``) sharing ``inter`` > 0 pixels.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_sizes: np.ndarray
    pred_sizes: np.ndarray
    gi: np.ndarray
    pj: np.ndarray
    inter: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """(k,) float64 IoU of each overlapping pair."""
        union = self.gt_sizes[self.gi] + self.pred_sizes[self.pj] - self.inter
        return self.inter / union


def _overlaps(g: np.ndarray, p: np.ndarray) -> _Overlaps:
    """The overlap table of flat, validated label arrays ``g`` and ``p``."""
    gt_ids, gc = _compact(g)
    pred_ids, pc = _compact(p)
    n_g, n_p = gt_ids.size, pred_ids.size
    keys = gc * (n_p + 1) + pc  # one key per (gt object, pred object) pair, 0 = background
    if (n_g + 1) * (n_p + 1) <= 4 * g.size + (1 << 20):
        table = np.bincount(keys, minlength=(n_g + 1) * (n_p + 1)).reshape(n_g + 1, n_p + 1)
        gt_sizes, pred_sizes = table.sum(axis=1)[1:], table.sum(axis=0)[1:]
        gi, pj = np.nonzero(table[1:, 1:])
        inter = table[1 + gi, 1 + pj]
    else:  # very many objects: count only the pairs that occur
        both = (gc > 0) & (pc > 0)
        pairs, inter = np.unique(keys[both], return_counts=True)
        gi, pj = np.divmod(pairs, n_p + 1)
        gi, pj = gi - 1, pj - 1
        gt_sizes = np.bincount(gc, minlength=n_g + 1)[1:]
        pred_sizes = np.bincount(pc, minlength=n_p + 1)[1:]
    return _Overlaps(gt_ids, pred_ids, gt_sizes, pred_sizes, gi, pj, inter)


def instance_ious(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU |R & S| / |R | S| of every reference object R with every predicted object S.

    ``gt``, ``pred``: (H, W) integer label images (any shape works, the same for both),
    0 = background. Returns ``(iou, gt_ids, pred_ids)``: iou (n_gt, n_pred) float64, row i
    for object ``gt_ids[i]``, column j for ``pred_ids[j]``; the ids (int64) sorted. No
    objects on a side: that axis has length 0. Computed from one count of label pairs
    (no loop over objects).
    """
    ov = _overlaps(*_check_instances(gt, pred))
    iou = np.zeros((ov.gt_ids.size, ov.pred_ids.size))
    iou[ov.gi, ov.pj] = ov.iou
    return iou, ov.gt_ids, ov.pred_ids


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching of predicted to reference objects at one IoU threshold.

    ``pairs``: (tp, 2) int64 (gt id, pred id), sorted by gt id; ``ious``: (tp,) float64.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    pairs: np.ndarray
    ious: np.ndarray


def _check_threshold(t: float) -> None:
    if not 0 <= t <= 1:
        raise ValueError(f"IoU threshold must be in [0, 1], got {t}")


def _match(ov: _Overlaps, threshold: float) -> Matching:
    iou = ov.iou
    keep = iou > threshold
    gi, pj, v = ov.gi[keep], ov.pj[keep], iou[keep]  # candidate pairs
    rows, r = np.unique(gi, return_inverse=True)
    cols, c = np.unique(pj, return_inverse=True)
    if rows.size < gi.size or cols.size < pj.size:  # an object has two candidates: t < 0.5
        from scipy.optimize import linear_sum_assignment

        # one unit per match, plus a tie-break by IoU worth less than one unit in total
        candidate = np.zeros((rows.size, cols.size))
        candidate[r, c] = v
        weight = np.where(candidate > 0, 1 + candidate / (2 * min(rows.size, cols.size)), 0)
        a, b = linear_sum_assignment(weight, maximize=True)
        a, b = a[weight[a, b] > 0], b[weight[a, b] > 0]
        gi, pj, v = rows[a], cols[b], candidate[a, b]
    order = np.argsort(gi, kind="stable")
    gi, pj, v = gi[order], pj[order], v[order]
    pairs = np.stack([ov.gt_ids[gi], ov.pred_ids[pj]], axis=1)  # (tp, 2)
    tp = int(gi.size)
    return Matching(threshold, tp, ov.pred_ids.size - tp, ov.gt_ids.size - tp, pairs, v)


def match_instances(gt: np.ndarray, pred: np.ndarray, *, threshold: float = 0.5) -> Matching:
    """Match predicted to reference objects one-to-one; a pair matches if IoU > threshold.

    TP = matched pairs, FP = unmatched predicted objects, FN = unmatched reference objects.
    The comparison is strict, as in the 2018 Data Science Bowl (a pair with IoU exactly 0.5
    is no match at threshold 0.5).

    threshold >= 0.5: exact, no assignment problem. IoU(R, S) > 0.5 implies
    |R & S| > |R | S| / 2 >= |R| / 2, so S covers more than half of R (and R of S); two
    disjoint objects cannot both do that, so every object has at most one partner above
    the threshold and those pairs are the matching.

    threshold < 0.5: an object may have several candidates. Among all one-to-one matchings
    of candidate pairs the one with the most pairs is taken (ties: the largest summed IoU),
    found with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on
    weights 1 + IoU / (2 min(rows, cols)). Greedy matching by IoU can find fewer pairs.
    For threshold >= 0.5 this rule gives the same matching as above.

    ``gt``, ``pred``: (H, W) integer label images, 0 = background.
    """
    _check_threshold(threshold)
    return _match(_overlaps(*_check_instances(gt, pred)), threshold)


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """num / den; 0 / 0 is 1.0 when both images are empty, else 0.0."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def _seg(ov: _Overlaps) -> float:
    """CTC SEG from the overlap table (see ``seg_score``)."""
    if ov.gt_ids.size == 0:
        return 1.0 if ov.pred_ids.size == 0 else 0.0
    covers = 2 * ov.inter > ov.gt_sizes[ov.gi]  # S takes more than half of R
    return float(ov.iou[covers].sum() / ov.gt_ids.size)


def _merges_splits(ov: _Overlaps) -> tuple[int, int]:
    covers = 2 * ov.inter > ov.gt_sizes[ov.gi]  # pred j takes > half of gt i's pixels
    merges = np.bincount(ov.pj[covers], minlength=ov.pred_ids.size) >= 2
    inside = 2 * ov.inter > ov.pred_sizes[ov.pj]  # > half of pred j's pixels lie in gt i
    splits = np.bincount(ov.gi[inside], minlength=ov.gt_ids.size) >= 2
    return int(merges.sum()), int(splits.sum())


def seg_score(gt_instances: np.ndarray, pred_instances: np.ndarray) -> float:
    """Cell Tracking Challenge SEG: mean over reference objects R of |R & S| / |R | S| for
    the predicted object S covering more than half of R (at most one can), else 0.

    No reference objects: 1.0 if none are predicted either, else 0.0.
    """
    return _seg(_overlaps(*_check_instances(gt_instances, pred_instances)))


def _instance_scores(g: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> dict:
    ov = _overlaps(g, p)
    both_empty = ov.gt_ids.size == 0 and ov.pred_ids.size == 0
    per_t = [_match(ov, t) for t in thresholds]
    m = next((x for x in per_t if x.threshold == 0.5), None) or _match(ov, 0.5)
    jaccard = [_ratio(x.tp, x.tp + x.fp + x.fn, both_empty) for x in per_t]
    merges, splits = _merges_splits(ov)
    return {
        "thresholds": list(thresholds),
        "tp": [x.tp for x in per_t],
        "fp": [x.fp for x in per_t],
        "fn": [x.fn for x in per_t],
        "dsb_per_threshold": jaccard,
        "dsb_score": float(np.mean(jaccard)),
        "ap50": _ratio(m.tp, m.tp + m.fp + m.fn, both_empty),
        "f1": _ratio(2 * m.tp, 2 * m.tp + m.fp + m.fn, both_empty),
        "precision50": _ratio(m.tp, m.tp + m.fp, both_empty),
        "recall50": _ratio(m.tp, m.tp + m.fn, both_empty),
        "seg": _seg(ov),
        "merges": merges,
        "splits": splits,
        "n_gt": int(ov.gt_ids.size),
        "n_pred": int(ov.pred_ids.size),
    }


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds is empty; give at least one IoU threshold")
    for t in thresholds:
        _check_threshold(t)
    return thresholds


def instance_scores(
    gt: np.ndarray, pred: np.ndarray, *, thresholds: Sequence[float] = DSB_THRESHOLDS
) -> dict:
    """Object-level scores of one predicted label image against the reference.

    ``gt``, ``pred``: (H, W) integer label images, 0 = background, any positive ids.
    Matching as in ``match_instances`` (IoU > t, one-to-one). Keys:

    - ``thresholds``, ``tp``, ``fp``, ``fn``: per-threshold lists (counts of objects);
      ``dsb_per_threshold``: TP / (TP + FP + FN) at each threshold.
    - ``dsb_score``: the 2018 Data Science Bowl score, the mean of TP / (TP + FP + FN) over
      ``thresholds`` (default 0.5, 0.55, ..., 0.95). Caicedo et al., Nat. Methods 16:1247,
      2019, doi:10.1038/s41592-019-0612-7.
    - ``ap50``: TP / (TP + FP + FN) at IoU 0.5. This is what the DSB 2018 (and StarDist,
      Cellpose) call "average precision" at 0.5; it is not the area under a
      precision-recall curve as in object detection.
    - ``f1`` = 2 TP / (2 TP + FP + FN), ``precision50`` = TP / (TP + FP), ``recall50`` =
      TP / (TP + FN), all at IoU 0.5.
    - ``seg``: Cell Tracking Challenge SEG (``seg_score``).
    - ``merges``: predicted objects that each take more than half of the pixels of two or
      more reference objects (one count per predicted object, however many it merges).
    - ``splits``: reference objects holding more than half of the pixels of each of two or
      more predicted objects (one count per reference object). ``splits(gt, pred) ==
      merges(pred, gt)``.
    - ``n_gt``, ``n_pred``: numbers of objects.

    Empty images: a ratio whose denominator is 0 is 1.0 when both images have no objects
    and 0.0 otherwise, so both empty scores 1 everywhere, and exactly one empty scores 0
    (``seg`` likewise). Swapping ``gt`` and ``pred`` keeps TP and swaps FP with FN.
    """
    thresholds = _check_thresholds(thresholds)
    return _instance_scores(*_check_instances(gt, pred), thresholds)


def instance_scores_many(
    gts: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = DSB_THRESHOLDS,
) -> dict:
    """``instance_scores`` over a set of images (lists or (N, H, W) stacks).

    Returns the means over images of ``dsb_score``, ``ap50``, ``f1``, ``precision50``,
    ``recall50`` and ``seg`` (each image weighs the same, as in the DSB 2018); the sums of
    ``merges``, ``splits``, ``n_gt``, ``n_pred`` and of the per-threshold ``tp``, ``fp``,
    ``fn`` lists; ``thresholds``; ``images`` (N); and ``per_image``, the list of each
    image's ``instance_scores`` dict. Every pair is validated before any scoring.
    """
    thresholds = _check_thresholds(thresholds)
    gts, preds = list(gts), list(preds)
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} reference images but {len(preds)} predictions")
    if not gts:
        raise ValueError("no images to score")
    pairs = []
    for k, (g, p) in enumerate(zip(gts, preds, strict=True)):
        try:
            pairs.append(_check_instances(g, p))
        except ValueError as e:
            raise ValueError(f"image {k}: {e}") from None
    per_image = [_instance_scores(g, p, thresholds) for g, p in pairs]
    out: dict = {"images": len(per_image), "thresholds": thresholds}
    for key in ("dsb_score", "ap50", "f1", "precision50", "recall50", "seg"):
        out[key] = float(np.mean([r[key] for r in per_image]))
    for key in ("merges", "splits", "n_gt", "n_pred"):
        out[key] = int(sum(r[key] for r in per_image))
    for key in ("tp", "fp", "fn"):
        out[key] = [int(v) for v in np.sum([r[key] for r in per_image], axis=0)]
    out["per_image"] = per_image
    return out


# ---------------------------------------------------------------------------------------
# Warping error (Jain et al. 2010)


def _simple_lut() -> np.ndarray:
    """256-entry table: is the centre pixel simple for a (4, 8) topology (4-connected
    foreground, 8-connected background), by its 8 neighbours (bit k = neighbour k)?

    Simple: exactly one 4-connected foreground component among the neighbours that is
    4-adjacent to the centre, and exactly one 8-connected background component among the
    neighbours that is 8-adjacent (Kong & Rosenfeld).
    """
    # neighbours in circular order: N, NE, E, SE, S, SW, W, NW
    offsets = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
    lut = np.zeros(256, bool)
    for code in range(256):
        nb = np.zeros((3, 3), bool)
        for k, (dy, dx) in enumerate(offsets):
            nb[1 + dy, 1 + dx] = bool(code >> k & 1)
        fg = nb.copy()
        fg_lab, _ = ndimage.label(fg, structure=FOUR)
        fg_adj = {fg_lab[1 + dy, 1 + dx] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))} - {0}
        bg = ~nb
        bg[1, 1] = False
        bg_lab, _ = ndimage.label(bg, structure=np.ones((3, 3)))
        bg_adj = {bg_lab[1 + dy, 1 + dx] for dy, dx in offsets} - {0}
        lut[code] = len(fg_adj) == 1 and len(bg_adj) == 1
    return lut


_SIMPLE = _simple_lut()
_OFFSETS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def _neighbour_codes(a: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) uint8 codes of the 8 neighbours (outside the image = 0)."""
    p = np.pad(a, 1)
    H, W = a.shape
    code = np.zeros((H, W), np.uint8)
    for k, (dy, dx) in enumerate(_OFFSETS):
        code |= p[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W].astype(np.uint8) << k
    return code


def warp(label: np.ndarray, target: np.ndarray, max_rounds: int = 10_000) -> np.ndarray:
    """Warp binary ``label`` toward binary ``target`` by flipping only simple pixels.

    Flips proceed on the 9 sub-lattices (y mod 3, x mod 3) in turn: pixels of one
    sub-lattice are never neighbours, so flipping all of its simple mismatches at once is
    the same as flipping them one by one. Stops when no mismatched pixel is simple.
    """
    cur = label.astype(bool).copy()
    tgt = target.astype(bool)
    H, W = cur.shape
    yy, xx = np.mgrid[:H, :W]
    lattice = (yy % 3) * 3 + (xx % 3)
    for _ in range(max_rounds):
        changed = False
        for sub in range(9):
            cand = (cur != tgt) & (lattice == sub)
            if not cand.any():
                continue
            flip = cand & _SIMPLE[_neighbour_codes(cur)]
            if flip.any():
                cur[flip] = ~cur[flip]
                changed = True
        if not changed:
            break
    return cur


def warping_error(prob: np.ndarray, label: np.ndarray, *, threshold: float = 0.5) -> float:
    """Jain et al. 2010: the ground truth (foreground = cells, 4-connected) is warped toward
    the thresholded proposal by topology-preserving flips; the error is the fraction of
    pixels that still disagree (splits, merges, holes and the like)."""
    _check(prob, label)
    target = prob > threshold
    return float(np.mean(warp(label != 0, target) != target))


# ---------------------------------------------------------------------------------------
# The ISBI report


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
            rows["rand_f"][k] = rand_scores(gt, ndimage.label(p > t, structure=FOUR)[0]).score
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
    best value and its threshold. Keys as in ``biounet evaluate --json``.
    """
    probs = [prob] if isinstance(prob, np.ndarray) and prob.ndim == 2 else list(prob)
    labels = [label] if isinstance(label, np.ndarray) and label.ndim == 2 else list(label)
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probability maps but {len(labels)} labels")
    pairs = list(zip(probs, labels, strict=True))
    for p, g in pairs:
        _check(p, g)
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
    if "warping_error" in metrics:
        errors = [warping_error(p, g, threshold=warping_threshold) for p, g in pairs]
        out["warping_error"] = float(np.mean(errors))
    if "iou" in metrics:
        out["iou"] = float(np.mean([iou(p > 0.5, g) for p, g in pairs]))
    if "dice" in metrics:
        out["dice"] = float(np.mean([dice(p > 0.5, g) for p, g in pairs]))
    if "seg" in metrics:
        segs = [seg_score(ground_truth_segments(g), ndimage.label(p > 0.5, structure=FOUR)[0])
                for p, g in pairs]  # fmt: skip
        out["seg"] = float(np.mean(segs))
    out["thresholds"] = detail
    return out
