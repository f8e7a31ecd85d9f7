"""ONNX and TorchScript export: the files give PyTorch's fp32 probabilities through the
same tiling and post-processing, for valid and same padding, at sizes and batches other
than the ones traced; their configuration travels with them; bad files get one line."""

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from conftest import DSB, refusal, tiny_checkpoint, tiny_config, tiny_unet
from PIL import Image

from biounet import InferenceConfig, TrainConfig, predict, segment
from biounet.cli import main
from biounet.errors import InputError
from biounet.exported import export, file_format, load_model
from biounet.model import UNet

CONFIGS = {
    "same": tiny_config("same", batch_norm=True, out_channels=3, normalization="zscore-bright",
                        diameter=12.5),  # fmt: skip
    "valid": tiny_config("valid"),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    """A trained-looking checkpoint of a tiny network (batch-norm statistics and weights
    drawn at random), and its ONNX and TorchScript exports."""
    cfg = CONFIGS[request.param]
    torch.manual_seed(1)
    model = UNet(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    target = "contour" if cfg.out_channels == 3 else "mask"
    tile = 64 if cfg.padding == "same" else 60  # valid for depth 2: 4k + 28
    folder = tmp_path_factory.mktemp(request.param)
    path = tiny_checkpoint(folder / "m.pt", model, TrainConfig(target=target, tile=tile),
                           InferenceConfig(tta=True, min_size=3))  # fmt: skip
    files = {"biounet": path}
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
        files[fmt] = export(path, folder / name, fmt)
    return files


@pytest.fixture
def images(isbi):
    dsb = np.asarray(Image.open(DSB / "images" / "0ea221716cf13710.png"))
    return [isbi[0][7, 30:163, 41:230], dsb]  # (133, 189) uint8, (256, 256)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_files_give_pytorch_fp32_probabilities(checkpoint, images, fmt):
    for image in images:
        for tile in (None, 96):  # the planner's tiles, and small tiles in larger batches
            ref = predict(checkpoint["biounet"], image, precision="fp32", tile=tile)
            got = predict(checkpoint[fmt], image, precision="bf16", tile=tile)  # runs fp32
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_files_carry_their_configuration_and_post_processing(checkpoint, images, fmt):
    net, preset = load_model(checkpoint[fmt])
    _, original = load_model(checkpoint["biounet"])
    assert preset == original and net.config == original.model
    ref = segment(checkpoint["biounet"], images[1], precision="fp32")
    got = segment(checkpoint[fmt], images[1])
    # the same instances, unless a probability sits within float error of a threshold
    assert (got.instances == ref.instances).mean() > 0.999
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)


def test_unknown_formats_and_unreadable_model_files_are_refused(tmp_path):
    src = tiny_checkpoint(tmp_path / "m.pt", tiny_unet())
    assert file_format(src) == "biounet"
    with pytest.raises(InputError, match=r"x\.zip: unknown format 'zip'; one of biounet, onnx"):
        export(src, tmp_path / "x.zip", "zip")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(InputError, match=r"junk\.bin: not a biounet model \(a biounet "
                                         r"checkpoint, ONNX or TorchScript file\)$"):  # fmt: skip
        load_model(junk)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 truncated")
    with pytest.raises(InputError, match=r"bad\.onnx: not a readable ONNX model$"):
        load_model(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "junk.bin", "m.pt"]


@pytest.mark.slow
def test_export_formats_are_told_apart_and_the_wrong_ones_refused(checkpoint, tmp_path):
    assert [file_format(checkpoint[f]) for f in ("biounet", "onnx", "torchscript")] == [
        "biounet", "onnx", "torchscript"]  # fmt: skip
    with pytest.raises(InputError, match=r"m\.onnx: not a biounet checkpoint; export reads"):
        export(checkpoint["onnx"], tmp_path / "x.onnx", "onnx")
    bare = onnx.load(str(checkpoint["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(InputError, match="an ONNX model without biounet's configuration"):
        load_model(tmp_path / "bare.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx"]


@pytest.mark.slow
def test_the_command_exports_and_predicts_with_an_exported_file(checkpoint, tmp_path, capsys):
    src = checkpoint["biounet"]
    code = main(["export", str(src), str(tmp_path / "c.onnx"), "--format", "onnx",
                 "--threshold", "0.3"])  # fmt: skip
    assert code == 0 and "wrote" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "c.onnx")).metadata_props}
    assert json.loads(meta["biounet"])["preset"]["inference"]["threshold"] == 0.3
    img = tmp_path / "img.png"
    Image.fromarray(np.asarray(Image.open(DSB / "images" / "0ea221716cf13710.png"))).save(img)
    code = main(["predict", str(tmp_path / "c.onnx"), str(img), "--out",
                 str(tmp_path / "p.tif"), "--no-progress"])  # fmt: skip
    assert code == 0 and (tmp_path / "p.tif").is_file()
    expected = (f"biounet: error: {tmp_path / 'x.bin'}: unknown format 'zip'; one of biounet, "
                "onnx, torchscript, bioimageio")  # fmt: skip
    assert refusal(["export", str(src), str(tmp_path / "x.bin"), "--format", "zip"],
                   capsys) == expected  # fmt: skip
    assert not (tmp_path / "x.bin").exists()


def test_inference_without_a_gradient_takes_the_plain_path_with_the_same_values():
    torch.manual_seed(0)
    model = UNet(replace(CONFIGS["valid"], depth=3)).eval()
    x = torch.randn(2, 1, 92, 108)  # valid for depth 3: 8k + 60
    with torch.no_grad():
        plain = model(x)
    traced = model(x.requires_grad_())  # the custom autograd function
    assert torch.equal(plain, traced.detach())


@pytest.mark.slow
@pytest.mark.parametrize("shipped,data", [("isbi2012", "isbi"), ("dsb2018-nuclei", "dsb")])
def test_the_shipped_models_export_and_predict_as_they_do(shipped, data, images, tmp_path):
    """The acceptance commands: export MODEL m.onnx / m.ts, then predict with the file
    gives the checkpoint's fp32 probabilities within 1e-4 (here on a crop, both formats)."""
    src = f"models/{shipped}.pt"
    image = images[0] if data == "isbi" else images[1]
    ref = predict(src, image, precision="fp32")
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
        got = predict(export(src, tmp_path / name, fmt), image)
        np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.slow
def test_the_onnxruntime_engine_runs_a_checkpoint_through_its_cached_export(
    checkpoint, images, tmp_path, monkeypatch
):
    import biounet.device
    import biounet.exported
    from biounet.exported import ExportedUNet

    monkeypatch.setenv("BIOUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(biounet.exported, "_onnxruntime_available", lambda: True)
    src = checkpoint["biounet"]
    ref = segment(src, images[1], precision="fp32", engine="torch").probabilities
    got = segment(src, images[1], engine="onnxruntime").probabilities
    np.testing.assert_allclose(got, ref, atol=1e-4)
    (cached,) = (tmp_path / "cache" / "onnx").iterdir()
    made = cached.stat().st_mtime_ns
    net, _ = load_model(src, engine="onnxruntime")  # the export is made once
    assert isinstance(net, ExportedUNet) and cached.stat().st_mtime_ns == made
    # auto: onnxruntime where the CPU has no native bf16 (auto precision means fp32) ...
    monkeypatch.setattr(biounet.device, "bf16_is_fast", lambda device: False)
    assert isinstance(load_model(src, engine="auto")[0], ExportedUNet)
    assert isinstance(load_model(src, engine="auto", precision="fp32")[0], UNet)  # asked
    monkeypatch.setattr(biounet.device, "bf16_is_fast", lambda device: True)
    assert isinstance(load_model(src, engine="auto")[0], UNet)  # ... torch's bf16 elsewhere
    with pytest.raises(InputError, match="engine must be one of auto, torch, onnxruntime"):
        load_model(src, engine="tvm")
