import os
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from biounet.errors import InputError
from biounet.io import (
    Images,
    check_pairs,
    read_images,
    read_masks,
    write_tiff,
)
from biounet.labels import mask_to_classes
from biounet.normalization import normalize


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


def test_colour_coded_mask_is_an_error(tmp_path):
    data = np.zeros((4, 4, 3), np.uint8)
    data[0, 0] = (255, 0, 0)
    Image.fromarray(data).save(tmp_path / "m.png")
    with pytest.raises(InputError, match="m.png: colour mask"):
        read_masks(tmp_path / "m.png")


def read_pairs(images, masks):
    """Images and their class-index masks, checked to pair one to one (as training does)."""
    imgs, ms = read_images(images), read_masks(masks)
    check_pairs(imgs, ms)
    return imgs, ms


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
    bad.write_bytes(good.read_bytes()[:40])  # cut inside its page directory
    with pytest.raises(InputError, match="bad.tif: truncated: 0 of at least 1 pages") as e:
        read_images(bad)
    assert "\n" not in str(e.value)
    tifffile.imwrite(good, np.arange(4096, dtype=np.uint16).reshape(64, 64), compression="zlib")
    with tifffile.TiffFile(good) as tif:
        start, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(good.read_bytes())
    data[start : start + count] = b"\xff" * count  # whole, but its compressed data is garbage
    bad.write_bytes(bytes(data))
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
    from biounet.normalization import normalize

    fluo = np.zeros((20, 20), np.uint8)
    fluo[5:9, 5:9] = 200  # bright nucleus, dark background
    inverted = 255 - fluo  # dark nucleus, bright background
    a, b = normalize(fluo, "zscore-bright"), normalize(inverted, "zscore-bright")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a[6, 6] > 0 > a[0, 0]
    np.testing.assert_allclose(normalize(inverted), -a, atol=1e-6)  # plain zscore keeps it
    assert abs(a.mean()) < 1e-6 and abs(a.std() - 1) < 1e-5


# ---------------------------------------------------------------------------------------
# Reading never silently drops data: truncated stacks, NaN pixels


def _page_ends(path) -> list[int]:
    """Byte past each page's data in an intact TIFF: the file length each page needs."""
    with tifffile.TiffFile(path) as tif:
        return [max(o + c for o, c in zip(p.dataoffsets, p.databytecounts, strict=True))
                for p in tif.pages]  # fmt: skip


@pytest.mark.parametrize("where", ["header only", "first page", "mid-stack", "last page"])
def test_a_truncated_isbi_stack_is_refused_naming_its_readable_pages(tmp_path, where):
    from conftest import DATA

    src = DATA / "train-volume.tif"  # 30 zlib pages, a tifffile shape description
    data = src.read_bytes()
    ends = _page_ends(src)
    cut = {"header only": 8, "first page": ends[0] - 1000, "mid-stack": len(data) // 3,
           "last page": len(data) - 1}[where]  # fmt: skip
    (tmp_path / "t.tif").write_bytes(data[:cut])
    readable = sum(e <= cut for e in ends)  # pages whose data lie wholly in the cut file
    total = "at least 1" if where == "header only" else "30"
    match = rf"t.tif: truncated: {readable} of {total} pages readable \(file is [\d.]+ \w+"
    with pytest.raises(InputError, match=match + ", its pages need") as e:
        read_images(tmp_path / "t.tif")
    assert "\n" not in str(e.value)
    if where == "last page":  # one byte short: sizes shown in bytes, not as equal MB
        assert f"(file is {cut} bytes, its pages need {cut + 1} bytes)" in str(e.value)
    np.testing.assert_array_equal(np.stack(read_images(src).arrays), tifffile.imread(src))


