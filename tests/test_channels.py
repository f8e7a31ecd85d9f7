"""Images of several channels: a TIFF's C axis is channels, never slices; --channels picks
and orders them; the network's input channels come from the data, and predict refuses an
image whose channels the model does not take."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import refusal, run, tiny_config, tiny_unet
from PIL import Image

from biounet import model_from_checkpoint
from biounet.cli import build_parser
from biounet.errors import InputError
from biounet.io import parse_channels, read_images
from biounet.model import ModelConfig, UNet
from biounet.normalization import normalize
from biounet.tiling import (
    plan_tiles,
    probabilities,
    tiled_probabilities,
    unet_predictor,
)

MODELS = Path(__file__).resolve().parents[1] / "models"


def _stack(rng, shape=(2, 40, 50)):
    return rng.normal(100, 20, shape).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Reading: axes from the metadata


@pytest.mark.parametrize("writer", ["imagej", "ome", "shaped"])
def test_a_channel_axis_gives_channels_not_slices(tmp_path, rng, writer):
    data = _stack(rng)
    path = tmp_path / "cyx.tif"
    kw = {"imagej": {"imagej": True}, "ome": {"ome": True}, "shaped": {}}[writer]
    tifffile.imwrite(path, data, metadata={"axes": "CYX"}, **kw)
    images = read_images(path)
    assert len(images) == 1 and images.channels == 2 and images.names == ["cyx"]
    np.testing.assert_array_equal(images.arrays[0], data)


def test_a_hyperstack_gives_one_multichannel_image_per_slice(tmp_path, rng):
    data = _stack(rng, (3, 2, 40, 50))  # Z, C, Y, X
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    images = read_images(path)
    assert len(images) == 3 and images.names == ["zcyx[0]", "zcyx[1]", "zcyx[2]"]
    for z in range(3):
        np.testing.assert_array_equal(images.arrays[z], data[z])
    one = read_images(path, channels="1")  # one channel of each slice: gray slices
    assert [a.shape for a in one.arrays] == [(40, 50)] * 3
    np.testing.assert_array_equal(one.arrays[2], data[2, 1])


def test_pages_without_axes_metadata_stay_slices(tmp_path, rng):
    data = _stack(rng)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:  # two plain pages, no shape or axes description
        for page in data:
            tif.write(page, metadata=None)
    images = read_images(path)
    assert len(images) == 2 and images.channels == 1
    np.testing.assert_array_equal(images.arrays[1], data[1])


def test_channels_pick_and_order(tmp_path, rng):
    data = _stack(rng, (3, 20, 30))
    path = tmp_path / "c3.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    picked = read_images(path, channels="2,0").arrays[0]
    np.testing.assert_array_equal(picked, data[[2, 0]])
    np.testing.assert_array_equal(read_images(path, channels=(1,)).arrays[0], data[1])
    with pytest.raises(InputError, match=r"c3\.tif: --channels 3: the image has 3 channels"):
        read_images(path, channels="3")


def test_colour_png_is_gray_unless_rgb_is_asked_for(tmp_path, rng):
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(rgba, "RGBA").save(path)
    gray = read_images(path).arrays[0]
    luma = rgba[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(gray, luma, rtol=1e-6)
    kept = read_images(path, channels="rgb").arrays[0]
    np.testing.assert_array_equal(kept, np.moveaxis(rgba[..., :3], -1, 0))  # alpha dropped
    np.testing.assert_array_equal(read_images(path, channels="2").arrays[0], rgba[..., 2])
    Image.fromarray(rgba[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(InputError, match=r"gray\.png: --channels rgb needs a colour image"):
        read_images(tmp_path / "gray.png", channels="rgb")


def test_rgb_tiff_samples_become_channels(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    assert read_images(path).arrays[0].shape == (20, 30)
    np.testing.assert_array_equal(read_images(path, channels="rgb").arrays[0],
                                  np.moveaxis(rgb, -1, 0))  # fmt: skip


def test_a_folder_of_mixed_channel_counts_is_refused(tmp_path, rng):
    tifffile.imwrite(tmp_path / "a.tif", _stack(rng), imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "b.tif", _stack(rng, (40, 50)))
    with pytest.raises(InputError, match=r"b\.tif: 1 channel, but a\.tif has 2"):
        read_images(tmp_path)


def test_labels_with_channels_are_refused(tmp_path):
    path = tmp_path / "lab.tif"
    tifffile.imwrite(path, np.zeros((2, 20, 30), np.uint8), imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(InputError, match=r"lab\.tif: a label image of 2 channels"):
        read_images(path, mask=True)


@pytest.mark.parametrize("spec", ["x", "1,1", "-1", "1,"])
def test_bad_channel_specs_are_refused(spec):
    with pytest.raises(InputError, match="--channels"):
        parse_channels(spec)


def test_each_channel_is_normalised_on_its_own(rng):
    image = np.stack([rng.normal(5, 2, (30, 40)), rng.normal(-300, 50, (30, 40))])
    x = normalize(image)
    for c in range(2):
        np.testing.assert_array_equal(x[c], normalize(image[c]))


# ---------------------------------------------------------------------------------------
# Prediction of multi-channel images


def test_multichannel_tiling_equals_one_pass_over_the_whole_image(rng, whole_image_probabilities):
    torch.manual_seed(0)
    model = UNet(ModelConfig(in_channels=3, depth=4, base_channels=2, padding="valid")).eval()
    x = normalize(rng.random((3, 150, 211)).astype(np.float32))
    plan = plan_tiles(model.config, x.shape[-2:], tile=204, precision="fp32")
    with torch.inference_mode():
        tiled = tiled_probabilities(unet_predictor(model, "fp32"), x, plan)
        whole = whole_image_probabilities(model, x, "fp32")
    assert tiled.shape == (1, 150, 211)
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)


def test_the_predictor_gets_every_channel_in_order(rng):
    image = rng.integers(0, 100, (2, 70, 90)).astype(np.float32)
    plan = plan_tiles(tiny_config("valid"), (70, 90), tile=44)
    b = (plan.tile - plan.out) // 2
    seen = []

    def second_channel(x):  # (B, C, S, S) -> (B, 1, s, s): channel 1 + 1 where it is seen
        seen.append(x.shape[1])
        return x[:, 1:2, b : b + plan.out, b : b + plan.out] + 1

    out = tiled_probabilities(second_channel, image, plan, tta=True)
    assert set(seen) == {2}
    np.testing.assert_array_equal(out[0], image[1] + 1)


def test_an_image_of_other_channels_than_the_model_takes_is_refused(rng):
    model = tiny_unet(in_channels=2)
    with pytest.raises(InputError, match="the image has 1 channel; the model takes 2"):
        probabilities(model, rng.random((40, 40)))


# ---------------------------------------------------------------------------------------
# Training on two channels, end to end


def _two_channel_set(folder, rng, n=6, size=112):
    """Images (ImageJ CYX) whose labelled disks show only in channel 1; channel 0 holds
    as many unlabelled decoy disks, as bright. Returns (images folder, labels folder)."""
    images, labels = folder / "images", folder / "labels"
    images.mkdir()
    labels.mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        mask, decoy = np.zeros((size, size), bool), np.zeros((size, size), bool)
        for target in (mask, decoy):
            for _ in range(5):
                y, x = rng.integers(12, size - 12, 2)
                target |= (yy - y) ** 2 + (xx - x) ** 2 < rng.integers(36, 100)
        noise = rng.normal(0, 0.5, (2, size, size))
        data = (noise + 2.0 * np.stack([decoy, mask])).astype(np.float32)
        tifffile.imwrite(images / f"im{i}.tif", data, imagej=True, metadata={"axes": "CYX"})
        tifffile.imwrite(labels / f"im{i}.tif", (mask * 255).astype(np.uint8))
    return images, labels


@pytest.mark.slow
def test_two_channels_train_to_high_iou_and_predict_one_page_per_stack(tmp_path, rng, capsys):
    images, labels = _two_channel_set(tmp_path, rng)
    out = tmp_path / "run"
    code, text, err = run(["train", "--images", str(images), "--labels", str(labels),
                           "--val-slices", "5", "--epochs", "6", "--steps-per-epoch", "20",
                           "--batch-size", "4", "--tile", "96", "--isbi-every", "0",
                           "--precision", "fp32", "--seed", "0", "--out", str(out),
                           "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model"]["in_channels"] == 2
    code, text, _ = run(["info", str(out / "best.pt")], capsys)
    assert code == 0 and "\n  input        2 channels\n" in text
    pred = tmp_path / "im5-prob.tif"
    code, _, err = run(["predict", str(out / "best.pt"), str(images / "im5.tif"), "--out",
                        str(pred), "--no-tta", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    with tifffile.TiffFile(pred) as tif:
        assert len(tif.pages) == 1
        prob = tif.asarray()
    assert prob.shape == (112, 112)
    truth = tifffile.imread(labels / "im5.tif") > 0
    fg = prob > 0.5
    iou = (fg & truth).sum() / (fg | truth).sum()
    assert iou > 0.85, iou
    # the objects are learned from channel 1: without it, none are found where they are
    blind = read_images(images / "im5.tif").arrays[0].copy()
    blind[1] = np.random.default_rng(1).normal(0, 0.5, blind[1].shape)
    model, _ = model_from_checkpoint(out / "best.pt", "cpu")
    fg_blind = probabilities(model, blind)[0] > 0.5
    assert (fg_blind & truth).sum() < 0.2 * truth.sum()


def test_predict_refuses_a_two_channel_stack_for_a_one_channel_model(tmp_path, rng, capsys):
    data = _stack(rng, (2, 64, 64))
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    model = MODELS / "isbi2012.pt"  # the shipped 1-channel model
    out = tmp_path / "out.tif"
    refusal(["predict", str(model), str(path), "--out", str(out)], capsys,
            "cyx.tif: 2 channels; the model", "takes 1")  # fmt: skip
    assert not out.exists()
    code, _, err = run(["predict", str(model), str(path), "--channels", "1", "--out", str(out),
                        "--no-tta", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 1 and tif.pages[0].shape == (64, 64)


def test_help_says_what_pages_and_channels_mean():
    parser = build_parser()
    for command in ("train", "predict"):
        sub = parser._subparsers._group_actions[0].choices[command]
        text = " ".join(sub.format_help().split())
        assert "pages without axes metadata are slices" in text
        assert "C axis (ImageJ hyperstack or OME metadata) gives channels" in text


def test_figures_show_a_multichannel_image_as_its_largest_channel(tmp_path, rng, capsys):
    from biounet.plots import shown

    image = np.stack([rng.normal(0, 1, (30, 40)), rng.normal(50, 10, (30, 40))])
    np.testing.assert_array_equal(shown(image), np.maximum(normalize(image[0]),
                                                           normalize(image[1])))  # fmt: skip
    np.testing.assert_array_equal(shown(image[1]), image[1])  # gray: as it is
    tifffile.imwrite(tmp_path / "im.tif", image.astype(np.float32), imagej=True,
                     metadata={"axes": "CYX"})  # fmt: skip
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:15] = mask[18:26, 20:35] = 255
    tifffile.imwrite(tmp_path / "lab.tif", mask)
    code, _, err = run(["weight-map", str(tmp_path / "lab.tif"), "--images",
                        str(tmp_path / "im.tif"), "--out", str(tmp_path / "w.tif"), "--png"],
                       capsys)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "w.png").stat().st_size > 0


def test_predict_reads_images_as_the_model_was_trained_to_pick_them(tmp_path, rng, capsys):
    images, labels = tmp_path / "im", tmp_path / "lb"
    images.mkdir()
    labels.mkdir()
    for i in range(3):
        mask = np.zeros((64, 72), np.uint8)
        mask[10:40, 20:60] = 255
        rgb = rng.integers(0, 60, (64, 72, 3), dtype=np.uint8)
        rgb[..., 1][mask > 0] += 150
        Image.fromarray(rgb).save(images / f"c{i}.png")
        Image.fromarray(mask).save(labels / f"c{i}.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    out = tmp_path / "run"
    code, _, err = run(["train", "--images", str(images), "--labels", str(labels), "--channels",
                        "rgb", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                        "--tile", "64", "--precision", "fp32", "--out", str(out),
                        "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run(["predict", str(out / "best.pt"), str(images), "--out",
                        str(tmp_path / "p"), "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err  # colour PNGs read as RGB, not gray, without --channels
    model, _ = model_from_checkpoint(out / "best.pt", "cpu")
    expected = probabilities(model, read_images(images / "c1.png", channels="rgb").arrays[0])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p" / "c1.tif"), expected[0])
    refusal(["predict", str(out / "best.pt"), str(tmp_path / "gray.png"), "--out",
             str(tmp_path / "g.tif")], capsys, "gray.png: 1 channel; the model",
            "takes 3 (it was trained with --channels rgb)")  # fmt: skip
    assert not (tmp_path / "g.tif").exists()
