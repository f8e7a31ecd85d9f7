"""The segmentation API: segment() against overlap-tile prediction and instances computed
independently, and segment_files' outputs, naming and all-or-nothing writes."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import tiny_checkpoint, tiny_unet

from biounet import InferenceConfig, Preset, TrainConfig, instances, predict, segment
from biounet.errors import InputError
from biounet.model import UNet
from biounet.segment import Segmentation, segment_files

# the module (biounet.segment, the attribute, is the function it defines)
segment_module = importlib.import_module("biounet.segment")


def _model(out_channels: int, seed: int = 0) -> UNet:
    return tiny_unet(seed=seed, out_channels=out_channels)


def _preset(model: UNet, target: str, **inference) -> Preset:
    return Preset("tiny", "test", model.config, TrainConfig(target=target),
                  InferenceConfig(**inference))  # fmt: skip


@pytest.fixture
def image(isbi):
    return isbi[0][3, 100:172, 200:260]  # (72, 60) uint8


def _quantile(a, q):
    return float(np.quantile(a, q))


def test_a_mask_model_gives_probabilities_mask_and_components(image):
    model = _model(2)
    prob = predict(model, image, precision="fp32")  # (H, W) P(foreground)
    t = _quantile(prob, 0.5)  # half the pixels foreground: many components
    cfg = InferenceConfig(threshold=t, min_size=3)
    got = segment((model, _preset(model, "mask")), image, cfg, precision="fp32")
    np.testing.assert_array_equal(got.probabilities, prob)
    assert got.probabilities.dtype == np.float32
    np.testing.assert_array_equal(got.mask, np.where(prob > t, 255, 0).astype(np.uint8))
    expected = instances(prob, t, gap=0, min_size=3)  # plain components, no growing back
    np.testing.assert_array_equal(got.instances, expected)
    assert got.instances.dtype == np.uint16 and got.instances.max() > 3
    # a bare 2-output UNet counts as a mask model
    bare = segment(model, image, cfg, precision="fp32")
    np.testing.assert_array_equal(bare.instances, expected)


def test_a_binary_model_grows_its_components_back(image):
    model = _model(1, seed=1)
    prob = predict(model, image, precision="fp32")  # sigmoid output
    t = _quantile(prob, 0.5)
    got = segment((model, _preset(model, "binary", threshold=t)), image, precision="fp32")
    expected = instances(prob, t, min_size=0, min_peak=0.0)  # binary_instances, gap 2
    np.testing.assert_array_equal(got.instances, expected)
    assert not np.array_equal(expected, instances(prob, t, gap=0))  # the gap mattered
    # the method named explicitly overrides the target's
    comps = segment((model, _preset(model, "binary", threshold=t, method="components")), image,
                    precision="fp32", outputs=["instances"])  # fmt: skip
    np.testing.assert_array_equal(comps.instances, instances(prob, t, gap=0))


def test_a_contour_model_gives_the_watershed_of_its_class_probabilities(image):
    model = _model(3, seed=2)
    probs = predict(model, image, precision="fp32", tta=True)  # (3, H, W)
    fg = 1.0 - probs[0]
    t, seed = _quantile(fg, 0.4), _quantile(probs[1], 0.8)
    preset = _preset(model, "contour", threshold=t, tta=True, seed_threshold=seed,
                     seed_dynamics=0.01, min_size=4, min_fraction=0.2)  # fmt: skip
    got = segment((model, preset), image, precision="fp32")  # the preset's own settings
    np.testing.assert_array_equal(got.probabilities, fg)
    np.testing.assert_array_equal(got.mask, ((fg > t) * 255).astype(np.uint8))
    expected = instances(probs, t, seed_threshold=seed, seed_dynamics=0.01, min_size=4,
                         min_peak=0.0, min_fraction=0.2)  # fmt: skip
    np.testing.assert_array_equal(got.instances, expected)
    assert expected.max() > 2
    # a bare 3-output UNet counts as a contour model
    bare = segment(model, image, preset.inference, precision="fp32")
    np.testing.assert_array_equal(bare.instances, expected)


def test_only_the_asked_outputs_are_made_and_bad_asks_are_refused(image):
    model = _model(2)
    got = segment(model, image, outputs=("mask",), precision="fp32")
    assert got.probabilities is None and got.instances is None and got.mask.shape == (72, 60)
    assert isinstance(got, Segmentation)
    with pytest.raises(ValueError, match="outputs must be among .*got 'labels'"):
        segment(model, image, outputs=("labels",))
    with pytest.raises(ValueError, match="method 'contour' needs a model with 3 outputs"):
        segment(model, image, InferenceConfig(method="contour"))
    wide = _model(3)  # 3 outputs trained for masks: a class map, no foreground mask
    with pytest.raises(InputError, match="model: a 3-class model gives a class map and class "
                                         "probabilities; masks and instances need a binary"):
        segment((wide, _preset(wide, "mask")), image, outputs=("mask",))


def test_a_checkpoint_path_segments_with_its_stored_settings(image, tmp_path):
    model = _model(2)
    path = tiny_checkpoint(tmp_path / "m.pt", model, TrainConfig(target="mask"),
                           InferenceConfig(threshold=0.3, tta=True))  # fmt: skip
    got = segment(path, image, precision="fp32")
    prob = predict(model, image, precision="fp32", tta=True)
    np.testing.assert_array_equal(got.probabilities, prob)
    np.testing.assert_array_equal(got.mask, ((prob > 0.3) * 255).astype(np.uint8))
    plain = segment(path, image, InferenceConfig(), precision="fp32")  # a config replaces it
    np.testing.assert_array_equal(plain.probabilities, predict(model, image, precision="fp32"))


@pytest.fixture
def checkpoint(tmp_path):
    model = _model(3, seed=3)
    return tiny_checkpoint(tmp_path / "c.pt", model, TrainConfig(target="contour"),
                           InferenceConfig(seed_threshold=0.34, threshold=0.3))  # fmt: skip


def test_a_stack_becomes_one_output_stack_per_kind(checkpoint, isbi, tmp_path):
    stack = isbi[0][:4, :40, :56]
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    reported = []
    written = segment_files(checkpoint, tmp_path / "in.tif", tmp_path / "out.tif", slices="1-2",
                            write_mask=True, write_instances=True, precision="fp32",
                            device="cpu", report=reported.append)  # fmt: skip
    names = [tmp_path / "out.tif", tmp_path / "out-mask.tif", tmp_path / "out-instances.tif"]
    assert written == reported == [names]
    for i, page in zip((1, 2), range(2), strict=True):
        one = segment(checkpoint, stack[i], precision="fp32")
        for path, kind in zip(names, ("probabilities", "mask", "instances"), strict=True):
            np.testing.assert_array_equal(tifffile.imread(path)[page], getattr(one, kind))
    with tifffile.TiffFile(names[0]) as tif:
        assert not tif.is_bigtiff


def test_a_folder_gives_one_output_per_file_named_after_the_input(
    checkpoint, isbi, tmp_path, monkeypatch
):
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "b.tif", isbi[0][0, :40, :40])
    tifffile.imwrite(folder / "a.tif", isbi[0][1, :32, :48])
    monkeypatch.chdir(tmp_path)
    written = segment_files(checkpoint, folder, write_instances=True, device="cpu",
                            precision="fp32")  # fmt: skip
    out = tmp_path / "images-prob"  # the default: <folder name>-prob in the working folder
    assert [[p.resolve() for p in g] for g in written] == [
        [out / "a.tif", out / "a-instances.tif"],
        [out / "b.tif", out / "b-instances.tif"],
    ]
    assert tifffile.imread(out / "a-instances.tif").shape == (32, 48)
    assert sorted(p.name for p in out.iterdir()) == ["a-instances.tif", "a.tif",
                                                     "b-instances.tif", "b.tif"]  # fmt: skip
    # a single image without --out: <stem>-prob.tif
    assert segment_files(checkpoint, folder / "a.tif", device="cpu") == [[Path("a-prob.tif")]]
    assert (tmp_path / "a-prob.tif").is_file()


def test_overrides_change_the_stored_settings_and_contour_options_need_a_contour_model(
    checkpoint, isbi, tmp_path
):
    tifffile.imwrite(tmp_path / "in.tif", isbi[0][0, :40, :40])
    segment_files(checkpoint, tmp_path / "in.tif", tmp_path / "o.tif", write_mask=True,
                  overrides={"threshold": 0.6, "min_size": None}, device="cpu")  # fmt: skip
    prob = tifffile.imread(tmp_path / "o.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o-mask.tif"),
                                  ((prob > 0.6) * 255).astype(np.uint8))  # fmt: skip
    model = _model(2)
    mask_ckpt = tiny_checkpoint(tmp_path / "m.pt", model, TrainConfig(target="mask"))
    with pytest.raises(InputError, match=r"m.pt: --seed-dynamics applies to contour models; "
                                         r"this is a mask model"):  # fmt: skip
        segment_files(mask_ckpt, tmp_path / "in.tif", tmp_path / "x.tif", device="cpu",
                      overrides={"seed_dynamics": 0.2},
                      label=lambda f: "--" + f.replace("_", "-"))  # fmt: skip
    assert not (tmp_path / "x.tif").exists()


def test_a_failure_midway_leaves_no_file_and_big_stacks_go_to_bigtiff(
    checkpoint, isbi, tmp_path, monkeypatch
):
    tifffile.imwrite(tmp_path / "in.tif", isbi[0][:3, :32, :32], photometric="minisblack")
    calls = []
    real = segment_module._Segmenter.__call__

    def fail_on_the_third(self, image, outputs, options):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real(self, image, outputs, options)

    monkeypatch.setattr(segment_module._Segmenter, "__call__", fail_on_the_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        segment_files(checkpoint, tmp_path / "in.tif", tmp_path / "o.tif", write_mask=True,
                      write_instances=True, device="cpu")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "in.tif"]  # nothing written
    monkeypatch.setattr(segment_module._Segmenter, "__call__", real)
    monkeypatch.setattr(segment_module, "CLASSIC_TIFF_BYTES", 3 * 32 * 32 * 4 - 1)
    segment_files(checkpoint, tmp_path / "in.tif", tmp_path / "o.tif", device="cpu")
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        assert tif.is_bigtiff and len(tif.pages) == 3


@pytest.fixture
def classes_checkpoint(tmp_path):
    model = _model(3, seed=4)
    return tiny_checkpoint(tmp_path / "k.pt", model, TrainConfig(target="mask"))


def test_a_multiclass_model_gives_its_class_probabilities_and_their_argmax(image):
    model = _model(3, seed=4)
    probs = predict(model, image, precision="fp32")  # (3, H, W) softmax
    got = segment((model, _preset(model, "mask")), image, precision="fp32")
    np.testing.assert_array_equal(got.probabilities, probs)
    assert got.probabilities.dtype == np.float32 and got.probabilities.shape == (3, 72, 60)
    expected = np.zeros(image.shape, np.uint8)  # the most probable class, by comparisons
    expected[(probs[1] > probs[0]) & (probs[1] >= probs[2])] = 1
    expected[(probs[2] > probs[0]) & (probs[2] > probs[1])] = 2
    np.testing.assert_array_equal(got.classes, expected)
    assert got.classes.dtype == np.uint8 and set(np.unique(expected)) == {0, 1, 2}
    assert got.mask is None and got.instances is None
    only = segment((model, _preset(model, "mask")), image, precision="fp32", outputs=["classes"])
    assert only.probabilities is None
    np.testing.assert_array_equal(only.classes, expected)
    # a bare UNet of more than 3 outputs is a multi-class model; a 2-output one is not
    four = segment(_model(4, seed=5), image, precision="fp32")
    assert four.probabilities.shape == (4, 72, 60) and four.classes.max() <= 3
    with pytest.raises(InputError, match="model: a class map needs a multi-class model .* "
                                         "this one has 2 outputs"):  # fmt: skip
        segment(_model(2), image, outputs=("classes",))


def test_a_multiclass_stack_gives_a_class_map_stack_and_c_probability_pages_per_image(
    classes_checkpoint, isbi, tmp_path
):
    stack = isbi[0][:3, :40, :56]
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    written = segment_files(classes_checkpoint, tmp_path / "in.tif", tmp_path / "out.tif",
                            slices="1-2", write_probabilities=True, precision="fp32",
                            device="cpu")  # fmt: skip
    assert written == [[tmp_path / "out.tif", tmp_path / "out-probabilities.tif"]]
    classes = tifffile.imread(tmp_path / "out.tif")
    # ImageJ hyperstacks: Fiji opens the probabilities as 2 slices of 3 channels
    with tifffile.TiffFile(tmp_path / "out-probabilities.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZCYX"
        assert (tif.imagej_metadata["slices"], tif.imagej_metadata["channels"]) == (2, 3)
        probs = tif.asarray()
    assert classes.dtype == np.uint8 and classes.shape == (2, 40, 56)
    assert probs.dtype == np.float32 and probs.shape == (2, 3, 40, 56)  # image i, class c
    for page, i in enumerate((1, 2)):
        one = segment(classes_checkpoint, stack[i], precision="fp32")
        np.testing.assert_array_equal(classes[page], one.classes)
        np.testing.assert_array_equal(probs[page], one.probabilities)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_a_multiclass_folder_defaults_to_classes_and_refuses_masks_and_instances(
    classes_checkpoint, checkpoint, isbi, tmp_path, monkeypatch
):
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", isbi[0][1, :32, :48])
    monkeypatch.chdir(tmp_path)
    written = segment_files(classes_checkpoint, folder, device="cpu")
    assert [[p.resolve() for p in g] for g in written] == [[tmp_path / "images-classes" / "a.tif"]]
    assert tifffile.imread(written[0][0]).dtype == np.uint8
    for asked in ({"write_mask": True}, {"write_instances": True}):
        with pytest.raises(InputError, match=r"k.pt: a 3-class model gives a class map"):
            segment_files(classes_checkpoint, folder, tmp_path / "x", device="cpu", **asked)
    with pytest.raises(InputError, match=r"c.pt: probabilities per class are written for "
                                         r"multi-class models; this model's NAME.tif is its "
                                         r"P\(foreground\)"):  # fmt: skip
        segment_files(checkpoint, folder, tmp_path / "x", device="cpu", write_probabilities=True)
    assert not (tmp_path / "x").exists()


def test_outputs_carry_the_inputs_pixel_size_and_uncalibrated_inputs_write_none(
    checkpoint, isbi, tmp_path
):
    from biounet.io import read_images

    stack = isbi[0][:2, :40, :56]
    calibration = {"axes": "ZYX", "unit": "um"}  # 0.25 µm pixels, as Fiji saves them
    tifffile.imwrite(tmp_path / "cal.tif", stack, imagej=True, resolution=(4.0, 4.0),
                     metadata=calibration)  # fmt: skip
    written = segment_files(checkpoint, tmp_path / "cal.tif", tmp_path / "o.tif",
                            write_mask=True, write_instances=True, device="cpu")  # fmt: skip
    for path in written[0]:
        with tifffile.TiffFile(path) as tif:  # what Fiji reads: pixels per unit, and the unit
            assert tif.pages[0].resolution == (4.0, 4.0)
            assert tif.imagej_metadata["unit"] == "micron"
        assert read_images(path).pixel_sizes == [(0.25, 0.25, "µm")] * 2
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    written = segment_files(checkpoint, tmp_path / "plain.tif", tmp_path / "p.tif",
                            write_mask=True, device="cpu")  # fmt: skip
    for path in written[0]:
        with tifffile.TiffFile(path) as tif:
            meta = tif.imagej_metadata or {}  # a hyperstack (mask) or plain pages (none)
            assert "unit" not in meta and tif.pages[0].resolution == (1.0, 1.0)
        assert read_images(path).pixel_sizes == [None, None]


def test_folder_outputs_keep_input_names_and_each_files_pixel_size(checkpoint, isbi, tmp_path):
    from PIL import Image

    from biounet.io import read_images

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(isbi[0][0, :32, :40]).save(folder / "cell 7.png", dpi=(50800, 50800))
    tifffile.imwrite(folder / "b.tif", isbi[0][1, :40, :32])
    written = segment_files(checkpoint, folder, tmp_path / "out", device="cpu")
    assert [g[0].name for g in written] == ["b.tif", "cell 7.tif"]
    ((x, y, unit),) = read_images(tmp_path / "out" / "cell 7.tif").pixel_sizes
    assert unit == "µm" and x == pytest.approx(0.5, rel=1e-3) and y == pytest.approx(0.5, rel=1e-3)
    assert read_images(tmp_path / "out" / "b.tif").pixel_sizes == [None]