@pytest.mark.parametrize("layout", ["imagej", "imagej one directory", "zlib", "ome"])
def test_no_cut_of_a_stack_reads_fewer_slices(tmp_path, rng, layout):
    stack = rng.integers(0, 256, (12, 24, 20), dtype=np.uint8)
    path = tmp_path / "s.tif"
    if layout == "imagej":
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    elif layout == "imagej one directory":  # ImageJ's big-stack layout: raw planes follow
        tifffile.imwrite(path, stack, imagej=True, truncate=True, metadata={"axes": "ZYX"})
    elif layout == "zlib":
        tifffile.imwrite(path, stack, compression="zlib")
    else:
        tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZYX"})
    np.testing.assert_array_equal(np.stack(read_images(path).arrays), stack)
    data = path.read_bytes()
    refused = 0
    for cut in range(8, len(data), 97):
        (tmp_path / "t.tif").write_bytes(data[:cut])
        try:
            got = read_images(tmp_path / "t.tif").arrays
        except InputError as e:
            assert re.match(
                r".*t.tif: truncated: (\d+ of (at least )?\d+ pages readable \(|"
                r"its \w+ metadata ends past the end of the file)",
                str(e),
            ), str(e)
            refused += 1
        else:  # only bytes no page needs were cut: every slice, unchanged
            np.testing.assert_array_equal(np.stack(got), stack)
    assert refused >= len(range(8, len(data), 97)) - 2


def test_imagej_one_directory_stack_cut_needs_its_planes(tmp_path, rng):
    stack = rng.integers(0, 256, (30, 64, 48), dtype=np.uint8)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, imagej=True, truncate=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # one directory for 30 planes
        start = tif.pages[0].dataoffsets[0]
    cut = start + 14 * 64 * 48 + 100
    (tmp_path / "t.tif").write_bytes(path.read_bytes()[:cut])
    need = (start + 30 * 64 * 48) / 1000
    with pytest.raises(InputError, match=rf"t.tif: truncated: 14 of 30 pages readable \(file is "
                       rf"{cut / 1000:.3g} kB, its pages need {need:.3g} kB\)"):  # fmt: skip
        read_images(tmp_path / "t.tif")


