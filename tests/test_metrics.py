"""ISBI 2012 and instance metrics on tiny hand-computed cases, plus invariances."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import adapted_rand_error

from biounet.metrics import (
    class_scores,
    class_scores_many,
    confusion_matrix,
    contingency,
    dice,
    dice_per_class,
    information_scores,
    iou,
    iou_per_class,
    isbi_scores,
    rand_scores,
    seg_score,
    thinned_segments,
    warp,
    warping_error,
)


def row(*v):
    return np.array([v], np.int32)


def test_rand_merge_of_two_cells_lowers_the_merge_score_only():
    r = rand_scores(row(1, 1, 2, 2), row(1, 1, 1, 1))
    # p = (1/2, 1/2); sum p^2 = 1/2; sum t^2 = 1/2; sum s^2 = 1
    assert (r.score, r.split, r.merge) == pytest.approx((2 * 0.5 / 1.5, 1.0, 0.5))


def test_rand_split_of_one_cell_lowers_the_split_score_only():
    r = rand_scores(row(1, 1, 1, 1), row(7, 7, 3, 3))
    assert (r.score, r.split, r.merge) == pytest.approx((2 * 0.5 / 1.5, 0.5, 1.0))


def test_boundary_pixels_inside_a_cell_are_singletons():
    # one cell of 4 pixels; the proposal draws a boundary (0) through its second pixel
    r = rand_scores(row(1, 1, 1, 1), row(1, 0, 1, 1))
    # n = (3, 1): sum p^2 = 9/16 + 1/16 = 10/16 = sum s^2; sum t^2 = 1
    assert (r.split, r.merge) == pytest.approx((10 / 16, 1.0))
    assert r.score == pytest.approx(2 * (10 / 16) / (1 + 10 / 16))
    # two boundary pixels are two singletons, not one segment
    r2 = rand_scores(row(1, 1, 1, 1), row(1, 0, 0, 1))
    assert r2.split == pytest.approx((4 + 1 + 1) / 16)
    table = contingency(row(1, 1, 1, 1), row(1, 0, 0, 1))
    assert table.singletons == 2 and table.n.tolist() == [2] and table.total == 4


def test_ground_truth_background_does_not_count():
    assert rand_scores(row(0, 1, 1, 0), row(5, 1, 1, 9)).score == 1.0
    assert information_scores(row(0, 1, 1, 0), row(5, 1, 1, 9)).score == 1.0


def test_information_scores_by_hand():
    v = information_scores(row(1, 1, 2, 2), row(1, 1, 2, 3))
    h_t = math.log(2)
    h_s = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    mutual = h_t  # every proposal segment lies in one cell
    assert (v.score, v.split, v.merge) == pytest.approx(
        (2 * mutual / (h_t + h_s), mutual / h_s, 1.0))  # fmt: skip
    merged = information_scores(row(1, 1, 2, 2), row(1, 1, 1, 1))
    assert (merged.score, merged.split, merged.merge) == pytest.approx((0.0, 1.0, 0.0))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_rand_agrees_with_scikit_image_where_definitions_coincide(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, (12, 10))
    seg = rng.integers(1, 5, (12, 10))  # no boundary pixels, so no singletons
    ours = rand_scores(gt, seg, exclude_self_pairs=True)
    error, precision, recall = adapted_rand_error(gt, seg)
    assert ours.score == pytest.approx(1 - error, abs=1e-9)
    assert sorted([ours.split, ours.merge]) == pytest.approx(sorted([precision, recall]), abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_relabelling_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, (9, 9))
    seg = rng.integers(0, 5, (9, 9))
    perm = np.array([0, *rng.permutation(np.arange(1, 5)) + 10])  # keep 0 = boundary
    assert rand_scores(gt, seg) == rand_scores(gt, perm[seg])
    a, b = information_scores(gt, seg), information_scores(gt, perm[seg])
    assert a.score == pytest.approx(b.score) and a.split == pytest.approx(b.split)


def _two_cells():
    """A 12 x 12 label: two cells separated by a 2-pixel membrane, 0 = membrane."""
    lab = np.zeros((12, 12), np.uint8)
    lab[1:11, 1:5] = 255
    lab[1:11, 7:11] = 255
    return lab


def test_perfect_prediction_scores_one_and_zero_errors():
    lab = _two_cells()
    prob = (lab == 255).astype(np.float32)
    r = isbi_scores(prob, lab, metrics=("v_rand", "v_info", "pixel_error", "rand_error",
                                        "warping_error", "iou", "dice", "seg"))  # fmt: skip
    assert r["v_rand"] == r["v_info"] == 1.0
    assert r["pixel_error"] == r["rand_error"] == r["warping_error"] == 0.0
    assert r["iou"] == r["dice"] == r["seg"] == 1.0
    assert len(r["thresholds"]["v_rand"]) == 11


def test_thinning_leaves_one_pixel_boundaries():
    lab = _two_cells()
    prob = (lab == 255).astype(np.float32) * 0.8 + 0.1
    seg = thinned_segments(prob, 0.5)
    assert set(np.unique(seg)) == {0, 1, 2}
    assert np.count_nonzero(seg == 0) <= 12 * 2  # at most a 2-pixel-wide line, 12 rows
    assert np.all(seg[:, 0] != 0) and np.all(seg[:, -1] != 0)


def test_merging_the_cells_lowers_v_rand_through_its_merge_part():
    lab = _two_cells()
    prob = np.where(lab == 255, 0.9, 0.1).astype(np.float32)
    prob[5, 5:7] = 0.9  # a bridge through the membrane: both cells become one segment
    r = isbi_scores(prob, lab, metrics=("v_rand",), thresholds=(0.5,))
    assert r["v_rand_split"] == 1.0 and r["v_rand_merge"] < 0.6


def test_warping_error_ignores_boundary_shifts_and_counts_topology():
    lab = _two_cells()
    shifted = np.zeros_like(lab)
    shifted[1:11, 1:6] = 255  # one cell one pixel wider: no change of topology
    shifted[1:11, 7:11] = 255
    assert warping_error(shifted / 255.0, lab) == 0.0
    merged = shifted.copy()
    merged[5, 5:7] = 255  # bridge the two cells: a merge that warping cannot undo
    err = warping_error(merged / 255.0, lab)
    assert 0 < err <= 2 / 144  # the bridge pixel(s) remain wrong
    assert not np.array_equal(warp(lab > 0, merged > 0), merged > 0)


def test_seg_by_hand():
    gt = np.array([[1, 1, 2, 2, 0], [1, 1, 2, 2, 0]])
    pred = np.array([[4, 4, 7, 7, 7], [4, 4, 0, 7, 0]])
    # object 1: matched by 4 exactly (J = 1); object 2 (4 px): 7 covers 3 of its pixels and
    # has 4 pixels, J = 3 / (4 + 4 - 3) = 3 / 5
    assert seg_score(gt, pred) == pytest.approx((1 + 3 / 5) / 2)
    half = np.array([[4, 4, 7, 0, 0], [4, 4, 0, 7, 0]])  # 7 covers only half of object 2
    assert seg_score(gt, half) == pytest.approx(0.5)
    assert seg_score(np.zeros((2, 2), int), np.zeros((2, 2), int)) == 1.0


def test_best_threshold_is_reported_and_bad_metric_names_refused():
    lab = _two_cells()
    prob = np.where(lab == 255, 0.35, 0.2).astype(np.float32)  # separable only below 0.35
    r = isbi_scores(prob, lab, metrics=("v_rand", "pixel_error"))
    assert r["v_rand"] == 1.0 and r["v_rand_threshold"] in (0.2, 0.3)
    with pytest.raises(ValueError, match="unknown metrics \\['vrand'\\]; choose from"):
        isbi_scores(prob, lab, metrics=("vrand",))
    with pytest.raises(ValueError, match="shapes differ"):
        isbi_scores(prob, lab[:5])


def _slow_scores(gt, seg):
    """Reference: give each boundary pixel its own label, then count pairs / entropies."""
    fg = gt > 0
    g, s = gt[fg], seg[fg].copy()
    zeros = np.flatnonzero(s == 0)
    s[zeros] = s.max() + 1 + np.arange(zeros.size)
    N = g.size
    joint = {}
    for a, b in zip(g.tolist(), s.tolist(), strict=True):
        joint[(a, b)] = joint.get((a, b), 0) + 1
    rows, cols = {}, {}
    for (a, b), c in joint.items():
        rows[a] = rows.get(a, 0) + c
        cols[b] = cols.get(b, 0) + c
    sp2 = sum(c * c for c in joint.values())
    st2 = sum(c * c for c in rows.values())
    ss2 = sum(c * c for c in cols.values())
    ent = lambda d: -sum(c / N * math.log(c / N) for c in d.values())  # noqa: E731
    mutual = ent(rows) + ent(cols) - ent(joint)
    return 2 * sp2 / (st2 + ss2), 2 * mutual / (ent(rows) + ent(cols))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_rand_and_info_match_a_slow_reference_with_boundary_pixels(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, (10, 11))
    seg = rng.integers(0, 4, (10, 11))  # zeros: boundary pixels, each a singleton
    v_rand, v_info = _slow_scores(gt, seg)
    assert rand_scores(gt, seg).score == pytest.approx(v_rand, abs=1e-12)
    assert information_scores(gt, seg).score == pytest.approx(v_info, abs=1e-12)


_G3 = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
_P3 = np.array([[0, 1, 2], [2, 0, 0]], np.uint8)


def test_confusion_matrix_counts_reference_by_predicted_class():
    cm = confusion_matrix(_P3, _G3, num_classes=3)
    np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 1, 1], [1, 0, 1]])
    assert cm.dtype == np.int64


def test_per_class_iou_and_dice_by_hand():
    # class 1: TP 1, FP 0, FN 1 -> IoU 1/2, Dice 2/3; class 2: TP 1, FP 1, FN 1 -> 1/3, 2/4
    r = class_scores(confusion_matrix(_P3, _G3, num_classes=3))
    assert r["iou_per_class"] == pytest.approx([1 / 2, 1 / 3])
    assert r["dice_per_class"] == pytest.approx([2 / 3, 1 / 2])
    assert r["mean_iou"] == pytest.approx(5 / 12) and r["mean_dice"] == pytest.approx(7 / 12)
    np.testing.assert_allclose(iou_per_class(_P3, _G3, num_classes=3), [1 / 2, 1 / 3])
    np.testing.assert_allclose(dice_per_class(_P3, _G3, num_classes=3), [2 / 3, 1 / 2])


def test_a_class_in_neither_map_is_nan_and_left_out_of_the_means():
    r = class_scores(confusion_matrix(_P3, _G3, num_classes=4))  # class 3 occurs nowhere
    assert r["iou_per_class"][:2] == pytest.approx([1 / 2, 1 / 3])
    assert math.isnan(r["iou_per_class"][2]) and math.isnan(r["dice_per_class"][2])
    assert r["mean_iou"] == pytest.approx(5 / 12) and r["mean_dice"] == pytest.approx(7 / 12)
    # a class only predicted (or only in the reference) scores 0, and counts in the mean
    pred = _P3.copy()
    pred[0, 0] = 3
    r = class_scores(confusion_matrix(pred, _G3, num_classes=4))
    assert r["iou_per_class"][2] == 0.0 and r["mean_iou"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    # no foreground class anywhere: nothing to score
    empty = class_scores(confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int),
                                          num_classes=3))  # fmt: skip
    assert all(math.isnan(v) for v in empty["iou_per_class"] + empty["dice_per_class"])
    assert math.isnan(empty["mean_iou"]) and math.isnan(empty["mean_dice"])
    assert class_scores(confusion_matrix(_G3, _G3, num_classes=3))["mean_iou"] == 1.0


def test_ignored_reference_pixels_are_left_out_whatever_is_predicted_there():
    label = _G3.copy()
    label[0, 2] = 255  # the (1, 2) pair: a class-1 pixel predicted as 2
    cm = confusion_matrix(_P3, label, num_classes=3, ignore=255)
    assert cm.sum() == 5
    r = class_scores(cm)
    assert r["iou_per_class"] == pytest.approx([1.0, 1 / 2])  # class 2: TP 1, FP 0, FN 1
    pred = _P3.copy()
    pred[0, 2] = 7  # out of range, but under an ignored pixel: never looked at
    np.testing.assert_array_equal(confusion_matrix(pred, label, num_classes=3, ignore=255), cm)
    with pytest.raises(ValueError, match="label has value 255, outside the classes 0..2"):
        confusion_matrix(_P3, label, num_classes=3)  # not ignored: not a class


def test_two_classes_agree_with_binary_iou_and_dice():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, g = rng.integers(0, 2, (2, 7, 5)), rng.integers(0, 2, (2, 7, 5))
        assert iou_per_class(p, g, num_classes=2)[0] == pytest.approx(iou(p, g))
        assert dice_per_class(p, g, num_classes=2)[0] == pytest.approx(dice(p, g))


def test_class_scores_many_pools_the_pixels_of_images_of_any_size():
    big_p, big_g = np.full((4, 4), 2), np.full((4, 4), 2)
    big_g[0, 0] = 1
    r = class_scores_many([_P3, big_p], [_G3, big_g], num_classes=3)
    both = (confusion_matrix(_P3, _G3, num_classes=3)
            + confusion_matrix(big_p, big_g, num_classes=3))  # fmt: skip
    assert r == {**class_scores(both), "pixels": 6 + 16}
    # class 1 of the second image is missed: TP 1, FP 0, FN 2 over both
    assert r["iou_per_class"][0] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        class_scores_many([_P3, _P3], [_G3], num_classes=3)


def test_class_map_errors_show_the_bad_value():
    with pytest.raises(ValueError, match="pred has value 3, outside the classes 0..2"):
        confusion_matrix(np.array([[3, 0]]), np.array([[0, 0]]), num_classes=3)
    with pytest.raises(ValueError, match=r"shapes differ: \(1, 2\) vs \(2, 1\)"):
        confusion_matrix(np.zeros((1, 2), int), np.zeros((2, 1), int), num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        confusion_matrix(_P3, _G3, num_classes=1)
