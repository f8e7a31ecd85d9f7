import csv
import json
import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import tifffile
import torch
from conftest import refusal, tiny_config

from biounet.checkpoint import load_checkpoint, model_from_checkpoint
from biounet.config import AugmentConfig, Preset, TrainConfig
from biounet.errors import InputError
from biounet.losses import segmentation_loss
from biounet.model import ModelConfig, UNet
from biounet.runs import plan_epochs
from biounet.train import learning_rate, train

TINY = tiny_config(batch_norm=True)


def tiny_preset(images, labels, **train):
    cfg = dict(
        images=images,
        labels=labels,
        val_slices="4-5",
        tile=32,
        batch_size=2,
        epochs=3,
        steps_per_epoch=3,
        optimizer="adam",
        lr=1e-2,
        schedule="cosine",
        precision="fp32",
        seed=7,
    )
    cfg.update(train)
    return Preset("tiny", "test", TINY, TrainConfig(**cfg))


@pytest.mark.slow
def test_a_small_network_overfits_one_isbi_crop(isbi):
    torch.manual_seed(0)
    images, labels = isbi
    x = torch.from_numpy(images[3, 200:264, 200:264].astype(np.float32))
    x = ((x - x.mean()) / x.std())[None, None]
    y = torch.from_numpy((labels[3, 200:264, 200:264] == 255).astype(np.int64))[None]
    model = UNet(tiny_config(batch_norm=True, base_channels=8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = segmentation_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] * 5 <= losses[0]


def test_learning_rate_schedules():
    step = TrainConfig(lr=0.01, schedule="step", step_epochs=30, gamma=0.1, epochs=60)
    assert learning_rate(step, 0, 28) == 0.01
    assert learning_rate(step, 30 * 28 - 1, 28) == 0.01
    assert learning_rate(step, 30 * 28, 28) == pytest.approx(0.001)
    cos = TrainConfig(lr=1.0, schedule="cosine", epochs=10, warmup_steps=10)
    assert learning_rate(cos, 0, 10) == pytest.approx(0.1)  # warm-up
    assert learning_rate(cos, 50, 10) == pytest.approx(0.5)  # half way
    assert learning_rate(cos, 100, 10) == pytest.approx(0.0, abs=1e-12)
    poly = TrainConfig(lr=1.0, schedule="poly", epochs=1)
    assert learning_rate(poly, 50, 100) == pytest.approx(0.5**0.9)
    # a time limit plans 4 of 10 epochs: the cosine ends with the 4th, not half way down
    assert learning_rate(cos, 20, 10, epochs=4) == pytest.approx(0.5)
    assert learning_rate(cos, 40, 10, epochs=4) == pytest.approx(0.0, abs=1e-12)


def test_a_time_limit_plans_the_epochs_that_fit():
    cfg = TrainConfig(epochs=30, time_limit=10)  # 600 s
    assert plan_epochs(TrainConfig(epochs=30), [], 1, 500.0) == 30  # no limit
    assert plan_epochs(cfg, [], 1, 60.0) == 10  # 60 s done, 9 more of 60 s fit
    assert plan_epochs(cfg, [], 1, 10.0) == 30  # everything fits
    # the first epoch (start-up costs) is left out of the mean once there are two
    history = [{"seconds": 70.0}, {"seconds": 50.0}, {"seconds": 50.0}]
    assert plan_epochs(cfg, history, 4, 50.0) == 4 + (600 - 220) // 50
    assert plan_epochs(cfg, history, 4, 500.0) == 4  # over the limit: stop now, not before
    # the planned last epoch ends the run even if time is left (its schedule is over) ...
    assert plan_epochs(cfg, history, 4, 50.0, planned=4) == 4
    assert plan_epochs(cfg, history, 3, 50.0, planned=4) == 3 + (600 - 220) // 50  # ... not before
    with pytest.raises(ValueError, match="time_limit"):
        TrainConfig(time_limit=-1)


@pytest.mark.slow
def test_a_time_limited_run_ends_its_schedule_in_time_and_can_be_extended(
    isbi_crops, tmp_path, monkeypatch
):
    import importlib
    import types

    clock = iter(range(10**6))  # a clock that ticks one second per reading
    fake_time = types.SimpleNamespace(perf_counter=lambda: next(clock))
    monkeypatch.setattr(importlib.import_module("biounet.train"), "time", fake_time)
    out = tmp_path / "run"
    # 6 s: after epoch 1 (1 s so far) 6 epochs fit; after epoch 2 (2 s logged) 3; then stop
    preset = tiny_preset(*isbi_crops, epochs=8, val_every=5, time_limit=0.1)
    result = train(preset, out, progress=False)
    ckpt = load_checkpoint(out / "last.pt")
    assert result["epochs"] == 3 and ckpt["plan"] == 3 and len(ckpt["history"]) == 3
    assert ckpt["history"][-1]["val_loss"] is not None  # the last planned epoch validates
    # the cosine ends with the plan (last step: lr (1 + cos(pi 8/9)) / 2), not 8 epochs later
    assert ckpt["history"][-1]["lr"] == pytest.approx(learning_rate(preset.train, 8, 3, 3))
    assert ckpt["history"][-1]["lr"] < 0.05 * preset.train.lr
    # resuming keeps the plan; more epochs need the limit lifted, said in one clear line
    assert train(None, out, resume=True, progress=False)["epochs"] == 3
    with pytest.raises(InputError, match=r"0\.1-minute time limit is spent .*--time-limit 0"):
        train(None, out, resume=True, epochs=5, progress=False)
    assert train(None, out, resume=True, epochs=5, time_limit=0, progress=False)["epochs"] == 5
    assert load_checkpoint(out / "last.pt")["plan"] == 5


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_one(isbi_crops, tmp_path):
    preset = tiny_preset(*isbi_crops, augment=AugmentConfig(flip=True, rot90=True))
    preset = Preset(
        preset.name, "", ModelConfig(**{**TINY.to_dict(), "dropout": 0.3}), preset.train
    )
    full = train(preset, tmp_path / "full", progress=False)
    train(preset, tmp_path / "cut", stop_after=1, progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    train(None, tmp_path / "cut", resume=True, progress=False)  # settings from the run
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    keys = ("train_loss", "val_loss", "val_pixel_error")
    assert [[h[k] for k in keys] for h in a["history"]] == [
        [h[k] for k in keys] for h in b["history"]
    ]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert full["epochs"] == 3


@pytest.mark.slow
def test_run_directory_holds_everything_and_checkpoints_load_safely(isbi_crops, tmp_path):
    out = tmp_path / "run"
    train(tiny_preset(*isbi_crops, epochs=2), out, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "log.csv", "last.pt", "best.pt", "curves.png", "val.png"} <= names
    assert not [n for n in names if ".tmp" in n]
    rows = (out / "log.csv").read_text().splitlines()
    assert (
        rows[0].startswith("epoch,step,lr,train_loss,val_loss,val_pixel_error") and len(rows) == 3
    )
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["format_version"] == 1 and ckpt["preset"]["model"]["base_channels"] == 4
    assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())  # no metadata
    model, preset = model_from_checkpoint(out / "best.pt")
    assert preset.model == TINY and isinstance(model, UNet)
    assert Preset.from_dict(__import__("json").loads((out / "config.json").read_text())) == preset


@pytest.mark.slow
def test_per_level_channels_survive_the_checkpoint_and_config_json(isbi_crops, tmp_path):
    out = tmp_path / "run"
    model = ModelConfig(**{**TINY.to_dict(), "channels": (4, 6, 12)})
    preset = tiny_preset(*isbi_crops, epochs=1)
    preset = Preset(preset.name, "", model, preset.train)
    train(preset, out, progress=False)
    stored = __import__("json").loads((out / "config.json").read_text())
    assert stored["model"]["channels"] == [4, 6, 12]  # JSON has lists: read back as a tuple
    net, loaded = model_from_checkpoint(out / "best.pt")
    assert loaded.model == model and loaded.model.channels == (4, 6, 12)
    assert net.downs[-1].conv[-3].out_channels == 12  # the bottleneck's last conv


@pytest.mark.slow
def test_refuses_to_overwrite_a_run_and_to_resume_nothing(isbi_crops, tmp_path):
    preset = tiny_preset(*isbi_crops, epochs=1)  # paths given as Path objects: stored as text
    assert isinstance(preset.train.images, str)
    with pytest.raises(InputError, match="no last.pt to resume from"):
        train(preset, tmp_path / "empty", resume=True, progress=False)
    train(preset, tmp_path / "run", progress=False)
    with pytest.raises(InputError, match="already holds a run; use --resume"):
        train(preset, tmp_path / "run", progress=False)


def test_masks_holding_one_class_are_refused(tmp_path, rng):
    tifffile.imwrite(
        tmp_path / "i.tif",
        rng.integers(0, 255, (3, 32, 32), dtype=np.uint8),
        photometric="minisblack",
    )
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="hold only class 0; check the mask encoding"):
        train(
            tiny_preset(tmp_path / "i.tif", tmp_path / "l.tif", val_slices="2"),
            tmp_path / "r",
            progress=False,
        )


