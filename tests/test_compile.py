"""--compile: torch.compile'd prediction and training give what eager PyTorch gives (fp32,
a tiny network), compile once per tile shape, fall back with one warning where compiling
fails, and a run resumes across compiled and eager."""

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_unet

from biounet import device as device_module
from biounet.config import AugmentConfig, Preset, TileOptions, TrainConfig
from biounet.device import Compiled, compiled
from biounet.model import ModelConfig
from biounet.presets import get_preset
from biounet.tiling import probabilities
from biounet.train import train

pytestmark = pytest.mark.slow  # compiling takes tens of seconds on 2 cores


def test_compiled_prediction_equals_eager_in_fp32_with_and_without_tta():
    model = tiny_unet()
    image = np.random.default_rng(0).random((150, 170), dtype=np.float32)
    for tta in (False, True):
        # a tile of 64 and a batch of 3: the last batch is short and padded to the first
        options = TileOptions(tile=64, precision="fp32", tta=tta)
        eager = probabilities(model, image, options)
        fast = probabilities(model, image, replace(options, compile=True))
        np.testing.assert_allclose(fast, eager, atol=1e-5)
    assert compiled(model).failed is None and compiled(model) is compiled(model)
    import copy
    import gc
    import weakref

    twin = copy.deepcopy(model)  # compiles afresh, and its wrapper calls the copy
    assert compiled(twin) is not compiled(model) and compiled(twin).module is twin
    gone = weakref.ref(model)
    del model, twin
    gc.collect()
    assert gone() is None  # the wrapper does not keep its module alive


def test_a_failing_compiler_falls_back_with_one_warning(monkeypatch, caplog):
    def broken(module, **_):
        def run(*args):
            raise RuntimeError("no C++ compiler here\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = tiny_unet()
    net = Compiled(model)
    x = torch.randn(2, 1, 32, 32)
    with caplog.at_level(logging.WARNING, logger="biounet"):
        a, b = net(x), net(x)
    assert net.failed == "RuntimeError: no C++ compiler here"
    torch.testing.assert_close(a, model(x))
    torch.testing.assert_close(b, a)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert warnings == ["torch.compile failed (RuntimeError: no C++ compiler here); running "
                        "without it"]  # fmt: skip
    assert device_module.compiled(tiny_unet(), enabled=False).__class__.__name__ == "UNet"


def _preset(compile: bool) -> Preset:
    base = get_preset("fast")
    return replace(base, model=ModelConfig(depth=2, base_channels=4, dropout=0.0),
                   train=replace(base.train, tile=48, batch_size=2, steps_per_epoch=3,
                                 epochs=2, precision="fp32", isbi_every=0, val_every=0,
                                 time_limit=0.0, train_slices="0-3", val_slices="none",
                                 augment=AugmentConfig(flip=True), compile=compile))  # fmt: skip


def test_compiled_training_follows_eager_training_and_resumes_across_them(tmp_path):
    eager = train(_preset(False), tmp_path / "eager", progress=False, stop_after=1)
    fast = train(_preset(True), tmp_path / "fast", progress=False, stop_after=1)
    assert fast["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    # the compiled run goes on eagerly, and the eager one compiled: same second epoch
    a = train(None, tmp_path / "fast", resume=True, progress=False, compile=False)
    b = train(None, tmp_path / "eager", resume=True, progress=False, compile=True)
    from biounet.checkpoint import load_checkpoint

    assert not load_checkpoint(tmp_path / "fast" / "last.pt")["preset"]["train"]["compile"]
    assert load_checkpoint(tmp_path / "eager" / "last.pt")["preset"]["train"]["compile"]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_bench_compile_times_compiled_against_eager(tmp_path, capsys):
    from conftest import run, tiny_checkpoint

    from biounet.config import InferenceConfig

    ckpt = tiny_checkpoint(tmp_path / "m.pt", tiny_unet(), TrainConfig(tile=64, batch_size=2),
                           InferenceConfig())  # fmt: skip
    code, text, err = run(["bench", "--checkpoint", str(ckpt), "--image-size", "96",
                           "--repeat", "1", "--compile", "--json"], capsys)  # fmt: skip
    import json

    assert code == 0, err
    r = json.loads(text)
    for key in ("compile_seconds", "compiled_steps_per_s", "compiled_speedup_vs_eager",
                "compiled_share_of_peak", "predict_compiled_mpx_per_s",
                "predict_tta_compiled_mpx_per_s", "predict_compile_seconds"):  # fmt: skip
        assert r[key] > 0, key
    # one round: the median of the per-round ratio is that round's ratio
    assert r["compiled_speedup_vs_eager"] == pytest.approx(
        r["compiled_steps_per_s"] / r["train_steps_per_s"])  # fmt: skip
