import numpy as np
import pytest

from biounet.dataset import TileSampler, mirror_pad, parse_slices, split
from biounet.errors import InputError


def test_parse_slices():
    assert parse_slices("25-29", 30) == [25, 26, 27, 28, 29]
    assert parse_slices("28,29", 30) == [28, 29]
    assert parse_slices("0-2, 5", 30) == [0, 1, 2, 5]
    assert parse_slices("none", 30) == parse_slices("", 30) == []
    with pytest.raises(InputError, match="25-30 is outside 0..29"):
        parse_slices("25-30", 30)
    with pytest.raises(InputError, match="expected indices like 25-29"):
        parse_slices("a-b", 30)


def test_split_defaults_to_everything_not_validated():
    assert split(6, "4-5", None) == ([0, 1, 2, 3], [4, 5])
    assert split(30, "28-29", "0-27")[0] == list(range(28))
    with pytest.raises(InputError, match="no training slices left"):
        split(2, "0-1", None)


def _reflect_index(i: int, n: int) -> int:
    """Slow reference for mirroring without repeating the edge pixel."""
    if n == 1:
        return 0
    period = 2 * n - 2
    i %= period
    return i if i < n else period - i


def test_mirror_pad_matches_a_slow_reference(rng):
    img = rng.random((5, 3))
    out = mirror_pad(img, 7, 2, 4, 6)
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            assert out[y, x] == img[_reflect_index(y - 7, 5), _reflect_index(x - 4, 3)]


@pytest.mark.parametrize("shape", [(40, 50), (3, 70)])
def test_tiles_keep_image_and_label_aligned_with_mirrored_context(rng, shape):
    H, W = shape
    image = np.arange(H * W, dtype=np.float32).reshape(H, W)  # each pixel names its position
    mask = (np.arange(H * W).reshape(H, W) % 3 == 0).astype(np.uint8)
    S, s = 60, 20  # a valid-padding network with a 20 px border
    sampler = TileSampler([image], [mask], S, s, rng)
    x, y, w = sampler.sample(16)
    assert x.shape == (16, 1, S, S) and y.shape == (16, S, S) and w is None
    x, y = x.numpy(), y.numpy()
    seen = set()
    for b in range(16):
        # every label pixel is the label of the image pixel at the same place
        np.testing.assert_array_equal(y[b], (x[b, 0].astype(np.int64) % 3 == 0))
        # the output tile (the centre) lies inside the image: no mirrored labels are learned
        # unless the image is smaller than the output tile
        centre = x[b, 0, 20:40, 20:40].astype(np.int64)
        seen |= set(centre.ravel().tolist())
        # and every input pixel is a real or mirrored image pixel of the right neighbourhood
        yy, xx = np.divmod(x[b, 0].astype(np.int64), W)
        assert np.all(np.abs(np.diff(yy, axis=0)) <= 1) and np.all(np.abs(np.diff(xx, axis=1)) <= 1)
        if s <= H and s <= W:  # the output tile is real image, not mirror
            cy, cx = np.divmod(centre, W)
            assert np.all(np.diff(cy, axis=0) == 1) and np.all(np.diff(cx, axis=1) == 1)
    assert len(seen) > 0.5 * H * W or s > H  # tiles cover the image


def test_weights_travel_with_their_tiles(rng):
    image = rng.random((30, 30)).astype(np.float32)
    mask = (image > 0.5).astype(np.uint8)
    sampler = TileSampler([image], [mask], 16, 16, rng, weights=[image * 10], margin=5)
    x, y, w = (t.numpy() for t in sampler.sample(4))
    assert x.shape == (4, 1, 26, 26)
    np.testing.assert_allclose(w, x[:, 0] * 10)
    np.testing.assert_array_equal(y, x[:, 0] > 0.5)


@pytest.mark.parametrize("by", ["image", "area"])
def test_tiles_come_from_each_image_as_often_as_the_rule_says(by):
    """"image": every image equally often; "area": in proportion to its pixels. Each image
    is a constant, so a tile's value names its image; 4000 tiles keep the frequencies
    within 3 binomial standard deviations of the expected share."""
    shapes = [(20, 20), (40, 20), (60, 60), (20, 100)]
    images = [np.full(s, k, np.float32) for k, s in enumerate(shapes)]
    masks = [np.zeros(s, np.uint8) for s in shapes]
    sampler = TileSampler(images, masks, 12, 8, np.random.default_rng(5), by=by)
    n = 4000
    drawn = sampler.sample(n)[0][:, 0, 6, 6].numpy().astype(int)
    area = np.array([h * w for h, w in shapes], float)
    p = np.full(4, 0.25) if by == "image" else area / area.sum()
    counts = np.bincount(drawn, minlength=4)
    assert np.all(np.abs(counts - n * p) <= 3 * np.sqrt(n * p * (1 - p))), (counts, n * p)


