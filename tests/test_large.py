"""Images larger than memory and sharded prediction: a Zarr, OME-Zarr or TIFF read lazily
and predicted block by block gives the in-memory probabilities; OME-Zarr outputs carry
axes and the input's pixel size; shards together write what one run writes; bad input is
one line."""

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import refusal, tiny_checkpoint, tiny_unet

from biounet import InferenceConfig, TrainConfig
from biounet.cli import main
from biounet.errors import InputError
from biounet.large import (
    OmeZarrWriter,
    large_probabilities,
    open_lazy,
    streamed_normalization,
)
from biounet.mirror import mirror_pad
from biounet.normalization import normalize
from biounet.shards import parse_shard, shard_of_environment
from biounet.tiling import probabilities

zarr = pytest.importorskip("zarr")

TILE = {"same": 64, "valid": 60}  # valid for depth 2: 4k + 28


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny same-padding binary model that does not average views (TTA off)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "m.pt", tiny_unet(seed=2),
                           TrainConfig(tile=64), InferenceConfig(tta=False))  # fmt: skip


def _zarr(path: Path, image: np.ndarray, chunks=(64, 64), names=None) -> Path:
    array = zarr.create_array(str(path), shape=image.shape, dtype=image.dtype, chunks=chunks,
                              dimension_names=names)  # fmt: skip
    array[...] = image
    return path


def _ome(path: Path, image: np.ndarray, axes, scale, version: str = "0.5") -> Path:
    """An OME-Zarr image of one level: NGFF 0.5 (Zarr v3, attributes under "ome") or 0.4
    (Zarr v2, attributes at the top)."""
    fmt = 3 if version == "0.5" else 2
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    ms = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": scale}]}]}  # fmt: skip
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **ms}]
    array = group.create_array("0", shape=image.shape, dtype=image.dtype, chunks=(1,) * (
        image.ndim - 2) + (64, 64))  # fmt: skip
    array[...] = image
    return path


def _image(shape=(150, 230), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 200 + np.linspace(0, 50, shape[1])).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# The same probabilities as in memory


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_lazy_blocks_give_the_in_memory_probabilities(padding, tmp_path):
    image = _image()
    model = tiny_unet(padding, seed=2, out_channels=3)  # 3 channels out: every channel compared
    lazy = open_lazy(_zarr(tmp_path / "in.zarr", image))
    ref = probabilities(model, image, tile=TILE[padding], precision="fp32")
    for block in (1, 100, 10_000):  # one tile a block, a few, the whole image
        out = np.full(ref.shape, np.nan, np.float32)

        def write(y, x, p, out=out):
            assert np.isnan(out[:, y : y + p.shape[1], x : x + p.shape[2]]).all()  # once each
            out[:, y : y + p.shape[1], x : x + p.shape[2]] = p

        large_probabilities(model, lazy, write, tile=TILE[padding], precision="fp32",
                            block=block)  # fmt: skip
        assert np.abs(out - ref).max() <= 1e-5


def test_lazy_windows_mirror_like_mirror_pad(tmp_path):
    image = _image((40, 30))
    lazy = open_lazy(_zarr(tmp_path / "in.zarr", image, chunks=(16, 16)))
    padded = mirror_pad(image, 50, 7, 3, 45)
    assert (lazy.window(-50, 47, -3, 75)[0] == padded).all()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "int32"])
@pytest.mark.parametrize("mode", ["zscore", "zscore-bright", "zscore-invert"])
def test_streamed_statistics_normalise_as_io_normalize(dtype, mode, tmp_path):
    rng = np.random.default_rng(5)
    # a bright background with dark objects (zscore-bright negates it), and an even count
    image = np.where(rng.random((70, 90)) < 0.7, 180, 20) + rng.integers(0, 30, (70, 90))
    image = (image - (100 if dtype in ("int16", "int32") else 0)).astype(dtype)
    lazy = open_lazy(_zarr(tmp_path / "in.zarr", image, chunks=(32, 32)))
    (norm,) = streamed_normalization(lazy, mode)
    assert np.abs(norm(image) - normalize(image, mode)).max() <= 1e-6
    assert norm.negate == (mode != "zscore")


def test_the_median_sign_is_exact_when_half_the_pixels_lie_above_the_mean(tmp_path):
    # 2 x 2 values 0, 1, 3, 4 + one more pair: the median is the mean of the middle two
    for values in ([0, 1, 3, 4, 10, 10], [0, 0, 6, 7, 8, 9], [0, 4, 5, 5, 6, 10]):
        image = np.array(values, np.uint8).reshape(2, 3)
        lazy = open_lazy(_zarr(tmp_path / f"{values}.zarr", image, chunks=(2, 3)))
        (norm,) = streamed_normalization(lazy, "zscore-bright")
        assert (norm(image) == normalize(image, "zscore-bright")).all()


# ---------------------------------------------------------------------------------------
# Files: Zarr round trip, OME-Zarr metadata, BigTIFF