def test_ome_planes_missing_from_the_file_are_refused(tmp_path, rng):
    stack = rng.integers(0, 256, (6, 16, 16), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "o.tif", stack, ome=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        xml = tif.ome_metadata  # declares 6 planes
    tifffile.imwrite(tmp_path / "cut.tif", stack[:2], description=xml, metadata=None)
    with tifffile.TiffFile(tmp_path / "cut.tif") as tif:  # tifffile alone: 6, zero-filled
        assert tif.is_ome and tif.series[0].shape == (6, 16, 16)
    with pytest.raises(InputError, match=r"cut.tif: truncated: 2 of 6 pages readable"):
        read_images(tmp_path / "cut.tif")


def test_a_page_chain_that_loops_is_refused(tmp_path):
    # header, then one directory with no entries whose next directory is itself
    (tmp_path / "l.tif").write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\x00\x00" + b"\x08\x00\x00\x00")
    with pytest.raises(InputError, match="l.tif: damaged: its page chain loops back after 1"):
        read_images(tmp_path / "l.tif")


def test_nan_and_infinite_pixels_are_refused_naming_file_and_slice(tmp_path, rng):
    stack = rng.random((5, 8, 9)).astype(np.float32)
    stack[3].flat[:12] = np.nan
    tifffile.imwrite(tmp_path / "s.tif", stack)
    with pytest.raises(InputError, match=r"s.tif: slice 3 has NaN pixels \(12 of them\)"):
        read_images(tmp_path / "s.tif")
    one = rng.random((8, 9)).astype(np.float32)
    one[2, 2] = -np.inf
    tifffile.imwrite(tmp_path / "i.tif", one)
    with pytest.raises(InputError, match=r"i.tif: image has infinite pixels \(1 of them\)"):
        read_images(tmp_path / "i.tif")
    one[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "i.tif", one)
    with pytest.raises(InputError, match=r"i.tif: image has NaN and infinite pixels \(1 NaN, 1 "):
        read_images(tmp_path / "i.tif")
    mask = np.zeros((2, 8, 9), np.float32)
    mask[1, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with pytest.raises(InputError, match=r"m.tif: slice 1 has NaN pixels \(1 of them\)"):
        read_masks(tmp_path / "m.tif")
    stack[3].flat[:12] = 0.5  # finite again: read as stored
    tifffile.imwrite(tmp_path / "s.tif", stack)
    np.testing.assert_array_equal(np.stack(read_images(tmp_path / "s.tif").arrays), stack)


# ---------------------------------------------------------------------------------------
# Labels as people have them


def test_label_threshold_binarises_soft_masks(tmp_path, rng):
    soft = rng.integers(0, 256, (16, 16), dtype=np.uint8)  # anti-aliased: 256 values
    Image.fromarray(soft).save(tmp_path / "m.png")
    with pytest.raises(InputError, match=r"m.png: mask values are not classes: .* add "
                       r"--label-threshold T \(value > T is foreground\)"):  # fmt: skip
        read_masks(tmp_path / "m.png")
    got = read_masks(tmp_path / "m.png", threshold=127).arrays[0]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, (soft > 127).astype(np.uint8))
    frac = np.array([[0.0, 0.2], [0.7, 1.0]], np.float32)
    np.testing.assert_array_equal(mask_to_classes(frac, 2, "f", threshold=0.5), [[0, 0], [1, 1]])
    with pytest.raises(InputError, match="f: mask values are not classes: fractional .* "
                       "--label-threshold"):  # fmt: skip
        mask_to_classes(frac, 2, "f")
    # a caller's hint replaces the way on (evaluate: instance labels)
    with pytest.raises(InputError, match=r"expected 0/255 or 0/1 \(try this\)$"):
        mask_to_classes(soft, 2, "m", " (try this)")


def test_a_label_threshold_outside_the_masks_values_is_refused(tmp_path):
    mask = np.array([[10, 20], [30, 200]], np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    with pytest.raises(InputError, match=r"m.png: --label-threshold 200 is outside the mask's "
                       r"values 10..200: every pixel would be background"):  # fmt: skip
        read_masks(tmp_path / "m.png", threshold=200)
    with pytest.raises(InputError, match="--label-threshold 5 is outside .* would be foreground"):
        mask_to_classes(mask, 2, "m", threshold=5)
    np.testing.assert_array_equal(mask_to_classes(mask, 2, "m", threshold=10), [[0, 1], [1, 1]])
    # an empty (constant) mask is a valid label: all background
    np.testing.assert_array_equal(mask_to_classes(np.zeros((2, 2), np.uint8), 2, "m",
                                                  threshold=127), 0)  # fmt: skip
    with pytest.raises(InputError, match="--label-threshold must be a finite number, got nan"):
        mask_to_classes(mask, 2, "m", threshold=float("nan"))


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_masks_with_an_alpha_channel_read_as_their_gray_values(tmp_path, mode):
    gray = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    alpha = np.array([[255, 255, 0], [0, 255, 128]], np.uint8)  # alpha is not the label
    planes = [gray, alpha] if mode == "LA" else [gray, gray, gray, alpha]
    Image.fromarray(np.stack(planes, -1), mode).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == mode
    np.testing.assert_array_equal(read_masks(tmp_path / "m.png").arrays[0], gray // 255)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.float32])
def test_class_masks_of_any_integer_width_read_as_classes(tmp_path, dtype):
    classes = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    tifffile.imwrite(tmp_path / "m.tif", classes.astype(dtype))
    got = read_masks(tmp_path / "m.tif", num_classes=3).arrays[0]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, classes)


def test_sixteen_bit_png_masks_and_binary_0_65535_masks(tmp_path):
    classes = np.array([[0, 1], [2, 0]], np.uint16)
    Image.fromarray(classes).save(tmp_path / "c.png")  # a 16-bit gray PNG
    np.testing.assert_array_equal(read_masks(tmp_path / "c.png", 3).arrays[0], classes)
    # 65535 is the foreground of a 16-bit binary mask (Fiji, scaled conversions)
    binary = np.array([[0, 65535], [65535, 0]], np.uint16)
    tifffile.imwrite(tmp_path / "b.tif", binary)
    np.testing.assert_array_equal(read_masks(tmp_path / "b.tif").arrays[0], binary // 65535)
    tifffile.imwrite(tmp_path / "b.tif", np.array([[0, 255], [65535, 0]], np.uint16))
    with pytest.raises(InputError, match=r"b.tif: mask values are not classes: 3 distinct "
                       r"values \(0, 255, 65535\)"):  # fmt: skip
        read_masks(tmp_path / "b.tif")


@pytest.mark.parametrize("dtype,imagej", [(np.uint16, True), (np.uint32, False),
                                          (np.int32, False), (np.float32, True)])  # fmt: skip
def test_fiji_label_images_read_as_instance_ids(tmp_path, dtype, imagej):
    from biounet.io import read_instances

    labels = np.zeros((2, 12, 10), np.int64)
    labels[0, 1:4, 1:4], labels[0, 6:9, 2:5], labels[1, 2:6, 5:9] = 1, 70000 % 65535, 3
    kwargs = {"imagej": True, "metadata": {"axes": "ZYX"}} if imagej else {}
    tifffile.imwrite(tmp_path / "l.tif", labels.astype(dtype), **kwargs)
    got = read_instances(tmp_path / "l.tif").arrays
    assert [g.dtype for g in got] == [np.int32, np.int32]
    np.testing.assert_array_equal(np.stack(got), labels)


# ---------------------------------------------------------------------------------------
# Metadata kept: pixel sizes


def test_pixel_sizes_are_read_from_imagej_ome_tiff_and_png_metadata(tmp_path):
    a = np.zeros((2, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", a, imagej=True, resolution=(4.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "micron"})  # fmt: skip
    assert read_images(tmp_path / "ij.tif").pixel_sizes == [(0.25, 0.5, "µm")] * 2
    tifffile.imwrite(tmp_path / "ijnm.tif", a[0], imagej=True, resolution=(0.01, 0.01),
                     metadata={"unit": "nm"})  # fmt: skip
    assert read_images(tmp_path / "ijnm.tif").pixel_sizes == [(100.0, 100.0, "nm")]
    tifffile.imwrite(tmp_path / "ome.tif", a, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"})  # fmt: skip
    assert read_images(tmp_path / "ome.tif").pixel_sizes == [(250.0, 500.0, "nm")] * 2
    tifffile.imwrite(tmp_path / "cm.tif", a[0], resolution=(40000, 20000),
                     resolutionunit="CENTIMETER")  # fmt: skip
    ((x, y, unit),) = read_images(tmp_path / "cm.tif").pixel_sizes
    assert (x, y, unit) == pytest.approx((0.25, 0.5, "µm"))
    Image.fromarray(a[0]).save(tmp_path / "p.png", dpi=(25400 / 0.5, 25400 / 0.5))
    ((x, y, unit),) = read_images(tmp_path / "p.png").pixel_sizes
    assert unit == "µm" and x == pytest.approx(0.5, rel=1e-3) and y == pytest.approx(0.5, rel=1e-3)
    # no calibration: None, as for the bundled ISBI stack and files written without one
    tifffile.imwrite(tmp_path / "plain.tif", a)
    Image.fromarray(a[0]).save(tmp_path / "plain.png")
    assert read_images(tmp_path / "plain.tif").pixel_sizes == [None, None]
    assert read_images(tmp_path / "plain.png").pixel_sizes == [None]
    tifffile.imwrite(tmp_path / "px.tif", a[0], imagej=True, resolution=(2.0, 2.0))  # no unit
    assert read_images(tmp_path / "px.tif").pixel_sizes == [None]
    # a folder: each file's own
    (tmp_path / "d").mkdir()
    for name in ("ij.tif", "plain.png"):
        (tmp_path / "d" / name).write_bytes((tmp_path / name).read_bytes())
    folder = read_images(tmp_path / "d")
    assert folder.names == ["ij[0]", "ij[1]", "plain"]
    assert folder.pixel_sizes == [(0.25, 0.5, "µm"), (0.25, 0.5, "µm"), None]
    assert Images([a[0]], ["x"], tmp_path).pixel_sizes == [None]  # default: none known


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16, np.uint32])
def test_stack_writer_writes_the_pixel_size_imagej_style(tmp_path, rng, dtype):
    from biounet.io import StackWriter

    pages = (rng.random((3, 6, 5)) * 200).astype(dtype)
    with StackWriter(tmp_path / "c.tif", pixel_size=(0.25, 0.5, "µm")) as w:
        for page in pages:
            w.write(page)
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "micron"
        assert tif.pages[0].resolution == (4.0, 2.0) and tif.pages[0].compression == 8
        np.testing.assert_array_equal(tif.asarray(), pages)
    back = read_images(tmp_path / "c.tif")
    assert back.pixel_sizes == [(0.25, 0.5, "µm")] * 3
    with StackWriter(tmp_path / "n.tif", pixel_size=(100.0, 100.0, "nm")) as w:
        w.write(pages[0])
    assert read_images(tmp_path / "n.tif").pixel_sizes == [(100.0, 100.0, "nm")]
    with StackWriter(tmp_path / "none.tif") as w:  # no pixel size: no calibration written
        w.write(pages[0])
    with tifffile.TiffFile(tmp_path / "none.tif") as tif:
        assert not tif.is_imagej and tif.pages[0].resolution == (1.0, 1.0)
    assert read_images(tmp_path / "none.tif").pixel_sizes == [None]


def test_a_declared_stack_is_an_imagej_hyperstack_and_nothing_half_written_is_kept(tmp_path):
    from biounet.io import StackWriter

    rng = np.random.default_rng(0)
    pages = rng.random((2 * 3, 12, 20)).astype(np.float32)
    path = tmp_path / "p.tif"
    with StackWriter(path, pixel_size=(0.5, 0.5, "µm"), hyperstack=(2, 3)) as w:
        for page in pages:
            w.write(page)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZCYX"
        meta = tif.imagej_metadata
        assert (meta["slices"], meta["channels"], meta["unit"]) == (2, 3, "micron")
        np.testing.assert_array_equal(tif.asarray(), pages.reshape(2, 3, 12, 20))
    assert read_images(path).pixel_sizes == [(0.5, 0.5, "µm")] * 2
    short = tmp_path / "short.tif"
    with pytest.raises(ValueError, match="5 pages written of the declared 6"), \
            StackWriter(short, hyperstack=(2, 3)) as w:
        for page in pages[:5]:
            w.write(page)
    with pytest.raises(ValueError, match="does not fit the declared float32 stack"), \
            StackWriter(short, hyperstack=(2, 3)) as w:
        w.write(pages[0])
        w.write(pages[1].astype(np.float64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif"]
    # instance labels: a hyperstack while uint16; a page that needs uint32 turns the stack
    # into compressed pages, the earlier ones rewritten unchanged
    labels = [np.arange(240, dtype=np.uint16).reshape(12, 20) + k for k in range(2)]
    labels.append(np.full((12, 20), 70000, np.uint32))
    with StackWriter(tmp_path / "l.tif", hyperstack=(3, 1)) as w:
        for page in labels:
            w.write(page)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert not tif.is_imagej and tif.pages[0].compression == 8  # zlib
        assert [p.dtype for p in tif.pages] == [np.uint16, np.uint16, np.uint32]
        for page, expected in zip(tif.pages, labels, strict=True):
            np.testing.assert_array_equal(page.asarray(), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "p.tif"]