def test_image_sampling_keeps_the_streams_of_earlier_runs():
    """The default draws one rng.integers per image choice, as before "area" existed, so a
    seeded run's tiles do not change."""
    images = [np.full((30, 30), k, np.float32) for k in range(3)]
    masks = [np.zeros((30, 30), np.uint8)] * 3
    x = TileSampler(images, masks, 12, 8, np.random.default_rng(1)).sample(50)[0]
    rng = np.random.default_rng(1)
    for b in range(50):
        k = int(rng.integers(3))
        rng.integers(0, 30 + 4 - 12 + 1), rng.integers(0, 30 + 4 - 12 + 1)
        assert x[b, 0, 0, 0] == k
    with pytest.raises(ValueError, match="'image' or 'area'"):
        TileSampler(images, masks, 12, 8, rng, by="pixels")


def test_load_data_makes_the_targets_class_maps_and_splits_by_name(dsb_crops):
    from biounet.config import TrainConfig
    from biounet.dataset import load_data
    from biounet.io import read_images, read_instances
    from biounet.targets import make_target

    images, labels = dsb_crops
    cfg = TrainConfig(images=images, labels=labels, target="contour", boundary_width=2,
                      val_slices="1,3")  # fmt: skip
    data = load_data(cfg, 3)
    stored, instances = read_images(images), read_instances(labels)
    assert data.val_names == [stored.names[1], stored.names[3]]
    for k, i in enumerate([0, 2, 4]):
        np.testing.assert_array_equal(data.train_instances[k], instances.arrays[i])
        np.testing.assert_array_equal(data.train_masks[k], make_target(instances.arrays[i],
                                                                      "contour", 2))  # fmt: skip
        img = data.train_images[k]
        assert img.dtype == np.float32 and abs(img.mean()) < 1e-4 and abs(img.std() - 1) < 1e-3
    for k, i in enumerate([1, 3]):  # validation images as stored
        np.testing.assert_array_equal(data.val_images[k], stored.arrays[i])
        np.testing.assert_array_equal(data.val_masks[k], make_target(instances.arrays[i],
                                                                    "contour", 2))  # fmt: skip


def test_images_from_several_folders_train_as_one_set_paired_by_name(dsb_crops, tmp_path):
    import shutil

    import tifffile

    from biounet.config import TrainConfig
    from biounet.dataset import load_data

    images, labels = dsb_crops
    names = sorted(p.stem for p in images.iterdir())
    parts = {}  # images split 3 + 2 into two folders, their labels 2 + 3 another way
    for what, src, ext, groups in (("img", images, ".png", (names[:3], names[3:])),
                                   ("lab", labels, ".tif", (names[3:], names[:3]))):
        for k, group in enumerate(groups):
            folder = tmp_path / f"{what}{k}"
            folder.mkdir()
            for n in group:
                shutil.copy(src / f"{n}{ext}", folder / f"{n}{ext}")
        parts[what] = [str(tmp_path / f"{what}{k}") for k in range(2)]
    one = load_data(TrainConfig(images=str(images), labels=str(labels), target="contour",
                                val_slices="1,3"), 3)  # fmt: skip
    two = load_data(TrainConfig(images=",".join(parts["img"]), labels=", ".join(parts["lab"]),
                                target="contour", val_slices="1,3"), 3)  # fmt: skip
    assert two.val_names == one.val_names == [names[1], names[3]]
    for a, b in ((one.train_masks, two.train_masks), (one.train_images, two.train_images),
                 (one.val_masks, two.val_masks), (one.train_instances, two.train_instances)):
        assert len(a) == len(b) == len(a)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    # errors name the file in the folder it came from
    bad = tmp_path / "lab1" / f"{names[0]}.tif"
    tifffile.imwrite(bad, np.zeros((8, 8), np.uint16))
    with pytest.raises(InputError, match=rf"^{bad.with_suffix('')}: mask is 8 x 8, but its image is"):
        load_data(TrainConfig(images=",".join(parts["img"]), labels=",".join(parts["lab"]),
                              target="contour", val_slices="1"), 3)  # fmt: skip
    shutil.copy(images / f"{names[4]}.png", tmp_path / "img0" / f"{names[4]}.png")
    with pytest.raises(InputError, match=rf"img1/{names[4]}: .*img0/{names[4]} has the same "
                       "name; images read from several folders need different names"):
        load_data(TrainConfig(images=",".join(parts["img"]), labels=",".join(parts["lab"]),
                              target="contour"), 3)  # fmt: skip
    with pytest.raises(InputError, match=r"i\.png: not a folder; images read from several"):
        load_data(TrainConfig(images=f"{parts['img'][0]},{tmp_path}/i.png",
                              labels=",".join(parts["lab"]), target="contour"), 3)  # fmt: skip


