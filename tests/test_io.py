import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from biounet.io import (
    InputError,
    check_pairs,
    mask_to_classes,
    normalize,
    read_images,
    read_masks,
    read_pairs,
    write_tiff,
)


def test_reads_the_isbi_stack_as_30_slices(isbi):
    from conftest import DATA

    images = read_images(DATA / "train-volume.tif")
    assert len(images) == 30 and images.arrays[0].shape == (512, 512)
    assert images.arrays[0].dtype == np.uint8
    np.testing.assert_array_equal(images.arrays[7], isbi[0][7])


@pytest.mark.parametrize(
    "mode,shape", [("L", (5, 7)), ("RGB", (5, 7, 3)), ("LA", (5, 7, 2)), ("RGBA", (5, 7, 4))]
)
def test_gray_rgb_and_alpha_pngs_become_gray(tmp_path, rng, mode, shape):
    data = rng.integers(0, 256, shape, dtype=np.uint8)
    if mode in ("RGB", "RGBA"):
        data[..., 1] = data[..., 2] = data[..., 0]  # gray stored as colour: kept exactly
    Image.fromarray(data, mode).save(tmp_path / "a.png")
    img = read_images(tmp_path / "a.png").arrays[0]
    assert img.shape == (5, 7)
    np.testing.assert_array_equal(img, data if data.ndim == 2 else data[..., 0])


def test_true_colour_converts_to_luma(tmp_path):
    data = np.zeros((4, 4, 3), np.uint8)
    data[..., 0] = 100
    data[..., 1] = 200
    tifffile.imwrite(tmp_path / "c.tif", data, photometric="rgb")
    img = read_images(tmp_path / "c.tif").arrays[0]
    np.testing.assert_allclose(img, 0.299 * 100 + 0.587 * 200, rtol=1e-6)


def test_planar_rgb_tiff_is_one_gray_image_and_gray_stacks_stay_stacks(tmp_path, rng):
    rgb = np.zeros((3, 4, 5), np.uint8)
    rgb[0] = 100
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    img = read_images(tmp_path / "planar.tif")
    assert len(img) == 1 and img.arrays[0].shape == (4, 5)
    np.testing.assert_allclose(img.arrays[0], 29.9, rtol=1e-5)
    stack = rng.integers(0, 255, (3, 4, 5), dtype=np.uint8)
    write_tiff(tmp_path / "stack.tif", stack)  # 3 slices, never mistaken for RGB
    assert len(read_images(tmp_path / "stack.tif")) == 3


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


def test_colour_coded_mask_is_an_error(tmp_path):
    data = np.zeros((4, 4, 3), np.uint8)
    data[0, 0] = (255, 0, 0)
    Image.fromarray(data).save(tmp_path / "m.png")
    with pytest.raises(InputError, match="m.png: colour mask"):
        read_masks(tmp_path / "m.png")


def test_folders_pair_by_file_name_whatever_the_extension(tmp_path, rng):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for name, size in (("b", (6, 9)), ("a", (8, 5))):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
            tmp_path / "img" / f"{name}.png"
        )
        tifffile.imwrite(tmp_path / "lab" / f"{name}.tif", np.full(size, 255, np.uint8))
    images, masks = read_pairs(tmp_path / "img", tmp_path / "lab")
    assert images.names == masks.names == ["a", "b"]
    assert [m.shape for m in masks.arrays] == [(8, 5), (6, 9)]
    os.remove(tmp_path / "lab" / "b.tif")
    with pytest.raises(InputError, match="no mask for image 'b'"):
        read_pairs(tmp_path / "img", tmp_path / "lab")


def test_slice_count_and_size_mismatches_name_the_files(tmp_path):
    tifffile.imwrite(tmp_path / "i.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match=r"l.tif: 2 slices, but .*i.tif has 3"):
        read_pairs(tmp_path / "i.tif", tmp_path / "l.tif")
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((3, 8, 7), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"l.tif slice 0: mask is 8 x 7, but its image is 8 x 8"):
        check_pairs(read_images(tmp_path / "i.tif"), read_masks(tmp_path / "l.tif"))


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="nope.tif: no such file"):
        read_images(tmp_path / "nope.tif")
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.zeros((64, 64), np.uint8))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(InputError, match="bad.tif: not a readable TIFF") as e:
        read_images(bad)
    assert "\n" not in str(e.value)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="x.png: not a readable PNG"):
        read_images(tmp_path / "x.png")
    with pytest.raises(InputError, match="unsupported file type '.jpg'"):
        (tmp_path / "y.jpg").write_bytes(b"")
        read_images(tmp_path / "y.jpg")


def test_write_tiff_round_trips_atomically(tmp_path, rng):
    data = rng.random((3, 5, 7)).astype(np.float32)
    path = write_tiff(tmp_path / "sub" / "p.tif", data)
    np.testing.assert_array_equal(tifffile.imread(path), data)
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.tif"]  # no temp file left
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_normalize_gives_zero_mean_unit_variance():
    x = normalize(np.arange(100, dtype=np.uint8).reshape(10, 10))
    assert x.dtype == np.float32
    assert abs(x.mean()) < 1e-6 and abs(x.std() - 1) < 1e-5
    np.testing.assert_array_equal(normalize(np.full((3, 3), 7)), 0)


def test_pages_of_different_shapes_are_all_read(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        for shape in ((20, 30), (25, 30), (20, 30)):
            tif.write(np.zeros(shape, np.uint8), photometric="minisblack", metadata=None)
    assert [a.shape for a in read_images(path).arrays] == [(20, 30), (25, 30), (20, 30)]


def test_stack_writer_writes_bigtiff_on_request(tmp_path):
    from biounet.io import StackWriter

    with StackWriter(tmp_path / "b.tif", bigtiff=True) as w:
        w.write(np.ones((4, 5), np.float32))
        w.write(np.zeros((4, 5), np.float32))
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.is_bigtiff and tif.asarray().shape == (2, 4, 5)


def test_bright_normalization_makes_objects_bright_on_either_background():
    from biounet.io import normalize

    fluo = np.zeros((20, 20), np.uint8)
    fluo[5:9, 5:9] = 200  # bright nucleus, dark background
    inverted = 255 - fluo  # dark nucleus, bright background
    a, b = normalize(fluo, "zscore-bright"), normalize(inverted, "zscore-bright")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a[6, 6] > 0 > a[0, 0]
    np.testing.assert_allclose(normalize(inverted), -a, atol=1e-6)  # plain zscore keeps it
    assert abs(a.mean()) < 1e-6 and abs(a.std() - 1) < 1e-5