@pytest.mark.slow
def test_valid_padding_training_runs_and_loss_is_finite(isbi_crops, tmp_path):
    model = tiny_config("valid", dropout=0.5)
    preset = Preset("v", "", model, tiny_preset(*isbi_crops, tile=60, epochs=1).train)
    result = train(preset, tmp_path / "v", progress=False)
    assert math.isfinite(result["train_loss"]) and math.isfinite(result["val_loss"])


@pytest.mark.slow
def test_paper_style_training_uses_cached_weight_maps(isbi_crops, tmp_path):
    from biounet.presets import PRESETS

    model = tiny_config("valid", dropout=0.5)
    aug = PRESETS["paper"].train.augment
    train_cfg = tiny_preset(*isbi_crops, tile=60, epochs=1, weight_map=True, augment=aug).train
    result = train(Preset("p", "", model, train_cfg), tmp_path / "p", progress=False)
    assert math.isfinite(result["train_loss"])
    cached = list((tmp_path / "p").glob("weight-maps-*.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as f:
        assert len(f.files) == 4 and f["w0"].shape == (96, 96) and f["w0"].max() > 5


@pytest.mark.slow
def test_best_checkpoint_can_be_chosen_by_v_rand(isbi_crops, tmp_path):
    preset = tiny_preset(*isbi_crops, epochs=3, select_by="v_rand", isbi_every=2)
    result = train(preset, tmp_path / "r", progress=False)
    history = load_checkpoint(tmp_path / "r" / "last.pt")["history"]
    assert [h.get("v_rand") is not None for h in history] == [False, True, True]  # every 2, last
    best = max((h for h in history if h.get("v_rand") is not None), key=lambda h: h["v_rand"])
    assert result["best_epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == best["epoch"]


@pytest.mark.slow
def test_best_checkpoint_by_training_loss_ignores_the_validation_slices(isbi_crops, tmp_path):
    preset = tiny_preset(*isbi_crops, epochs=4, select_by="train_loss")
    result = train(preset, tmp_path / "r", progress=False)
    history = load_checkpoint(tmp_path / "r" / "last.pt")["history"]
    assert all(h.get("val_loss") is not None for h in history)  # validation still watched
    best = min(history, key=lambda h: h["train_loss"])
    assert result["best_epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == best["epoch"]
    by_val = min(history, key=lambda h: h["val_loss"])
    if by_val["epoch"] != best["epoch"]:  # the two rules disagree here: which one ruled
        assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] != by_val["epoch"]


def test_best_checkpoint_can_be_the_last_epoch(isbi_crops, tmp_path, monkeypatch):
    import importlib

    from biounet.runs import summary

    module = importlib.import_module("biounet.train")  # biounet.train is also the function

    losses = ((1, 0.1), (2, 0.5), (3, 0.9))
    rows = [{"epoch": e, "train_loss": loss, "seconds": 1.0} for e, loss in losses]
    assert summary(rows, "train_loss")["best_epoch"] == 1
    assert summary(rows, "last")["best_epoch"] == 3
    # a training loss that rises every step: by training loss the first epoch would win
    calls = []
    loss_fn = module.segmentation_loss

    def rising(*args, **kwargs):
        calls.append(1)
        return loss_fn(*args, **kwargs) + 100.0 * len(calls)

    monkeypatch.setattr(module, "segmentation_loss", rising)
    preset = tiny_preset(*isbi_crops, epochs=2, select_by="last", val_every=0)
    result = train(preset, tmp_path / "r", progress=False)
    history = load_checkpoint(tmp_path / "r" / "last.pt")["history"]
    assert history[0]["train_loss"] < history[1]["train_loss"]
    assert result["best_epoch"] == 2
    best, last = (load_checkpoint(tmp_path / "r" / f"{n}.pt") for n in ("best", "last"))
    assert best["epoch"] == last["epoch"] == 2
    for k, v in last["model"].items():
        assert torch.equal(best["model"][k], v), k


def test_export_keeps_configuration_and_weights_only(isbi_crops, tmp_path):
    from dataclasses import replace

    from biounet.checkpoint import export_model

    train(tiny_preset(*isbi_crops, epochs=2), tmp_path / "r", progress=False)
    shipped = export_model(tmp_path / "r" / "best.pt", tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(loaded) == {"format_version", "preset", "model", "epoch", "step",
                           "trained_seconds", "log"}  # fmt: skip
    assert loaded["epoch"] == shipped["epoch"] and loaded["log"]["epoch"] == loaded["epoch"]
    a, _ = model_from_checkpoint(tmp_path / "r" / "best.pt")
    b, preset = model_from_checkpoint(tmp_path / "m.pt")
    assert preset.name == "tiny"
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert (tmp_path / "m.pt").stat().st_size < (tmp_path / "r" / "best.pt").stat().st_size
    # exported again with a new post-processing setting: the training record stays
    again = export_model(tmp_path / "m.pt", tmp_path / "m2.pt", min_size=7)
    assert (again["trained_seconds"], again["log"]) == (loaded["trained_seconds"], loaded["log"])
    assert loaded["trained_seconds"] > 0 and again["preset"]["inference"]["min_size"] == 7
    stored = model_from_checkpoint(tmp_path / "m2.pt")[1].inference
    assert stored == replace(preset.inference, min_size=7)  # the other settings stay


@pytest.mark.slow
def test_weight_averaging_is_saved_resumed_and_used_for_prediction(isbi_crops, tmp_path):
    from biounet.checkpoint import export_model

    preset = tiny_preset(*isbi_crops, epochs=3, ema=0.9)
    train(preset, tmp_path / "a", progress=False, stop_after=2)
    train(None, tmp_path / "a", resume=True, progress=False)
    train(preset, tmp_path / "b", progress=False)  # uninterrupted twin
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in b["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k  # the resume restored the average
    raw = b["model"]["inc.0.weight"]
    averaged = b["ema"]["module.inc.0.weight"]
    assert not torch.equal(raw, averaged)
    model, _ = model_from_checkpoint(tmp_path / "b" / "last.pt")
    assert torch.equal(model.state_dict()["inc.0.weight"], averaged)
    shipped = export_model(tmp_path / "b" / "last.pt", tmp_path / "m.pt")
    assert "ema" not in shipped and torch.equal(shipped["model"]["inc.0.weight"], averaged)
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\), got 1"):
        TrainConfig(ema=1)


def test_a_diverging_run_stops_with_one_clear_line(isbi_crops, tmp_path, capsys):
    images, labels = isbi_crops
    out = tmp_path / "run"
    diverged = r"training loss became (nan|inf).*epoch 1.*lower --lr"
    with pytest.raises(ValueError, match=diverged):
        train(tiny_preset(images, labels, optimizer="sgd", lr=1e12, momentum=0.99), out,
              progress=False)  # fmt: skip
    assert not (out / "last.pt").exists()  # nothing NaN was saved
    refusal(["train", "--images", str(images), "--labels", str(labels), "--lr", "1e12",
             "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "2", "--tile", "64",
             "--out", str(tmp_path / "cli"), "--no-progress", "--val-slices", "none"], capsys,
            "diverged; lower --lr")  # fmt: skip


def test_weight_average_warms_up_and_then_keeps_its_decay():
    from biounet.train import ema_decay, make_ema

    assert ema_decay(0.999, 0) == pytest.approx(0.1) and ema_decay(0.999, 90) == 0.91
    assert ema_decay(0.999, 8990) == 0.999 and ema_decay(0.9, 200) == 0.9
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(model, 0.95)
    rng = np.random.default_rng(0)
    expected = None
    for n in range(400):
        w = torch.as_tensor(rng.normal(size=(2, 3)), dtype=torch.float32)
        model[0].weight.data.copy_(w)
        ema.update_parameters(model)
        d = min(0.95, (1 + n) / (10 + n))
        expected = w.double() if expected is None else d * expected + (1 - d) * w.double()
    got = ema.module[0].weight.double()
    assert torch.allclose(got, expected, atol=1e-5)
    assert ema.module[1].num_batches_tracked.dtype == torch.int64
    assert make_ema(model, 0) is None


def three_class_set(folder, n=8, size=64, seed=0):
    """A TIFF stack pair of ``n`` noisy images (float32) holding squares (class 1, bright)
    and discs (class 2, dimmer, drawn over the squares) on class 0: (images, masks) paths."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        m = np.zeros((size, size), np.uint8)
        for _ in range(3):
            y, x, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 8))]
            m[max(0, y - r) : y + r, max(0, x - r) : x + r] = 1
            y, x = rng.integers(8, size - 8, 2)
            m[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 2
        img = rng.normal(0, 0.3, (size, size)) + np.array([0.0, 3.0, 1.5])[m]
        images.append(img.astype(np.float32))
        masks.append(m)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "img.tif", np.stack(images))
    tifffile.imwrite(folder / "lab.tif", np.stack(masks))
    return folder / "img.tif", folder / "lab.tif"


@pytest.mark.slow
def test_three_classes_found_in_the_masks_train_to_a_high_mean_iou(tmp_path):
    from biounet.dataset import auto_validation
    from biounet.presets import FAST, customise

    img, lab = three_class_set(tmp_path / "data")
    small = replace(FAST, model=replace(FAST.model, base_channels=8, depth=2))
    preset = customise(small, images=img, labels=lab, tile=64, batch_size=4, epochs=2,
                       steps_per_epoch=20, time_limit=0, precision="fp32", isbi_every=0,
                       lr=2e-2)  # fmt: skip
    assert preset.train.val_slices == "auto" and preset.model.out_channels == 2
    preset = preset.with_train(augment=AugmentConfig(), warmup_steps=0)  # flips, quarter turns
    result = train(preset, tmp_path / "run", progress=False)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["out_channels"] == 3  # the classes found, stored for predict
    held = auto_validation(8, preset.train.seed)
    assert len(held) == 1 and cfg["train"]["val_slices"] == str(held[0])  # stored as chosen
    model, stored = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert stored.model.out_channels == 3 and model.head.out_channels == 3
    assert result["val_mean_iou"] > 0.7
    log_csv = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert "val_mean_iou" in log_csv[0].split(",")


def test_fine_tuning_starts_from_the_shipped_models_weights(dsb_crops, tmp_path, monkeypatch):
    import importlib

    from biounet.checkpoint import inference_weights
    from biounet.presets import customise, init_preset

    class Stop(Exception):
        pass

    first, configs = {}, []

    def stop(learner, *args, **kwargs):  # the weights that the first step would update
        first.update({k: v.detach().clone() for k, v in learner.model.state_dict().items()})
        first["lr"] = learner.optimizer.param_groups[0]["lr"]
        # the run's stored configuration, read while the run is live: a new run that
        # fails leaves no folder
        configs.extend(json.loads(p.read_text()) for p in tmp_path.glob("*/config.json"))
        raise Stop

    train_module = importlib.import_module("biounet.train")  # the module, not the function
    monkeypatch.setattr(train_module, "_train_epoch", stop)
    shipped = load_checkpoint("models/dsb2018-nuclei.pt")
    base = init_preset("models/dsb2018-nuclei.pt")
    preset = customise(base, images=dsb_crops[0], labels=dsb_crops[1], tile=32, batch_size=2,
                       precision="fp32")  # fmt: skip
    assert preset.model == Preset.from_dict(shipped["preset"]).model
    assert preset.train.val_slices == "auto" and preset.train.init == "models/dsb2018-nuclei.pt"
    with pytest.raises(Stop):
        train(preset, tmp_path / "same", progress=False)
    weights = inference_weights(shipped)
    assert set(first) - {"lr"} == set(weights)
    for k, v in weights.items():
        assert torch.equal(first[k], v), k
    assert [c["train"]["init"] for c in configs] == ["models/dsb2018-nuclei.pt"]
    assert not (tmp_path / "same").exists()

    # another class count: the output layer alone starts afresh, with a notice
    first.clear()
    two = customise(base, images=dsb_crops[0], labels=dsb_crops[1], target="binary", tile=32,
                    precision="fp32")  # fmt: skip
    assert two.model.out_channels == 2
    with pytest.raises(Stop):
        train(two, tmp_path / "two", progress=False)
    fresh = UNet(two.model)
    fresh.reset_parameters(generator=torch.Generator().manual_seed(two.train.seed))
    for k, v in weights.items():
        if k.startswith("head."):
            assert first[k].shape[0] == 2 and torch.equal(first[k], fresh.state_dict()[k])
        else:
            assert torch.equal(first[k], v), k


def test_fine_tuning_refuses_another_channel_count_and_non_models(isbi_crops, tmp_path):
    from biounet.checkpoint import save_checkpoint
    from biounet.presets import init_preset

    two = Preset("two", "", replace(TINY, in_channels=2), TrainConfig())
    save_checkpoint(tmp_path / "two.pt", {"preset": two.to_dict(),
                                          "model": UNet(two.model).state_dict()})  # fmt: skip
    preset = tiny_preset(*isbi_crops, init=str(tmp_path / "two.pt"))
    preset = replace(preset, model=two.model)
    with pytest.raises(InputError, match=r"two\.pt: the model takes 2 input channels, the "
                       r"images have 1$"):  # fmt: skip
        train(preset, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    other = tiny_preset(*isbi_crops, init=str(tmp_path / "two.pt"))  # another network
    with pytest.raises(InputError, match=r"two\.pt: the model takes 2 input channels"):
        train(other, tmp_path / "run", progress=False)
    (tmp_path / "not.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"not\.pt: not a readable biounet checkpoint \(not a "
                       r"PyTorch file\)"):  # fmt: skip
        init_preset(str(tmp_path / "not.pt"))
    # a pickle of Python objects is never unpickled (weights_only=True), and torch's advice
    # to load it with weights_only=False is not passed on
    torch.save({"model": {}, "preset": {}, "note": Fraction(1, 3)}, tmp_path / "obj.pt")
    with pytest.raises(InputError, match=r"obj\.pt: not a readable biounet checkpoint \(it "
                       r"holds Python objects beside tensors, which are never loaded\)$"):
        init_preset(str(tmp_path / "obj.pt"))


def test_customise_keeps_data_specific_splits_for_the_presets_own_data_only():
    from biounet.presets import BLOG, FAST, NUCLEI, customise

    assert customise(FAST).train.val_slices == "25-29"  # the bundled ISBI stacks
    assert customise(FAST, images="mine", labels="m").train.val_slices == "auto"
    assert customise(FAST, images="mine", labels="m", val_slices="0-2").train.val_slices == "0-2"
    blog = customise(BLOG, images="mine", labels="m")
    assert (blog.train.val_slices, blog.train.train_slices) == ("auto", None)
    own = customise(NUCLEI, images=NUCLEI.train.images, labels=NUCLEI.train.labels)
    assert own.train.val_slices == NUCLEI.train.val_slices
    assert customise(FAST, classes=4).model.out_channels == 4
    assert customise(BLOG, classes=2).model.out_channels == 1  # a sigmoid stays one
    assert customise(NUCLEI, target="mask", classes=3).model.out_channels == 3
    assert TrainConfig().val_slices == "auto"


@pytest.mark.slow
def test_ignored_pixels_train_and_stay_out_of_the_validation_scores(isbi_crops, tmp_path):
    from biounet import metrics
    from biounet.dataset import Data
    from biounet.labels import IGNORE_INDEX
    from biounet.tiling import predict
    from biounet.validation import validate

    images, labels = (tifffile.imread(p) for p in isbi_crops)
    partial = labels.copy()
    partial[:, :30] = 7  # the top 30 rows are not labelled
    tifffile.imwrite(tmp_path / "partial.tif", partial)
    preset = tiny_preset(isbi_crops[0], tmp_path / "partial.tif", ignore_label=7,
                         weight_map=True, dice=0.5, epochs=1)  # fmt: skip
    result = train(preset, tmp_path / "run", progress=False)
    assert math.isfinite(result["train_loss"]) and math.isfinite(result["val_loss"])

    model, _ = model_from_checkpoint(tmp_path / "run" / "last.pt")
    masks = [np.where(m == 255, 1, 0).astype(np.uint8) for m in labels[4:]]
    for m in masks:
        m[:30] = IGNORE_INDEX
    data = Data([], [], list(images[4:]), masks, ["4", "5"])
    scores, _ = validate(model, data, "fp32", isbi=False)
    probs = [predict(model, img, precision="fp32") for img in images[4:]]
    keep = [m != IGNORE_INDEX for m in masks]
    triples = list(zip(probs, masks, keep, strict=True))
    expected = np.mean([metrics.pixel_error(p[k], m[k]) for p, m, k in triples])
    assert scores["val_pixel_error"] == pytest.approx(expected)
    iou = np.mean([metrics.iou(p[k] > 0.5, m[k]) for p, m, k in triples])
    assert scores["val_iou"] == pytest.approx(iou)
    isbi = validate(model, data, "fp32", isbi=True)[0]  # not labelled: reference background
    assert 0 <= isbi["v_rand"] <= 1 and isbi["val_pixel_error"] == scores["val_pixel_error"]
    # labelled, the same pixels would count
    labelled = [np.where(k, m, 0).astype(np.uint8) for m, k in zip(masks, keep, strict=True)]
    assert validate(model, replace(data, val_masks=labelled), "fp32", isbi=False)[0] != scores


@pytest.mark.slow
def test_tensorboard_gets_the_epoch_scalars_and_the_validation_panels(isbi_crops, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    img, lab = isbi_crops
    run = tmp_path / "run"
    train(tiny_preset(img, lab, epochs=2, steps_per_epoch=1, tensorboard=True), run,
          progress=False)  # fmt: skip
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    rows = list(csv.DictReader((run / "log.csv").open()))
    for name in ("train_loss", "lr", "val_loss", "val_pixel_error", "v_rand", "v_info"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [1, 2], name
        assert [s.value for s in scalars] == pytest.approx([float(r[name]) for r in rows],
                                                           rel=1e-6), name  # fmt: skip
    assert "validation" in tags["images"]
    assert len(events.Images("validation")) == 2


def test_no_tensorboard_directory_unless_asked(isbi_crops, tmp_path):
    img, lab = isbi_crops
    train(tiny_preset(img, lab, epochs=1, steps_per_epoch=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(
    isbi_crops, tmp_path, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    img, lab = isbi_crops
    with pytest.raises(InputError, match=r"--tensorboard needs the tensorboard package: pip "
                       r"install 'biounet\[tensorboard\]'"):  # fmt: skip
        train(tiny_preset(img, lab, epochs=1, tensorboard=True), tmp_path / "run",
              progress=False)  # fmt: skip
    assert not (tmp_path / "run").exists()