def test_predict_zarr_to_ome_zarr_equals_predict_of_the_tiff(checkpoint, tmp_path, capsys):
    image = _image()
    tifffile.imwrite(tmp_path / "in.tif", image)
    src = _ome(tmp_path / "in.zarr", image, [{"name": "y", "type": "space", "unit":
               "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}],
               [0.25, 0.5])  # fmt: skip
    same = ["--threshold", "0.5", "--no-progress", "--tile", "64", "--precision", "fp32"]
    assert main(["predict", str(checkpoint), str(tmp_path / "in.tif"), "--out",
                 str(tmp_path / "ref.tif"), *same]) == 0  # fmt: skip
    assert main(["predict", str(checkpoint), str(src), "--out", str(tmp_path / "out.zarr"),
                 *same]) == 0  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    ref = tifffile.imread(tmp_path / "ref.tif")
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert np.abs(out["0"][:] - ref).max() <= 1e-5
    mask = zarr.open_group(str(tmp_path / "out-mask.zarr"), mode="r")["0"][:]
    assert mask.dtype == np.uint8 and (mask == tifffile.imread(tmp_path / "ref-mask.tif")).all()
    ome = out.attrs["ome"]
    ms = ome["multiscales"][0]
    assert ome["version"] == "0.5"
    assert ms["axes"] == [{"name": "y", "type": "space", "unit": "micrometer"},
                          {"name": "x", "type": "space", "unit": "micrometer"}]  # fmt: skip
    assert ms["datasets"] == [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [0.25, 0.5]}]}]  # fmt: skip
    assert out["0"].metadata.dimension_names == ("y", "x")
    # and it reads back as an input, pixel size (x, y, unit) included
    assert open_lazy(tmp_path / "out.zarr").pixel_size == (0.5, 0.25, "µm")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_ome_zarr_04_with_a_channel_axis_and_a_single_z(tmp_path):
    image = np.stack([_image((50, 60), 1), _image((50, 60), 2)])[:, None]  # (C, Z=1, Y, X)
    axes = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"}]  # fmt: skip
    lazy = open_lazy(_ome(tmp_path / "c.zarr", image, axes, [1, 1, 8.0, 8.0], "0.4"))
    assert (lazy.shape, lazy.channels, lazy.pixel_size) == ((50, 60), 2, (8.0, 8.0, "nm"))
    assert (lazy.window(0, 50, 0, 60) == image[:, 0]).all()


def test_writer_stores_channels_in_chunks_with_the_pixel_size(tmp_path):
    data = np.random.default_rng(0).random((3, 40, 70)).astype(np.float32)
    with OmeZarrWriter(tmp_path / "p.zarr", (40, 70), np.float32, 3, (2.0, 2.0, "µm")) as w:
        w.write(0, 0, data[:, :25])
        w.write(25, 0, data[:, 25:])
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    ms = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    assert group["0"].chunks == (1, 40, 70) and (group["0"][:] == data).all()


def test_a_tiled_bigtiff_is_read_lazily_with_its_pixel_size(checkpoint, tmp_path):
    image = _image((300, 420))
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, bigtiff=True, tile=(128, 128), resolution=(4.0, 4.0),
                     resolutionunit="NONE", imagej=False,
                     description="ImageJ=1.11a\nunit=micron\n")  # fmt: skip
    lazy = open_lazy(path)
    assert lazy.shape == (300, 420) and lazy.pixel_size == (0.25, 0.25, "µm")
    assert (lazy.window(-5, 305, 10, 40)[0] == mirror_pad(image, 5, 5, 0, 0)[:, 10:40]).all()
    lazy.close()
    assert main(["predict", str(checkpoint), str(path), "--out", str(tmp_path / "o.zarr"),
                 "--no-progress"]) == 0  # fmt: skip
    assert main(["predict", str(checkpoint), str(path), "--out", str(tmp_path / "o.tif"),
                 "--no-progress"]) == 0  # fmt: skip
    out = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert np.abs(out["0"][:] - tifffile.imread(tmp_path / "o.tif")).max() <= 1e-5
    scale = out.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale == [{"type": "scale", "scale": [0.25, 0.25]}]


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit 2


def test_bad_zarr_inputs_are_one_line_each(checkpoint, tmp_path, capsys):
    m = str(checkpoint)
    four = _zarr(tmp_path / "four.zarr", np.zeros((2, 3, 20, 20), np.uint8), chunks=(1, 1, 20, 20))
    assert "without axis names: which axes are y and x?" in refusal(
        ["predict", m, str(four), "--out", str(tmp_path / "o.zarr")], capsys)  # fmt: skip
    noyx = _ome(tmp_path / "noyx.zarr", np.zeros((4, 20, 20), np.uint8),
                [{"name": "t"}, {"name": "a"}, {"name": "b"}], [1, 1, 1])  # fmt: skip
    assert f"{noyx}: axes t, a, b: expected one y and one x axis" in refusal(
        ["predict", m, str(noyx)], capsys)  # fmt: skip
    z = _ome(tmp_path / "z.zarr", np.zeros((5, 20, 20), np.uint8),
             [{"name": "z"}, {"name": "y"}, {"name": "x"}], [1, 1, 1])  # fmt: skip
    assert "axis 'z' has 5 elements; predict reads one 2-D (y, x) plane" in refusal(
        ["predict", m, str(z)], capsys)  # fmt: skip
    fake = tmp_path / "fake.zarr"
    fake.mkdir()
    (fake / "notes.txt").write_text("hello")
    assert f"{fake}: not a Zarr array or OME-Zarr image" in refusal(["predict", m, str(fake)],
                                                                   capsys)  # fmt: skip
    group = tmp_path / "plain.zarr"
    zarr.open_group(str(group), mode="w")
    assert "a Zarr group without OME multiscales metadata" in refusal(
        ["predict", m, str(group)], capsys)  # fmt: skip
    ok = _zarr(tmp_path / "ok.zarr", _image((40, 40)))
    assert "instances need the whole image in memory" in refusal(
        ["predict", m, str(ok), "--instances"], capsys)  # fmt: skip
    assert "give --out NAME.zarr" in refusal(["predict", m, str(ok), "--out",
                                             str(tmp_path / "x.tif")], capsys)  # fmt: skip
    assert not (tmp_path / "x.tif").exists()


