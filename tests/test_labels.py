"""Label geometry and mask conversion on tiny hand-made arrays and against brute-force
references."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biounet import weights
from biounet.errors import InputError
from biounet.labels import (
    EIGHT_CONNECTED,
    FOUR_CONNECTED,
    IGNORE_INDEX,
    instances_from_mask,
    labels_to_instances,
    mask_to_classes,
    nearest_two_distances,
    separate_touching,
)


def random_labels(seed, max_id=4, background=0.5):
    """A small (H, W) label image, ids 0..max_id (some may be absent, some disconnected)."""
    rng = np.random.default_rng(seed)
    H, W = rng.integers(3, 10, size=2)
    lab = rng.integers(1, max_id + 1, size=(H, W))
    lab[rng.random((H, W)) < background] = 0
    return lab.astype(np.int32)


def brute_nearest_two(lab):
    """d1, d2 by measuring every pixel against every pixel of every instance."""
    H, W = lab.shape
    yy, xx = np.mgrid[:H, :W]
    per_instance = [np.full((H, W), np.inf), np.full((H, W), np.inf)]
    for i in np.unique(lab[lab > 0]):
        py, px = np.nonzero(lab == i)
        d = np.sqrt((yy[..., None] - py) ** 2 + (xx[..., None] - px) ** 2).min(axis=-1)
        per_instance.append(d)
    d = np.sort(np.stack(per_instance), axis=0)
    return d[0], d[1]


def brute_separate(lab):
    """A pixel becomes 0 when one of its 4-neighbours holds another nonzero id."""
    H, W = lab.shape
    out = lab.copy()
    for y in range(H):
        for x in range(W):
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W and lab[y, x] and lab[yy, xx] not in (0, lab[y, x]):
                    out[y, x] = 0
    return out


def test_connectivity_constants_are_the_cross_and_the_full_square():
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    np.testing.assert_array_equal(FOUR_CONNECTED, cross)
    np.testing.assert_array_equal(EIGHT_CONNECTED, np.ones((3, 3), bool))


@pytest.mark.parametrize("fg", [1, 255, True])
def test_diagonal_pixels_of_a_binary_mask_are_separate_objects(fg):
    mask = np.array([[fg, 0, 0], [0, fg, fg], [0, 0, 0]], np.uint8 if fg is not True else bool)
    inst, split = labels_to_instances(mask, "m.tif")
    np.testing.assert_array_equal(inst, [[1, 0, 0], [0, 2, 2], [0, 0, 0]])
    assert inst.dtype == np.int32 and split


def test_a_0_255_mask_is_split_even_with_one_object_a_0_1_mask_only_with_two():
    one = np.array([[0, 1, 1], [0, 1, 0]], np.uint8)
    inst, split = labels_to_instances(one * 255, "m.tif")
    np.testing.assert_array_equal(inst, one)
    assert split
    inst, split = labels_to_instances(one, "m.tif")
    np.testing.assert_array_equal(inst, one)
    assert not split  # a single object labelled 1 is also a valid instance image
    empty, split = labels_to_instances(np.zeros((2, 3), np.uint16), "m.tif")
    np.testing.assert_array_equal(empty, 0)
    assert not split


def test_instance_ids_are_kept_touching_or_not():
    lab = np.array([[3, 3, 7], [0, 7, 7], [2, 0, 0]], np.uint16)  # 3 and 7 touch
    inst, split = labels_to_instances(lab, "l.tif")
    np.testing.assert_array_equal(inst, lab)
    assert inst.dtype == np.int32 and not split
    floats = np.array([[0.0, 2.0], [5.0, 0.0]])  # whole numbers stored as floats
    np.testing.assert_array_equal(instances_from_mask(floats), [[0, 2], [5, 0]])
    np.testing.assert_array_equal(instances_from_mask(lab), lab)


def test_bad_label_values_are_one_line_errors_naming_where():
    with pytest.raises(InputError, match=r"^a\.tif: label values are not integer instance ids: "
                                         r"fractional value 0\.5$"):  # fmt: skip
        labels_to_instances(np.array([[0, 0.5]]), "a.tif")
    with pytest.raises(InputError, match=r"^a\.tif: .*fractional value nan"):
        labels_to_instances(np.array([[0, np.nan]]), "a.tif")
    with pytest.raises(InputError, match=r"^b\.tif slice 2: .*instance ids: negative value -3$"):
        labels_to_instances(np.array([[0, -3], [1, 2]], np.int16), "b.tif slice 2")
    with pytest.raises(InputError, match=r"^c\.tif: label image of dtype complex128; expected"):
        labels_to_instances(np.array([[0, 1j]]), "c.tif")
    with pytest.raises(InputError, match=r"^d\.tif: instance id 2\.14748e\+09 is too large$"):
        labels_to_instances(np.array([[0, 2**31]], np.int64), "d.tif")
    with pytest.raises(InputError, match=r"^label image: .*fractional value 1\.5"):
        instances_from_mask(np.array([[0.0, 1.5]]))


def test_separate_touching_carves_both_sides_of_a_shared_edge_only():
    lab = np.array(
        [
            [1, 1, 2, 2, 0, 0],
            [1, 1, 2, 2, 0, 3],
            [0, 0, 0, 0, 4, 0],  # 3 and 4 touch at a corner only: kept
        ],
        np.uint16,
    )
    carved = separate_touching(lab)
    expected = np.array([[1, 0, 0, 2, 0, 0], [1, 0, 0, 2, 0, 3], [0, 0, 0, 0, 4, 0]])
    np.testing.assert_array_equal(carved, expected)
    assert carved.dtype == np.int32


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_separate_touching_matches_the_brute_force_reference(seed):
    lab = random_labels(seed, background=0.3)
    np.testing.assert_array_equal(separate_touching(lab), brute_separate(lab))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), max_id=st.integers(1, 5))
def test_nearest_two_distances_match_the_brute_force_reference(seed, max_id):
    lab = random_labels(seed, max_id=max_id, background=0.8)
    d1, d2 = nearest_two_distances(lab)
    r1, r2 = brute_nearest_two(lab)
    np.testing.assert_allclose(d1, r1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d2, r2, rtol=0, atol=1e-12)
    assert d1.dtype == d2.dtype == np.float64
    np.testing.assert_array_equal(d1[lab > 0], 0.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), max_distance=st.floats(0.5, 6.0))
def test_max_distance_changes_nothing_below_it(seed, max_distance):
    lab = random_labels(seed, max_id=5, background=0.9)
    lab = np.pad(lab, ((0, 12), (0, 15)))  # room for distances beyond max_distance
    full = nearest_two_distances(lab)
    cut = nearest_two_distances(lab, max_distance=max_distance)
    for d, c in zip(full, cut, strict=True):
        below = d < max_distance
        np.testing.assert_array_equal(c[below], d[below])
        assert np.all(c >= d)  # beyond it a distance is never underestimated (maybe inf)


def test_fewer_than_two_instances_leave_d2_infinite():
    lab = np.zeros((3, 4), np.int32)
    d1, d2 = nearest_two_distances(lab)
    assert np.isinf(d1).all() and np.isinf(d2).all()
    lab[0, 0] = 9
    d1, d2 = nearest_two_distances(lab)
    assert d1[2, 3] == pytest.approx(math.hypot(2, 3)) and np.isinf(d2).all()


def test_weights_keeps_only_the_weight_map():
    for name in ("instances_from_mask", "separate_touching", "nearest_two_distances"):
        assert not hasattr(weights, name)
    with pytest.raises(ImportError, match="cannot import name 'separate_touching'"):
        from biounet.weights import separate_touching  # noqa: F401


def test_mask_encodings_map_to_classes():
    m255 = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(mask_to_classes(m255, 2, "m"), [[0, 1], [1, 0]])
    m01 = np.array([[0, 1], [1, 1]], np.uint8)
    np.testing.assert_array_equal(mask_to_classes(m01, 2, "m"), m01)
    m3 = np.array([[0, 1], [2, 2]], np.uint16)
    np.testing.assert_array_equal(mask_to_classes(m3, 3, "m"), m3)
    # all-background 0/255 masks stay all zeros; a mask of only 255 is all foreground
    np.testing.assert_array_equal(mask_to_classes(np.full((2, 2), 255, np.uint8), 2, "m"), 1)


@pytest.mark.parametrize(
    "mask,match",
    [
        (
            np.array([[0, 128], [255, 3]], np.uint8),
            "m.png: mask values are not classes: 4 distinct",
        ),
        (np.array([[0, 1], [2, 0]], np.uint8), "expected 0/255 or 0/1"),
        (np.array([[0, 0.5]], np.float32), "fractional values such as 0.5"),
        (np.array([[0, -1]], np.int16), "negative value -1"),
    ],
)
def test_masks_that_are_not_classes_are_errors(mask, match):
    with pytest.raises(InputError, match=match):
        mask_to_classes(mask, 2, "m.png")


def test_ignore_label_marks_unlabelled_pixels_and_may_not_be_a_class():
    assert IGNORE_INDEX == 255
    m = np.array([[0, 1], [255, 1]], np.uint8)  # 255: not labelled
    np.testing.assert_array_equal(mask_to_classes(m, 2, "m", ignore=255), [[0, 1], [255, 1]])
    m = np.array([[0, 255], [128, 255]], np.uint8)  # 0/255 binary, 128 not labelled
    np.testing.assert_array_equal(mask_to_classes(m, 2, "m", ignore=128), [[0, 1], [255, 1]])
    soft = np.array([[0, 90], [200, 7]], np.uint16)  # soft mask, 7 marks unlabelled pixels
    np.testing.assert_array_equal(mask_to_classes(soft, 2, "m", threshold=50, ignore=7),
                                  [[0, 1], [1, 255]])  # fmt: skip
    with pytest.raises(InputError, match=r"--ignore-label 1 is also a class of m.png "
                       r"\(classes 0..1\)"):  # fmt: skip
        mask_to_classes(np.array([[0, 1]], np.uint8), 2, "m.png", ignore=1)
    with pytest.raises(InputError, match=r"--ignore-label 2 is also a class of m \(classes 0..2"):
        mask_to_classes(np.array([[0, 1]], np.uint8), 3, "m", ignore=2)
    # the rest still has to be classes
    with pytest.raises(InputError, match="m: mask values are not classes: 3 distinct"):
        mask_to_classes(np.array([[0, 3, 4, 9]], np.uint8), 2, "m", ignore=9)
