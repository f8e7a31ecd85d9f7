"""Segmentation metrics as pure numpy functions (no torch).

Conventions: ``prob`` is an (H, W) float map of the foreground (cell) probability;
``label`` an (H, W) integer or bool map, nonzero = foreground (cell), 0 = membrane /
background. Stacks are scored slice by slice and averaged, as the ISBI 2012 challenge did.

The ISBI 2012 metrics follow the organisers' Fiji evaluation (Arganda-Carreras et al.,
"Crowdsourcing the creation of image segmentation algorithms for connectomics", Front.
Neuroanat. 9:142, 2015, doi:10.3389/fnana.2015.00142): for each threshold the proposal's
boundaries are thinned to one pixel by a seeded watershed, scores are restricted to the
ground truth's foreground, and the maximum over thresholds is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse

FOUR = ndimage.generate_binary_structure(2, 1)
DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))


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
    leaves one-pixel boundary lines (label 0). (H, W) int32."""
    from skimage.segmentation import watershed

    seeds = ndimage.label(prob > threshold, structure=FOUR)[0]
    if seeds.max() == 0:
        return np.zeros(prob.shape, np.int32)
    return watershed(1.0 - prob, seeds, connectivity=1, watershed_line=True).astype(np.int32)


def contingency(gt: np.ndarray, seg: np.ndarray) -> sparse.csr_matrix:
    """Foreground-restricted contingency table n_ij (counts, float64).

    Only pixels with gt > 0 count. Each pixel with seg == 0 (a proposal boundary) inside the
    ground truth's foreground is its own singleton segment.
    """
    _check(gt, seg)
    fg = gt.ravel() > 0
    rows = gt.ravel()[fg].astype(np.int64)
    cols = seg.ravel()[fg].astype(np.int64)
    zero = cols == 0
    cols = cols.copy()
    cols[zero] = cols.max(initial=0) + 1 + np.arange(np.count_nonzero(zero))  # singletons
    shape = (rows.max(initial=0) + 1, cols.max(initial=0) + 1)
    n = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=shape).tocsr()
    n.sum_duplicates()
    return n


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
    n = contingency(gt, seg)
    N = n.sum()
    if N == 0:
        return Scores(1.0, 1.0, 1.0)
    self_pairs = N if exclude_self_pairs else 0.0
    sum_p2 = float(n.multiply(n).sum()) - self_pairs
    sum_t2 = float(np.square(np.asarray(n.sum(axis=1))).sum()) - self_pairs
    sum_s2 = float(np.square(np.asarray(n.sum(axis=0))).sum()) - self_pairs
    if sum_t2 + sum_s2 == 0:
        return Scores(1.0, 1.0, 1.0)
    split = sum_p2 / sum_t2 if sum_t2 else 1.0
    merge = sum_p2 / sum_s2 if sum_s2 else 1.0
    return Scores(2 * sum_p2 / (sum_t2 + sum_s2), split, merge)


def information_scores(gt: np.ndarray, seg: np.ndarray) -> Scores:
    """Foreground-restricted information-theoretic scores.

    V_info = 2 I(S;T) / (H(S) + H(T)); split = I / H(S) (falls when a cell is split),
    merge = I / H(T) (falls when cells are merged); natural logarithms (the ratio does not
    depend on the base). A single segment on both sides: all 1.
    """
    n = contingency(gt, seg).tocoo()
    N = n.sum()
    if N == 0:
        return Scores(1.0, 1.0, 1.0)
    p = n.data / N
    t = np.asarray(n.tocsr().sum(axis=1)).ravel() / N
    s = np.asarray(n.tocsc().sum(axis=0)).ravel() / N
    t, s = t[t > 0], s[s > 0]
    H_t = float(-(t * np.log(t)).sum())
    H_s = float(-(s * np.log(s)).sum())
    H_ts = float(-(p * np.log(p)).sum())
    mutual = H_t + H_s - H_ts
    if H_t + H_s <= 1e-15:
        return Scores(1.0, 1.0, 1.0)
    split = mutual / H_s if H_s > 1e-15 else 1.0
    merge = mutual / H_t if H_t > 1e-15 else 1.0
    return Scores(2 * mutual / (H_t + H_s), split, merge)


# ---------------------------------------------------------------------------------------
# Instances


def seg_score(gt_instances: np.ndarray, pred_instances: np.ndarray) -> float:
    """Cell Tracking Challenge SEG: mean over reference objects R of |R & S| / |R | S| for
    the predicted object S covering more than half of R (at most one can), else 0.

    No reference objects: 1.0 if none are predicted either, else 0.0.
    """
    _check(gt_instances, pred_instances)
    n = contingency(gt_instances, np.where(gt_instances > 0, pred_instances, 0)).tocoo()
    ref_sizes = np.bincount(gt_instances.ravel())[1:]
    ref_ids = np.flatnonzero(ref_sizes) + 1
    if ref_ids.size == 0:
        return 1.0 if not np.any(pred_instances) else 0.0
    pred_sizes = np.bincount(pred_instances.ravel())
    best = np.zeros(gt_instances.max() + 1)
    max_pred = pred_instances.max()
    for i, j, c in zip(n.row, n.col, n.data, strict=True):
        if j > max_pred or j == 0:
            continue  # singleton columns stand for unlabelled pixels
        if c > 0.5 * ref_sizes[i - 1]:
            best[i] = c / (ref_sizes[i - 1] + pred_sizes[j] - c)
    return float(best[ref_ids].mean())


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


def isbi_scores(
    prob: np.ndarray | Sequence[np.ndarray],
    label: np.ndarray | Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    metrics: Sequence[str] = (
        "v_rand",
        "v_info",
        "pixel_error",
        "rand_error",
        "iou",
        "dice",
        "seg",
    ),  # fmt: skip
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
    known = {"v_rand", "v_info", "pixel_error", "rand_error", "warping_error", "iou", "dice",
             "seg"}  # fmt: skip
    unknown = set(metrics) - known
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {sorted(known)}")
    rows = {m: np.zeros((len(probs), len(thresholds))) for m in
            ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split",
             "v_info_merge", "pixel_f", "rand_f")}  # fmt: skip
    need_thin = {"v_rand", "v_info"} & set(metrics)
    for s, (p, g) in enumerate(pairs):
        gt = ground_truth_segments(g)
        for k, t in enumerate(thresholds):
            if need_thin:
                seg = thinned_segments(p, t)
                if "v_rand" in metrics:
                    r = rand_scores(gt, seg)
                    rows["v_rand"][s, k], rows["v_rand_split"][s, k] = r.score, r.split
                    rows["v_rand_merge"][s, k] = r.merge
                if "v_info" in metrics:
                    v = information_scores(gt, seg)
                    rows["v_info"][s, k], rows["v_info_split"][s, k] = v.score, v.split
                    rows["v_info_merge"][s, k] = v.merge
            if "pixel_error" in metrics:
                rows["pixel_f"][s, k] = pixel_fscore(p > t, g)
            if "rand_error" in metrics:
                comps = ndimage.label(p > t, structure=FOUR)[0]
                rows["rand_f"][s, k] = rand_scores(gt, comps).score
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