def test_without_zarr_a_zarr_path_says_how_to_install_it(checkpoint, tmp_path, capsys,
                                                         monkeypatch):  # fmt: skip
    import sys

    (tmp_path / "in.zarr").mkdir()
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    err = refusal(["predict", str(checkpoint), str(tmp_path / "in.zarr")], capsys)
    assert err == "biounet: error: Zarr images need the zarr package: pip install 'biounet[zarr]'"


# ---------------------------------------------------------------------------------------
# Shards


def test_shard_specs_and_torchrun_ranks():
    assert parse_shard("2/3") == (2, 3) and parse_shard(" 0/1 ") == (0, 1)
    for bad, why in (("3/2", r"K must be in 0..1"), ("x", r"expected K/N"),
                     ("0/0", r"N must be at least 1"), ("1/", "expected K/N")):  # fmt: skip
        with pytest.raises(InputError, match=why):
            parse_shard(bad)
    assert shard_of_environment({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    assert shard_of_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert shard_of_environment({}) is None


def _folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(7):
        tifffile.imwrite(folder / f"img{i}.tif", _image((40 + 4 * i, 48), seed=i))
    return folder


def test_shards_together_write_what_one_run_writes(checkpoint, tmp_path, capsys, caplog):
    folder = _folder(tmp_path)
    m = str(checkpoint)
    common = ["--threshold", "0.5", "--no-progress"]
    assert main(["predict", m, str(folder), "--out", str(tmp_path / "one"), *common]) == 0
    with caplog.at_level(logging.INFO, logger="biounet"):
        for k in range(3):
            assert main(["predict", m, str(folder), "--out", str(tmp_path / "shards"),
                         "--shard", f"{k}/3", *common]) == 0  # fmt: skip
    assert "shard 1/3: 2 of 7 images" in caplog.text
    one, shards = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "shards").iterdir())
    assert [p.name for p in one] == [p.name for p in shards] and len(one) == 14
    for a, b in zip(one, shards, strict=True):
        assert (tifffile.imread(a) == tifffile.imread(b)).all()


def test_a_shard_without_images_says_so_and_succeeds(checkpoint, tmp_path, capsys, caplog):
    image = tmp_path / "one.tif"
    tifffile.imwrite(image, _image((40, 40)))
    with caplog.at_level(logging.INFO, logger="biounet"):
        assert main(["predict", str(checkpoint), str(image), "--shard", "1/2", "--out",
                     str(tmp_path / "o.tif"), "--no-progress"]) == 0  # fmt: skip
    assert "shard 1/2: no images to predict (1 in all)" in caplog.text
    assert not (tmp_path / "o.tif").exists()


def test_torchrun_ranks_shard_without_a_flag(checkpoint, tmp_path, monkeypatch, caplog):
    folder = _folder(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level(logging.INFO, logger="biounet"):
        assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["img1.tif", "img3.tif",
                                                                 "img5.tif"]  # fmt: skip


def test_bad_shards_are_one_line(checkpoint, tmp_path, capsys):
    for spec, why in (("3/2", "--shard 3/2: K must be in 0..1"), ("x", "--shard 'x': expected "
                      "K/N"), ("0/0", "--shard 0/0: N must be at least 1")):  # fmt: skip
        assert why in refusal(["predict", str(checkpoint), str(tmp_path), "--shard", spec],
                             capsys)  # fmt: skip


def test_skip_existing_predicts_only_what_is_missing(checkpoint, tmp_path, caplog):
    folder = _folder(tmp_path)
    out = tmp_path / "o"
    argv = ["predict", str(checkpoint), str(folder), "--out", str(out), "--threshold", "0.5",
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--shard", "0/2"]) == 0
    (out / "img2-mask.tif").unlink()  # img2 is incomplete: predicted again
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with caplog.at_level(logging.INFO, logger="biounet"):
        assert main([*argv, "--skip-existing"]) == 0
    assert "skipped 3 of 7 images whose outputs exist" in caplog.text
    assert len(list(out.iterdir())) == 14
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in stamp.items()
               if not n.startswith("img2"))  # fmt: skip
