"""Instance scores: two (H, W) label images compared object by object (numpy, no torch).

Two label images: 0 = background, every positive id one object (ids need not be
consecutive; an object need not be connected). Everything here is computed from one
sparse table of the pixel overlaps between objects, built by counting label pairs
(:func:`_overlaps`; no loop over objects).

- :func:`instance_ious`: the IoU matrix |R & S| / |R | S|.
- :func:`match_instances`: one-to-one matching at an IoU threshold (IoU > t, strict).
- :func:`instance_scores` / :func:`instance_scores_many`: the 2018 Data Science Bowl score
  (the mean over IoU thresholds 0.5, 0.55, ..., 0.95 of TP / (TP + FP + FN); Caicedo et
  al., Nat. Methods 16:1247, 2019, doi:10.1038/s41592-019-0612-7), AP@0.5 in the DSB sense,
  F1, precision and recall at IoU 0.5, SEG, merge and split counts.
- :func:`seg_score`: the Cell Tracking Challenge SEG, the mean IoU of each reference
  object with the predicted object covering more than half of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._checks import same_shape

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
    same_shape(np.asarray(gt), np.asarray(pred))
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

