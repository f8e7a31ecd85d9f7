import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from biounet.errors import InputError
from biounet.labels import instances_from_mask, separate_touching
from biounet.weights import background_weights, cached_weight_maps, class_balance, weight_map


def slow_weight_map(mask, w0=10.0, sigma=5.0, background=None):
    """Obviously correct reference: one full-image distance transform per instance, sort,
    take the two smallest; instances and class balance computed independently here."""
    mask = np.asarray(mask)
    values = set(np.unique(mask).tolist())
    if values <= {0, 1} or values <= {0, 255}:
        inst, n = ndimage.label(mask != 0, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    else:
        inst, n = mask.astype(np.int64), int(mask.max())
        carved = inst.copy()
        H, W = inst.shape
        for y in range(H):
            for x in range(W):
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    yy, xx = y + dy, x + dx
                    if (
                        0 <= yy < H
                        and 0 <= xx < W
                        and inst[y, x]
                        and inst[yy, xx] not in (0, inst[y, x])
                    ):
                        carved[y, x] = 0
        inst = carved
    ids = [i for i in range(1, n + 1) if np.any(inst == i)]
    fg = inst != 0
    f_fg, f_bg = fg.mean(), 1 - fg.mean()
    wc = np.ones(mask.shape) if f_fg in (0, 1) else np.where(fg, 1.0, f_fg / f_bg)
    if background is not None:
        wc = np.where(fg, 1.0, background)
    if len(ids) < 2:
        return wc
    dists = np.sort(np.stack([ndimage.distance_transform_edt(inst != i) for i in ids]), axis=0)
    border = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    return wc + np.where(inst == 0, border, 0)  # the border term lives on background pixels


def touching_cells():
    """Two squares sharing an edge, a disc, and a lone pixel on a 40 x 50 canvas."""
    lab = np.zeros((40, 50), np.uint16)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2  # touches 1
    yy, xx = np.mgrid[:40, :50]
    lab[(yy - 28) ** 2 + (xx - 30) ** 2 < 36] = 3
    lab[35, 5] = 7
    return lab


def test_matches_the_slow_reference_on_isbi_crops(isbi):
    labels = isbi[1]
    for s, (y, x) in ((0, (0, 0)), (13, (300, 140)), (29, (412, 412))):
        crop = labels[s, y : y + 100, x : x + 100]
        np.testing.assert_allclose(weight_map(crop), slow_weight_map(crop), atol=1e-4)


def test_matches_the_slow_reference_on_touching_instances():
    lab = touching_cells()
    np.testing.assert_allclose(weight_map(lab), slow_weight_map(lab), atol=1e-4)
    np.testing.assert_allclose(
        weight_map(lab, w0=5, sigma=2), slow_weight_map(lab, w0=5, sigma=2), atol=1e-4
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 12))
def test_matches_the_slow_reference_on_random_discs(seed, n):
    rng = np.random.default_rng(seed)
    lab = np.zeros((48, 40), np.int32)
    yy, xx = np.mgrid[:48, :40]
    for i in range(1, n + 1):
        cy, cx, r = rng.integers(0, 48), rng.integers(0, 40), rng.integers(2, 9)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i + 1  # later discs overlap earlier
    np.testing.assert_allclose(weight_map(lab), slow_weight_map(lab), atol=1e-4)


def test_touching_instances_get_a_carved_border_where_w_peaks():
    lab = touching_cells()
    carved = separate_touching(lab.astype(np.int32))
    assert np.all(carved[5:15, 14:16] == 0)  # both sides of the shared edge
    assert np.all(carved[5:15, 5:14] == 1) and np.all(carved[5:15, 16:25] == 2)
    w = weight_map(lab)
    assert np.unravel_index(np.argmax(w), w.shape)[1] in (14, 15)  # the peak is on the border
    wc_bg = (carved != 0).mean() / (carved == 0).mean()
    assert w[10, 14] == pytest.approx(
        wc_bg + 10 * np.exp(-((1 + 2) ** 2) / 50), rel=1e-6
    )  # d1=1, d2=2
    np.testing.assert_array_equal(w[carved != 0], 1.0)  # cells weigh exactly 1


def test_weights_are_at_least_the_class_balance_and_float32(isbi):
    crop = isbi[1][4, :128, :128]
    w = weight_map(crop)
    wc = class_balance(crop != 0)
    assert w.dtype == np.float32 and w.shape == crop.shape
    assert np.all(w >= wc) and np.all(wc > 0)
    np.testing.assert_array_equal(wc[crop == 255], 1.0)
    assert wc[crop == 0][0] == pytest.approx((crop != 0).mean() / (crop == 0).mean())


@pytest.mark.parametrize("mask", [np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)])
def test_empty_and_full_masks_give_ones(mask):
    np.testing.assert_array_equal(weight_map(mask), 1.0)


def test_one_instance_has_no_border_term():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = 255
    w = weight_map(mask)
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w, class_balance(mask != 0))


