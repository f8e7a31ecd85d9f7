"""Instance metrics (DSB 2018 score, AP@0.5, F1, merges, splits) on hand-computed cases."""

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biounet.metrics import (
    DSB_THRESHOLDS,
    instance_ious,
    instance_scores,
    instance_scores_many,
    match_instances,
    seg_score,
)


def row(*v):
    return np.array([v], np.int32)


def two_objects():
    """6 x 6: object 5 (rows 0-1, cols 0-2) and object 9 (rows 3-4, cols 0-4)."""
    gt = np.zeros((6, 6), np.int32)
    gt[0:2, 0:3] = 5
    gt[3:5, 0:5] = 9
    return gt


def side_by_side():
    """6 x 6: two 6-pixel objects side by side and one 12-pixel object covering both."""
    two = np.zeros((6, 6), np.int32)
    two[0:2, 0:3] = 1
    two[0:2, 3:6] = 2
    one = np.zeros((6, 6), np.int32)
    one[0:2, :] = 4
    return two, one


def test_a_perfect_prediction_with_other_ids_scores_one():
    gt = two_objects()
    pred = np.where(gt == 5, 40, np.where(gt == 9, 3, 0))
    r = instance_scores(gt, pred)
    for key in ("dsb_score", "ap50", "f1", "precision50", "recall50", "seg"):
        assert r[key] == 1.0, key
    assert r["tp"] == [2] * 10 and r["fp"] == [0] * 10 and r["fn"] == [0] * 10
    assert (r["merges"], r["splits"], r["n_gt"], r["n_pred"]) == (0, 0, 2, 2)
    iou, gt_ids, pred_ids = instance_ious(gt, pred)
    assert gt_ids.tolist() == [5, 9] and pred_ids.tolist() == [3, 40]
    assert iou.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_a_shifted_object_with_iou_two_thirds_matches_up_to_threshold_065():
    gt = two_objects()
    pred = np.zeros_like(gt)
    pred[0:2, 0:3] = 2  # object 5 exactly
    pred[3:5, 1:6] = 7  # object 9 moved one pixel right: 8 shared of 12 pixels
    iou, _, _ = instance_ious(gt, pred)
    assert iou.tolist() == [[1.0, 0.0], [0.0, 2 / 3]]
    r = instance_scores(gt, pred)
    # 2/3 > 0.5, 0.55, 0.6, 0.65: both match; at 0.7 .. 0.95 (6 thresholds) one TP, FP, FN
    assert r["tp"] == [2, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert r["fp"] == r["fn"] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert r["dsb_per_threshold"] == [1.0] * 4 + [1 / 3] * 6
    assert r["dsb_score"] == pytest.approx((4 * 1 + 6 * (1 / 3)) / 10, abs=1e-15)  # 0.6
    assert r["ap50"] == r["f1"] == 1.0
    assert r["seg"] == pytest.approx((1 + 2 / 3) / 2)
    m = match_instances(gt, pred, threshold=0.7)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.pairs.tolist() == [[5, 2]] and m.ious.tolist() == [1.0]


def test_iou_exactly_at_the_threshold_is_not_a_match():
    gt, pred = row(1, 1, 1, 1), row(0, 0, 1, 1)  # IoU = 2/4 = 0.5
    assert match_instances(gt, pred, threshold=0.5).tp == 0
    assert match_instances(gt, pred, threshold=0.49).tp == 1


def test_one_prediction_covering_two_objects_is_one_merge():
    two, one = side_by_side()
    r = instance_scores(two, one)
    # each object: IoU 6 / 12 = 0.5, not > 0.5: no TP at any threshold
    assert (r["merges"], r["splits"]) == (1, 0)
    assert r["tp"][0] == 0 and r["fp"][0] == 1 and r["fn"][0] == 2
    assert r["dsb_score"] == r["ap50"] == r["f1"] == 0.0
    assert r["seg"] == 0.5  # the merged object takes more than half of each: J = 1/2 each


def test_a_merge_with_a_dominant_object_still_matches_it():
    gt, pred = row(1, 1, 1, 1, 1, 1, 1, 1, 2, 2), row(*[3] * 10)
    r = instance_scores(gt, pred)
    assert r["merges"] == 1
    assert (r["tp"][0], r["fp"][0], r["fn"][0]) == (1, 0, 1)  # IoU(1, 3) = 8/10
    assert r["ap50"] == 0.5 and r["f1"] == pytest.approx(2 / 3)


def test_covering_under_half_of_the_second_object_is_no_merge():
    gt, pred = row(1, 1, 2, 2, 2), row(3, 3, 3, 0, 0)  # 3 takes 1 of 3 pixels of object 2
    assert instance_scores(gt, pred)["merges"] == 0


def test_two_predictions_inside_one_object_are_one_split():
    two, one = side_by_side()
    r = instance_scores(one, two)
    assert (r["merges"], r["splits"]) == (0, 1)
    assert r["tp"][0] == 0 and r["fp"][0] == 2 and r["fn"][0] == 1
    # a split in three still counts once
    assert instance_scores(row(1, 1, 1, 1, 1, 1), row(4, 4, 5, 5, 6, 6))["splits"] == 1


def test_empty_images():
    empty = np.zeros((6, 6), np.uint8)
    r = instance_scores(empty, empty)
    for key in ("dsb_score", "ap50", "f1", "precision50", "recall50", "seg"):
        assert r[key] == 1.0, key
    assert r["tp"] == r["fp"] == r["fn"] == [0] * 10
    missed = instance_scores(two_objects(), empty)
    spurious = instance_scores(empty, two_objects())
    for r in (missed, spurious):
        for key in ("dsb_score", "ap50", "f1", "precision50", "recall50", "seg"):
            assert r[key] == 0.0, key
    assert missed["fn"] == spurious["fp"] == [2] * 10
    iou, gt_ids, pred_ids = instance_ious(empty, two_objects())
    assert iou.shape == (0, 2) and gt_ids.size == 0 and pred_ids.tolist() == [5, 9]


def test_label_ids_need_not_be_consecutive_and_objects_need_not_be_connected():
    gt = row(0, 1000, 1000, 0, 7, 7, 1000)  # object 1000 in two pieces
    pred = np.array([[0, 3, 3, 0, 2**40, 2**40, 3]])  # a huge id (sorting path)
    iou, gt_ids, pred_ids = instance_ious(gt, pred)
    assert gt_ids.tolist() == [7, 1000] and pred_ids.tolist() == [3, 2**40]
    assert iou.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert instance_scores(gt, pred)["dsb_score"] == 1.0


def test_float_and_bool_labels_holding_integers_are_accepted():
    gt = two_objects()
    assert instance_scores(gt.astype(np.float32), gt)["dsb_score"] == 1.0
    # as bool: one object 1 of 16 px, which holds object 9 (10 px): IoU 10/16
    assert match_instances(gt > 0, gt).pairs.tolist() == [[1, 9]]
    assert match_instances(gt > 0, gt > 0).pairs.tolist() == [[1, 1]]


def test_hungarian_matching_finds_two_pairs_where_greedy_finds_one():
    gt = row(1, 1, 1, 1, 1, 1, 2, 2)
    pred = row(2, 2, 1, 1, 1, 1, 1, 1)
    iou, _, _ = instance_ious(gt, pred)
    assert iou.tolist() == [[0.5, 1 / 3], [1 / 3, 0.0]]
    # greedy takes (1, 1) at IoU 0.5 first and leaves 2 without a partner
    m = match_instances(gt, pred, threshold=0.3)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.pairs.tolist() == [[1, 2], [2, 1]] and m.ious.tolist() == [1 / 3, 1 / 3]
    assert match_instances(gt, pred, threshold=0.45).pairs.tolist() == [[1, 1]]


def test_below_half_the_most_matches_win_over_the_largest_summed_iou():
    gt = row(1, 1, 1, 1, 1, 1, 1, 1, 2)  # 1: 8 px, 2: 1 px
    pred = row(0, 0, 0, 2, 1, 1, 1, 1, 1)  # 1: 5 px, 2: 1 px
    iou, _, _ = instance_ious(gt, pred)
    assert iou.tolist() == [[4 / 9, 1 / 8], [1 / 5, 0.0]]
    # (1,1) alone sums to 0.44; (1,2) + (2,1) to 0.325 but gives two matches
    m = match_instances(gt, pred, threshold=0.1)
    assert m.tp == 2 and m.pairs.tolist() == [[1, 2], [2, 1]]


def test_ties_in_the_number_of_matches_go_to_the_larger_summed_iou():
    # below 0.5, 1 may pair with 5 (IoU 2/3) or 6 (1/3): one match either way
    gt = row(1, 1, 1, 0, 0, 0, 0)
    pred = row(5, 5, 6, 0, 0, 0, 0)
    m = match_instances(gt, pred, threshold=0.2)
    assert m.tp == 1 and m.pairs.tolist() == [[1, 5]] and m.ious.tolist() == [2 / 3]


def test_scores_over_images_are_means_and_counts_are_sums():
    gt = two_objects()
    two, one = side_by_side()
    r = instance_scores_many([gt, two], [gt, one])
    assert r["images"] == 2
    assert r["dsb_score"] == r["ap50"] == r["f1"] == 0.5  # (1 + 0) / 2
    assert r["seg"] == 0.75  # (1 + 0.5) / 2
    assert (r["merges"], r["splits"], r["n_gt"], r["n_pred"]) == (1, 0, 4, 3)
    assert r["tp"] == [2] * 10 and r["fp"] == [1] * 10 and r["fn"] == [2] * 10
    assert len(r["per_image"]) == 2 and r["per_image"][1]["merges"] == 1
    stack = instance_scores_many(np.stack([gt, two]), np.stack([gt, one]), thresholds=[0.5])
    assert stack["tp"] == [2] and stack["dsb_score"] == 0.5


def test_errors_name_the_problem():
    gt = two_objects()
    with pytest.raises(ValueError, match=re.escape("shapes differ: (6, 6) vs (6, 5)")):
        instance_scores(gt, gt[:, :5])
    with pytest.raises(ValueError, match="pred labels must be non-negative, got minimum -1"):
        instance_ious(gt, gt - 1)
    with pytest.raises(ValueError, match="gt must hold integer labels, got non-integer value 5.5"):
        match_instances(gt + 0.5, gt)
    with pytest.raises(ValueError, match="gt must hold integer labels, got non-integer value nan"):
        instance_ious(np.full((2, 2), np.nan), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="must be an integer label image, got dtype complex128"):
        instance_ious(gt.astype(complex), gt)
    with pytest.raises(ValueError, match="labels must be below 2\\*\\*63, got maximum 1e\\+19"):
        instance_ious(np.full((2, 2), 1e19), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=re.escape("IoU threshold must be in [0, 1], got 1.5")):
        match_instances(gt, gt, threshold=1.5)
    with pytest.raises(ValueError, match="thresholds is empty"):
        instance_scores(gt, gt, thresholds=[])
    with pytest.raises(ValueError, match="2 reference images but 1 predictions"):
        instance_scores_many([gt, gt], [gt])
    with pytest.raises(ValueError, match="no images to score"):
        instance_scores_many([], [])
    with pytest.raises(ValueError, match=re.escape("image 1: shapes differ: (6, 6) vs (6, 5)")):
        instance_scores_many([gt, gt], [gt, gt[:, :5]])


def test_the_default_thresholds_are_the_dsb_ones():
    assert DSB_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_many_objects_use_the_sparse_table_and_agree():
    # 1100 two-pixel objects per side: a dense (1101 x 1101) pair table would be too big
    n = 1100
    gt = np.repeat(np.arange(1, n + 1), 2)[None]  # (1, 2200): 1 1 2 2 3 3 ...
    pred = np.concatenate([[0], gt[0, :-1]])[None]  # shifted one pixel: 0 1 1 2 2 ...
    iou, gt_ids, pred_ids = instance_ious(gt, pred)
    assert gt_ids.size == pred_ids.size == n
    expected = np.zeros((n, n))
    i = np.arange(n)
    expected[i, i] = 1 / 3  # 1 shared pixel of 3
    expected[i[1:], i[:-1]] = 1 / 3
    expected[-1, -1] = 1 / 2  # the last prediction is cut to one pixel by the image edge
    np.testing.assert_array_equal(iou, expected)
    assert match_instances(gt, pred, threshold=0.3).tp == n  # Hungarian over a 1100 chain


# ---------------------------------------------------------------------------------------
# Against slow references on random label images


def slow_ious(gt, pred):
    gt_ids = sorted(set(gt.ravel().tolist()) - {0})
    pred_ids = sorted(set(pred.ravel().tolist()) - {0})
    iou = np.zeros((len(gt_ids), len(pred_ids)))
    for i, a in enumerate(gt_ids):
        for j, b in enumerate(pred_ids):
            r, s = gt == a, pred == b
            iou[i, j] = np.count_nonzero(r & s) / np.count_nonzero(r | s)
    return iou, gt_ids, pred_ids


def slow_most_matches(iou, threshold):
    """The largest number of one-to-one pairs with IoU > threshold, by trying all."""
    n_gt, n_pred = iou.shape
    partners = list(range(n_pred)) + [None] * n_gt
    best = 0
    for choice in itertools.permutations(partners, n_gt):
        best = max(best, sum(j is not None and iou[i, j] > threshold for i, j in enumerate(choice)))
    return best


def random_labels(seed):
    """Blocky objects with random ids plus pixel noise, and a shifted, noisier copy."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[0], rng.choice(10_000, 4, replace=False) + 1])
    coarse = ids[rng.integers(0, 5, (3, 3))]
    gt = np.kron(coarse, np.ones((3, 3), np.int64))  # (9, 9)
    pred = np.roll(gt, rng.integers(-1, 2, 2), axis=(0, 1)) * rng.integers(1, 3)
    noise = rng.random(gt.shape) < 0.15
    pred[noise] = rng.choice(ids, noise.sum())
    return gt, pred


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_the_fast_iou_matrix_equals_a_per_object_loop(seed):
    gt, pred = random_labels(seed)
    iou, gt_ids, pred_ids = instance_ious(gt, pred)
    ref, ref_gt, ref_pred = slow_ious(gt, pred)
    assert gt_ids.tolist() == ref_gt and pred_ids.tolist() == ref_pred
    np.testing.assert_allclose(iou, ref, rtol=0, atol=1e-15)
    assert iou.dtype == np.float64


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), threshold=st.sampled_from([0.0, 0.1, 0.25, 0.4, 0.5, 0.7]))
def test_matching_is_one_to_one_and_as_large_as_possible(seed, threshold):
    gt, pred = random_labels(seed)
    iou, gt_ids, pred_ids = slow_ious(gt, pred)
    m = match_instances(gt, pred, threshold=threshold)
    assert m.tp == slow_most_matches(iou, threshold)
    assert (m.fp, m.fn) == (len(pred_ids) - m.tp, len(gt_ids) - m.tp)
    g, p = m.pairs.T.tolist() if m.tp else ([], [])
    assert len(set(g)) == len(set(p)) == m.tp
    for (a, b), v in zip(m.pairs.tolist(), m.ious.tolist(), strict=True):
        assert v == iou[gt_ids.index(a), pred_ids.index(b)] > threshold
    if threshold >= 0.5:  # unique: every pair above the threshold is a match
        assert m.tp == np.count_nonzero(iou > threshold)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_swapping_reference_and_prediction_keeps_tp_and_swaps_the_rest(seed):
    gt, pred = random_labels(seed)
    a, b = instance_scores(gt, pred), instance_scores(pred, gt)
    assert a["tp"] == b["tp"] and a["fp"] == b["fn"] and a["fn"] == b["fp"]
    assert (a["merges"], a["splits"]) == (b["splits"], b["merges"])
    assert a["dsb_score"] == b["dsb_score"] and a["f1"] == b["f1"]
    assert a["precision50"] == b["recall50"]
    assert a["seg"] == seg_score(gt, pred)