def test_load_data_errors_name_the_files(tmp_path, rng):
    import tifffile

    from biounet.config import TrainConfig
    from biounet.dataset import load_data

    def write(name, a):
        tifffile.imwrite(tmp_path / name, a, photometric="minisblack")
        return str(tmp_path / name)

    img = write("i.tif", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8))
    flat = write("l.tif", np.zeros((3, 32, 32), np.uint8))
    two = write("two.tif", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(InputError, match=r"l\.tif: the training masks hold only class 0"):
        load_data(TrainConfig(images=img, labels=flat, val_slices="2"), 2)
    with pytest.raises(InputError, match=r"two\.tif: 2 slices, but .*i\.tif has 3"):
        load_data(TrainConfig(images=img, labels=two, val_slices="2"), 2)
    with pytest.raises(InputError, match="^--labels given alone"):
        load_data(TrainConfig(labels=flat), 2)
    with pytest.raises(InputError, match=r"validation slices '2-3': 2-3 is outside 0\.\.2"):
        load_data(TrainConfig(images=img, labels=flat, val_slices="2-3"), 2)


def test_sampler_for_targets_after_the_warp_cuts_instances_with_label_context(dsb_crops, rng):

    from biounet.config import AugmentConfig, TrainConfig
    from biounet.dataset import load_data, make_sampler

    aug = AugmentConfig(rotate=True)
    cfg = TrainConfig(images=dsb_crops[0], labels=dsb_crops[1], target="contour", touch_width=2,
                      val_slices="none", tile=32, augment=aug)  # fmt: skip
    data = load_data(cfg, 3)
    maps = make_sampler(cfg, data, 32, rng)  # the class maps are warped
    assert maps.region == 32 + 2 * aug.margin(32)
    _, y, _ = maps.sample(8)
    assert set(np.unique(y.numpy())) <= {0, 1, 2}


def _write_folder(folder, images, masks):
    """images/ and masks/ TIFF folders named im00, im01, ...: (images dir, masks dir)."""
    import tifffile

    img_dir, lab_dir = folder / "images", folder / "masks"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir()
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        tifffile.imwrite(img_dir / f"im{i:02d}.tif", img, photometric="minisblack")
        tifffile.imwrite(lab_dir / f"im{i:02d}.tif", m, photometric="minisblack")
    return img_dir, lab_dir


def _random_pairs(rng, n, size=24):
    images = [rng.integers(0, 255, (size, size), dtype=np.uint8) for _ in range(n)]
    masks = [np.where(im > 127, 255, 0).astype(np.uint8) for im in images]
    return images, masks


@pytest.mark.parametrize(("n", "held"), [(7, 1), (20, 3), (2, 1)])
def test_auto_validation_holds_out_a_seeded_share_by_name(tmp_path, rng, caplog, n, held):
    import logging

    from biounet.config import TrainConfig
    from biounet.dataset import auto_validation, load_data

    img, lab = _write_folder(tmp_path, *_random_pairs(rng, n))
    cfg = TrainConfig(images=img, labels=lab, seed=3)  # val_slices "auto" by default
    with caplog.at_level(logging.INFO, logger="biounet"):
        data = load_data(cfg, 2)
    chosen = auto_validation(n, 3)
    assert len(chosen) == held and len(data.val_images) == held
    assert len(data.train_images) == n - held
    assert data.val_slices == ",".join(map(str, chosen))  # the list a run stores
    names = [f"im{i:02d}" for i in chosen]
    assert data.val_names == names
    assert f"validation: {held} of {n} images held out: {', '.join(names)}" in caplog.text
    again = load_data(cfg, 2)  # the same seed, the same images
    assert again.val_names == names
    seeds = {tuple(auto_validation(20, s)) for s in range(10)}
    assert len(seeds) > 1  # and the seed chooses them
    assert auto_validation(20, 5) == auto_validation(20, 5)


def test_auto_validation_of_one_image_holds_none_out_with_a_warning(tmp_path, rng, caplog):
    from biounet.config import TrainConfig
    from biounet.dataset import load_data

    img, lab = _write_folder(tmp_path, *_random_pairs(rng, 1))
    data = load_data(TrainConfig(images=img, labels=lab), 2)
    assert data.val_images == [] and len(data.train_images) == 1 and data.val_slices == "none"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "holds one image: none held out for validation" in warnings[0]


def test_auto_validation_holds_out_among_the_images_not_trained_on(tmp_path, rng):
    from biounet.config import TrainConfig
    from biounet.dataset import load_data

    img, lab = _write_folder(tmp_path, *_random_pairs(rng, 10))
    data = load_data(TrainConfig(images=img, labels=lab, train_slices="0-3"), 2)
    assert len(data.train_images) == 4
    assert {int(i) for i in data.val_slices.split(",")} <= set(range(4, 10))


def test_label_threshold_ignore_label_and_classes_found_in_the_masks(tmp_path, rng):
    from biounet.config import TrainConfig
    from biounet.dataset import load_data
    from biounet.labels import IGNORE_INDEX

    soft = [np.clip(rng.normal(128, 60, (16, 16)), 0, 254).astype(np.uint8) for _ in range(3)]
    soft[0][:2] = 255  # pixels not labelled
    img, lab = _write_folder(tmp_path / "soft", soft, soft)
    data = load_data(TrainConfig(images=img, labels=lab, val_slices="2", label_threshold=127,
                                 ignore_label=255), None)  # fmt: skip
    assert data.num_classes == 2
    expected = np.where(soft[0] > 127, 1, 0).astype(np.uint8)
    expected[:2] = IGNORE_INDEX
    np.testing.assert_array_equal(data.train_masks[0], expected)
    np.testing.assert_array_equal(data.val_masks[0], (soft[2] > 127).astype(np.uint8))
    with pytest.raises(InputError, match=r"masks/im00: mask values are not classes: .*"
                       r"--label-threshold T"):  # fmt: skip
        load_data(TrainConfig(images=img, labels=lab, val_slices="2"), None)

    three = [np.zeros((16, 16), np.uint8) for _ in range(2)]
    three[0][2:6, 2:6], three[1][8:12, 8:12] = 1, 2
    three[1][0, :] = 7  # not labelled
    img, lab = _write_folder(tmp_path / "three", three, three)
    data = load_data(TrainConfig(images=img, labels=lab, val_slices="none", ignore_label=7), None)
    assert data.num_classes == 3  # largest class + 1, the ignore label left out
    assert set(np.unique(data.train_masks[1])) == {0, 2, IGNORE_INDEX}
    with pytest.raises(InputError, match=r"--ignore-label 1 is also a class of .*masks/im00 "
                       r"\(classes 0\.\.7\)"):  # fmt: skip
        load_data(TrainConfig(images=img, labels=lab, val_slices="none", ignore_label=1), None)
    with pytest.raises(InputError, match=r"masks/im01: mask values are not classes: 3 distinct "
                       r"values \(0, 2, 7\b"):  # fmt: skip
        load_data(TrainConfig(images=img, labels=lab, val_slices="none", classes=3), 3)


def test_instance_labels_thresholded_into_components_and_ignored(tmp_path):
    from biounet.config import TrainConfig
    from biounet.dataset import load_data
    from biounet.labels import IGNORE_INDEX
    from biounet.targets import contour_target

    soft = np.zeros((20, 20), np.uint8)
    soft[2:8, 2:8], soft[12:18, 3:9] = 200, 180  # two objects, anti-aliased edges
    soft[1, 2:8] = soft[8, 2:8] = 60
    soft[19, :] = 99  # not labelled
    img, lab = _write_folder(tmp_path, [soft, soft], [soft, soft])
    cfg = TrainConfig(images=img, labels=lab, target="contour", val_slices="1",
                      label_threshold=100, ignore_label=99)  # fmt: skip
    data = load_data(cfg, 3)
    inst = data.train_instances[0]
    assert inst.max() == 2 and np.count_nonzero(inst) == 36 + 36  # components of > 100
    expected = contour_target(inst)
    expected[19, :] = IGNORE_INDEX
    np.testing.assert_array_equal(data.train_masks[0], expected)
    with pytest.raises(InputError, match=r"--ignore-label 0 is the background of .*masks"):
        load_data(TrainConfig(images=img, labels=lab, target="contour", val_slices="1",
                              ignore_label=0), 3)  # fmt: skip