def test_class_balance_per_image_per_dataset_or_none():
    crowded = touching_cells()
    sparse = np.zeros((40, 50), np.uint16)
    sparse[10:14, 10:14] = 1
    # carved foreground counted by hand: 9 + 9 columns of the squares, the disc, the pixel
    fg_crowded = 10 * 9 * 2 + int(((np.mgrid[:40, :50][0] - 28) ** 2
                                   + (np.mgrid[:40, :50][1] - 30) ** 2 < 36).sum()) + 1  # fmt: skip
    assert fg_crowded == int((slow_weight_map(crowded) == 1.0).sum())
    dataset = (fg_crowded + 16) / (2 * 2000 - fg_crowded - 16)
    assert background_weights([crowded, sparse], "image") == [None, None]
    assert background_weights([crowded, sparse], "none") == [1.0, 1.0]
    assert background_weights([crowded, sparse], "dataset") == pytest.approx([dataset] * 2)
    with pytest.raises(ValueError, match="class_balance must be image, dataset or none"):
        background_weights([sparse], "global")
    from biounet.config import TrainConfig

    with pytest.raises(ValueError, match=r"class_balance must be one of \('image', 'dataset'"):
        TrainConfig(class_balance="global")
    for balance, b in (("none", 1.0), ("dataset", dataset)):
        maps = cached_weight_maps([crowded, sparse], 10.0, 5.0, balance=balance)
        for m, lab in zip(maps, (crowded, sparse), strict=True):
            np.testing.assert_allclose(m, slow_weight_map(lab, background=b), atol=1e-4)
        np.testing.assert_allclose(maps[1][0, 0], b, rtol=1e-6)  # one cell: no border term
    # the per-image balance (the paper) weighs the sparse image's background far less
    image = cached_weight_maps([crowded, sparse], 10.0, 5.0)
    assert image[1][0, 0] == pytest.approx(16 / (2000 - 16))
    assert image[0][0, 0] == pytest.approx(fg_crowded / (2000 - fg_crowded), abs=1e-3)


def test_binary_masks_use_4_connected_components():
    mask = np.array([[1, 0], [0, 1]], np.uint8)  # diagonal neighbours: two cells
    assert instances_from_mask(mask).max() == 2


def test_non_integer_labels_are_a_one_line_error():
    with pytest.raises(InputError, match="not integer"):
        weight_map(np.array([[0.0, 1.5], [2.0, 0.0]]))


def test_class_map_cells_are_each_class_components_and_touching_classes_get_a_border():
    classes = np.zeros((30, 40), np.uint8)
    classes[5:15, 3:12] = 1  # two objects of class 1, apart
    classes[5:15, 25:35] = 1
    classes[17:27, 3:20] = 2  # one object of class 2, whose top part
    classes[15:17, 3:12] = 2  # touches the first class-1 object along rows 14 / 15
    inst = np.zeros(classes.shape, np.int32)  # the same objects as instance ids
    inst[5:15, 3:12], inst[5:15, 25:35] = 1, 2
    inst[17:27, 3:20], inst[15:17, 3:12] = 3, 3
    w = weight_map(classes, class_map=True)
    np.testing.assert_array_equal(w, weight_map(inst))
    assert w[14, 6] > 5 and w[15, 6] > 5  # the carved edge between classes 1 and 2
    # read as instance ids, the two class-1 objects would be one cell: no border between
    assert not np.array_equal(weight_map(classes), w)


def test_ignored_pixels_are_neither_cells_nor_background_and_weigh_nothing():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = mask[5:15, 18:28] = 1
    blob = np.zeros(mask.shape, bool)
    blob[25:35, 10:20] = True  # would be a third cell near the first two
    with_blob = np.where(blob, 1, mask)
    w = weight_map(with_blob, background=1.0, ignored=blob)
    reference = weight_map(mask, background=1.0)  # no such cell at all
    np.testing.assert_array_equal(w, np.where(blob, 0.0, reference))
    # what lies under ignored pixels does not matter
    np.testing.assert_array_equal(w, weight_map(np.where(blob, 7, mask), background=1.0,
                                                ignored=blob))  # fmt: skip
    # class balance among the labelled pixels: 200 cell pixels of 1600 - 100 labelled
    wc = weight_map(with_blob, w0=0, ignored=blob)
    assert wc[0, 0] == pytest.approx(200 / 1300) and wc[6, 6] == 1 and wc[30, 15] == 0
    dataset = background_weights([with_blob], "dataset", ignored=[blob])
    assert dataset == [pytest.approx(200 / 1300)]


def test_cached_maps_tell_ignored_pixels_and_class_maps_apart(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8], mask[2:8, 9:15] = 1, 2
    ignored = np.zeros(mask.shape, bool)
    ignored[15:, :] = True
    plain = cached_weight_maps([mask], 10.0, 5.0, tmp_path)[0]
    classes = cached_weight_maps([mask], 10.0, 5.0, tmp_path, class_map=True)[0]
    ig = cached_weight_maps([mask], 10.0, 5.0, tmp_path, class_map=True, ignored=[ignored])[0]
    np.testing.assert_array_equal(classes, weight_map(mask, class_map=True))
    np.testing.assert_array_equal(ig, weight_map(mask, class_map=True, ignored=ignored))
    assert len(list(tmp_path.glob("weight-maps-*.npz"))) == 3
    assert not np.array_equal(plain, ig) and (ig[15:] == 0).all()
