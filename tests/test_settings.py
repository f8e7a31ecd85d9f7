"""Settings declared once (biounet.settings): flags, validation, --resume's guard, listings
and forms all come from the dataclass fields' declarations."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

import pytest
from conftest import refusal

from biounet import settings
from biounet.cli import INFERENCE, PREDICT, TRAIN, build_parser
from biounet.config import (
    AugmentConfig,
    InferenceConfig,
    PredictOptions,
    Preset,
    TileOptions,
    TrainConfig,
)
from biounet.model import ModelConfig
from biounet.presets import FAST, NUCLEI, customise, describe

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
CONFIGS = (ModelConfig, AugmentConfig, TrainConfig, InferenceConfig, PredictOptions,
           TileOptions)
# flags that are no setting: which preset, where the run goes, how it shows progress
STRUCTURAL = {"--preset", "--out", "--resume", "--no-progress", "--format", "--author",
              "--license", "--cite", "--sample", "--about"}  # fmt: skip


def _options(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[command]._actions for o in a.option_strings
            if o.startswith("--") and o != "--help" and not o.startswith("--no-")}  # fmt: skip


def test_every_field_of_every_configuration_is_a_declared_setting():
    for cls in CONFIGS:
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(f.type) and f.name != "augment":
                assert settings.about(f) is not None, f"{cls.__name__}.{f.name}"
                assert settings.about(f).help, f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("command, declared", [
    ("train", TRAIN), ("predict", PREDICT + INFERENCE), ("export", INFERENCE)])  # fmt: skip
def test_the_command_flags_are_the_declared_settings_and_nothing_else(command, declared):
    flags = {f.flag for f in declared}
    assert flags <= _options(command) and _options(command) - flags <= STRUCTURAL
    for f in declared:  # each declaration says which commands take it
        assert command in f.setting.commands or (command == "export" and f in INFERENCE)


def test_a_flag_default_is_not_given_so_the_preset_or_model_keeps_its_own():
    args = build_parser().parse_args(["train"])
    assert settings.given(args, TRAIN) == {}
    assert customise(NUCLEI, **settings.given(args, TRAIN)) == NUCLEI
    args = build_parser().parse_args(["predict", "m.pt", "x.tif"])
    given = settings.sections(PREDICT, settings.given(args, PREDICT))
    assert PredictOptions(**given["options"]) == PredictOptions()
    assert TileOptions(**given["tiles"]) == TileOptions()  # the flags' defaults are its own


def test_flags_land_in_their_sections_and_conversions_apply():
    args = build_parser().parse_args(["train", "--zoom", "0.3", "--invert", "yes", "--lr",
                                      "0.01", "--invert-tiles", "0.5", "--no-weight-map"])
    p = customise(FAST, **settings.given(args, TRAIN))
    assert (p.train.augment.scale, p.train.augment.scale_range) == (True, 0.3)
    assert p.train.augment.invert == 0.5 and p.train.lr == 0.01 and not p.train.weight_map
    assert p.model.normalization == "zscore-invert"
    assert p.train.augment.elastic == FAST.train.augment.elastic  # the rest is the preset's
    off = customise(p, zoom=0)
    assert not off.train.augment.scale and off.train.augment.scale_range == 0.3
    with pytest.raises(TypeError, match="no train flag bogus"):
        customise(FAST, bogus=1)


@pytest.mark.parametrize("cls, name, value, message", [
    (TrainConfig, "epochs", 0, "epochs must be >= 1, got 0"),
    (TrainConfig, "epochs", 2.5, "epochs must be >= 1, got 2.5"),
    (TrainConfig, "lr", 0, "lr must be > 0, got 0"),
    (TrainConfig, "time_limit", math.inf, "time_limit must be >= 0 minutes, got inf"),
    (TrainConfig, "classes", 256, "classes must be in 2..255, got 256"),
    (TrainConfig, "optimizer", "lbfgs",
     "optimizer must be one of ('sgd', 'adam', 'adamw'), got 'lbfgs'"),
    (AugmentConfig, "contrast", 1, r"contrast must be in [0, 1), got 1"),
    (ModelConfig, "depth", 9, "depth must be in 1..8, got 9"),
    (TileOptions, "overlap", 1.0, "overlap must be in [0, 1), got 1.0"),
    (InferenceConfig, "tta", "yes", "tta must be True or False, got 'yes'"),
])  # fmt: skip
def test_one_rule_per_setting_states_itself_in_the_error(cls, name, value, message):
    with pytest.raises(ValueError) as e:
        cls(**{name: value})
    assert str(e.value) == message
    settings.check(cls, name, getattr(cls(), name))  # the default passes its own rule


def test_resume_may_change_only_the_settings_declared_so(tmp_path, capsys):
    assert {f.flag for f in TRAIN if f.setting.resume} == {"--epochs", "--time-limit",
                                                           "--device", "--compile"}  # fmt: skip
    err = refusal(["train", "--resume", str(tmp_path), "--lr", "0.1", "--zoom", "0.2"], capsys)
    assert err == "biounet: error: --resume keeps the run's settings; drop --lr, --zoom"


def test_the_info_listing_shows_every_declared_setting_with_its_value():
    flat = " ".join(" ".join(describe(NUCLEI)).split())
    for section, label, value in settings.listing(NUCLEI):
        assert f"{label} {value}" in flat, (section, label)
    assert describe(NUCLEI, as_dict=True)["train"] == dataclasses.asdict(NUCLEI.train)
    assert Preset.from_dict(NUCLEI.to_dict()) == NUCLEI  # config.json round trip


def test_a_form_for_inference_settings_is_built_from_the_declarations(qtbot):
    from magicgui import widgets

    options = settings.form_options(InferenceConfig)
    assert set(options) == {f.name for f in dataclasses.fields(InferenceConfig)}
    form = widgets.Container(widgets=[widgets.create_widget(name=name, **o)
                                      for name, o in options.items()])  # fmt: skip
    qtbot.addWidget(form.native)
    values = {w.name: w.value for w in form}
    assert values["threshold"] == 0.5 and values["tta"] is False
    assert form.method.choices == ("auto", "components", "binary", "contour")
    assert (form.threshold.min, form.threshold.max) == (0, 1)
    assert form.min_size.min == 0
    form.threshold.value = 0.7
    assert InferenceConfig(**{w.name: w.value for w in form}).threshold == 0.7


def test_warmup_steps_is_a_train_flag():
    args = build_parser().parse_args(["train", "--warmup-steps", "12"])
    assert customise(FAST, **settings.given(args, TRAIN)).train.warmup_steps == 12
    with pytest.raises(ValueError, match="warmup_steps must be >= 0, got -1"):
        customise(FAST, warmup_steps=-1)
