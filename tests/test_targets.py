import logging

import numpy as np
import pytest

from biounet.dataset import parse_slices
from biounet.errors import InputError
from biounet.io import read_instances, write_tiff
from biounet.labels import labels_to_instances
from biounet.targets import (
    contour_target,
    inner_boundary,
    make_target,
    near_another_instance,
)

# two touching 3 x 2 objects and a lone pixel
TOUCHING = np.array(
    [
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 2, 2, 0],
        [0, 1, 1, 2, 2, 0],
        [0, 1, 1, 2, 2, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 3],
    ]
)


def test_binary_target_carves_a_border_between_touching_objects_only():
    t = make_target(TOUCHING, "binary")
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 1],
        ]
    )
    np.testing.assert_array_equal(t, expected)
    assert t.dtype == np.uint8


def test_contour_target_marks_every_pixel_next_to_another_label():
    t = contour_target(np.pad(np.ones((4, 4), int), 1))
    expected = np.pad(np.array([[2, 2, 2, 2], [2, 1, 1, 2], [2, 1, 1, 2], [2, 2, 2, 2]]), 1)
    np.testing.assert_array_equal(t, expected)
    t = contour_target(TOUCHING)
    assert (t[1:4, 1:5] == 2).all()  # 2-wide objects: all boundary
    assert t[5, 5] == 2 and (t[TOUCHING == 0] == 0).all()


def test_touch_width_widens_the_boundary_only_where_objects_touch():
    rng = np.random.default_rng(5)
    lab = rng.integers(0, 4, (14, 17))
    lab = np.repeat(np.repeat(lab, 2, 0), 2, 1)  # 2 x 2 blocks: touching, gaps, edges
    for reach in (1, 2, 3):
        slow = np.zeros(lab.shape, bool)  # the definition, pixel by pixel
        for y, x in np.argwhere(lab != 0):
            for v, u in np.argwhere((lab != 0) & (lab != lab[y, x])):
                slow[y, x] |= abs(v - y) + abs(u - x) <= reach
        np.testing.assert_array_equal(near_another_instance(lab, reach), slow)
    t = contour_target(lab, 1, touch_width=3)
    expected = contour_target(lab)
    expected[near_another_instance(lab, 3)] = 2
    np.testing.assert_array_equal(t, expected)
    # two touching squares: three boundary columns each side of the shared edge, one
    # against the background
    sq = np.zeros((9, 16), int)
    sq[1:8, 1:8], sq[1:8, 8:15] = 1, 2
    row = contour_target(sq, 1, touch_width=3)[4]
    np.testing.assert_array_equal(row, [0, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 0])
    np.testing.assert_array_equal(contour_target(sq, 1, touch_width=1), contour_target(sq))


def test_the_image_edge_is_not_a_boundary():
    lab = np.zeros((4, 4), int)
    lab[:, :2] = 5  # touches the left edge
    b = inner_boundary(lab)
    np.testing.assert_array_equal(b[:, 0], False)
    np.testing.assert_array_equal(b[:, 1], True)


def test_instance_labels_are_validated_and_binary_masks_split_with_a_warning(tmp_path, caplog):
    inst, was_binary = labels_to_instances(TOUCHING.astype(np.uint16), "x.tif")
    np.testing.assert_array_equal(inst, TOUCHING)
    assert not was_binary
    binary = (TOUCHING > 0).astype(np.uint8) * 255
    inst, was_binary = labels_to_instances(binary, "x.tif")
    assert was_binary and inst.max() == 2  # touching objects merged: 2 components
    with pytest.raises(InputError, match=r"^y\.tif: label values are not instance ids: negative"):
        labels_to_instances(np.array([[0, -1]]), "y.tif")
    with pytest.raises(InputError, match=r"^y\.tif: .*fractional value 0\.5"):
        labels_to_instances(np.array([[0, 0.5]]), "y.tif")
    folder = tmp_path / "labels"
    folder.mkdir()
    write_tiff(folder / "a.tif", binary)
    write_tiff(folder / "b.tif", binary)
    write_tiff(folder / "c.tif", TOUCHING.astype(np.uint16))
    with caplog.at_level(logging.WARNING, logger="biounet"):
        labels = read_instances(folder)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "labels/a and 1 more: binary mask" in warnings[0]
    assert [a.max() for a in labels.arrays] == [2, 2, 3]


def test_held_out_images_can_be_named_in_a_list_file(tmp_path):
    names = ["a", "b", "c", "d"]
    lst = tmp_path / "val.txt"
    lst.write_text("# held out\nd\nb  # second\n\n")
    assert parse_slices(f"@{lst}", 4, "validation", names) == [1, 3]
    lst.write_text("b\nzz\n")
    with pytest.raises(InputError, match=r"val\.txt: 'zz' is not among the 4 images"):
        parse_slices(f"@{lst}", 4, "validation", names)
    with pytest.raises(InputError, match="no such list file"):
        parse_slices(f"@{tmp_path}/nope.txt", 4, "validation", names)


def test_a_wider_boundary_class_erodes_the_interior_further():
    lab = np.pad(np.ones((6, 6), int), 1)
    t = contour_target(lab, width=2)
    assert (t[3:5, 3:5] == 1).all() and (t == 1).sum() == 4
    assert (t == 2).sum() == 32 and (t[lab == 0] == 0).all()
    with pytest.raises(ValueError, match="width must be >= 1, got 0"):
        contour_target(lab, width=0)


