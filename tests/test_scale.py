"""Object scale and contrast polarity at prediction: --diameter rescales each image so its
objects have the size the model was trained on (and every output back), --invert negates
images so objects are bright; the helpers against slow references."""

import importlib
from dataclasses import replace

import numpy as np
import pytest
from conftest import tiny_unet
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops

from biounet import InferenceConfig, Preset, TrainConfig, segment
from biounet.errors import InputError
from biounet.instances import equivalent_diameters, resize_labels
from biounet.model import UNet
from biounet.normalization import normalize
from biounet.segment import rescale_image
from biounet.tiling import TileOptions

segment_module = importlib.import_module("biounet.segment")


def _model(diameter: float = 0.0, out_channels: int = 2) -> UNet:
    return tiny_unet(out_channels=out_channels, diameter=diameter)


def _pair(model: UNet, **inference) -> tuple[UNet, Preset]:
    return model, Preset("tiny", "test", model.config, TrainConfig(target="mask"),
                         InferenceConfig(**inference))  # fmt: skip


def disks(shape=(200, 240), diameter=24.0, centres=((50, 60), (60, 170), (150, 110))):
    """(uint8 image 0/200, int32 labels) of disks of ``diameter`` pixels."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(centres, 1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= (diameter / 2) ** 2] = i
    return ((labels > 0) * 200).astype(np.uint8), labels


@pytest.fixture
def seen(monkeypatch):
    """A stand-in network: P(foreground) = the image scaled to [0, 1]; records the shape of
    every image it is given."""
    shapes = []

    def network(model, image, options=None, *, normalization=None):
        shapes.append(image.shape)
        x = np.asarray(image, np.float32)
        return (x - x.min()) / max(1e-6, float(x.max() - x.min()))

    monkeypatch.setattr(segment_module, "predict", network)
    return shapes


def test_equivalent_diameters_match_skimage():
    _, labels = disks()
    labels[0:5, 0:9] = 7  # a rectangle, and ids 4..6 left unused
    expected = [r.equivalent_diameter_area for r in regionprops(labels)]
    np.testing.assert_allclose(equivalent_diameters(labels), expected, rtol=1e-12)
    assert equivalent_diameters(np.zeros((4, 4), np.uint16)).size == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**16))
def test_labels_scaled_up_by_an_integer_and_back_are_unchanged(h, w, k, seed):
    labels = np.random.default_rng(seed).integers(0, 5, (h, w)).astype(np.uint16)
    up = resize_labels(labels, (h * k, w * k))
    np.testing.assert_array_equal(up, np.kron(labels, np.ones((k, k), np.uint16)))
    np.testing.assert_array_equal(resize_labels(up, (h, w)), labels)
    assert up.dtype == np.uint16


def test_labels_that_vanish_when_shrunk_leave_no_gaps_in_the_ids():
    labels = np.zeros((8, 8), np.uint32)
    labels[0, 0] = 1  # one pixel: sampled away at half size
    labels[4:8, 4:8] = 2
    small = resize_labels(labels, (4, 4))
    assert small.dtype == np.uint32 and set(np.unique(small)) == {0, 1}
    assert (small[2:, 2:] == 1).all()


def test_rescaling_keeps_constant_images_and_the_sum_of_class_probabilities():
    np.testing.assert_allclose(rescale_image(np.full((30, 50), 7, np.uint8), (13, 77)), 7,
                               rtol=1e-6)  # fmt: skip
    p = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    p /= p.sum(0)
    for shape in ((20, 25), (90, 70)):
        out = rescale_image(p, shape)
        assert out.shape == (3, *shape)
        np.testing.assert_allclose(out.sum(0), 1, atol=1e-5)


def test_a_diameter_rescales_to_the_trained_size_and_every_output_back(seen):
    image, truth = disks(diameter=24)
    pair = _pair(_model(diameter=12.0), diameter=24.0, threshold=0.5)
    got = segment(pair, image)
    assert seen == [(100, 120)]  # the network saw the image at half size
    assert got.probabilities.shape == got.mask.shape == got.instances.shape == image.shape
    assert got.instances.max() == 3
    for i in (1, 2, 3):  # each disk found where it is, at its size, after the round trip
        found = got.instances[truth == i]
        assert np.bincount(found).argmax() > 0
        area = (got.instances == np.bincount(found).argmax()).sum()
        assert abs(area / (truth == i).sum() - 1) < 0.08
    seen.clear()
    same = segment(_pair(_model(diameter=12.0), threshold=0.5), image)  # no diameter
    assert seen == [image.shape] and same.instances.max() == 3


def test_auto_measures_each_image_with_a_first_pass(seen):
    image, truth = disks(diameter=30)
    pair = _pair(_model(diameter=15.0), diameter="auto", threshold=0.5)
    run = segment_module._segmenter(pair, None, {}, "cpu", str)
    measured = run.measure(image, TileOptions())
    assert measured == pytest.approx(float(np.median(equivalent_diameters(truth))), rel=1e-9)
    seen.clear()
    got = segment(pair, image)
    factor = 15.0 / measured
    assert seen == [image.shape, (round(200 * factor), round(240 * factor))]
    assert got.instances.max() == 3
    seen.clear()  # nothing in the image: nothing to measure, the image as it is
    segment(pair, np.zeros((64, 64), np.uint8))
    assert seen == [(64, 64), (64, 64)]


def test_a_diameter_needs_a_model_that_knows_its_own_and_a_factor_within_reach(image):
    with pytest.raises(InputError, match="^model: diameter needs a model that knows the "
                                         "diameter of the objects it was trained on"):  # fmt: skip
        segment(_pair(_model(), diameter=20.0), image)
    with pytest.raises(InputError, match=r"^model: diameter 100 would rescale the images by "
                       r"0\.12; the model was trained on objects of 12 px and rescales by at "
                       r"most 4x either way$"):  # fmt: skip
        segment(_pair(_model(diameter=12.0), diameter=100.0), image)
    with pytest.raises(ValueError, match="diameter must be auto or >= 0 pixels, got 'big'"):
        InferenceConfig(diameter="big")


@pytest.fixture
def image(isbi):
    return isbi[0][3, 100:172, 200:260]


def test_invert_yes_sees_the_negated_image_and_auto_follows_the_median(image):
    model = _model()
    x = image.astype(np.float32)
    yes = segment(model, x, invert="yes", precision="fp32").probabilities
    np.testing.assert_array_equal(yes, segment(model, -x, invert="no", precision="fp32")
                                  .probabilities)  # fmt: skip
    assert not np.array_equal(yes, segment(model, x, invert="no", precision="fp32").probabilities)
    # auto negates an image whose median exceeds its mean, and only such an image
    bright_background = np.full((40, 40), 200.0, np.float32)
    bright_background[10:20, 10:20] = 20.0
    np.testing.assert_array_equal(normalize(bright_background, "zscore-bright"),
                                  normalize(bright_background, "zscore-invert"))  # fmt: skip
    np.testing.assert_array_equal(normalize(-bright_background, "zscore-bright"),
                                  normalize(-bright_background, "zscore"))  # fmt: skip
    np.testing.assert_array_equal(normalize(x, "zscore-invert"), -normalize(x, "zscore"))
    with pytest.raises(ValueError, match="invert must be one of"):
        segment(model, x, invert="maybe")


def test_the_model_normalisation_is_kept_unless_invert_is_given(image):
    plain, inverted = _model(), _model()
    inverted.config = replace(inverted.config, normalization="zscore-invert")
    np.testing.assert_array_equal(segment(inverted, image).probabilities,
                                  segment(plain, image, invert="yes").probabilities)  # fmt: skip
