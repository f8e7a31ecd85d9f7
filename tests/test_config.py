"""Configuration: InferenceConfig's checks and methods, the legacy checkpoint layout, and the
presets reshaped by ``biounet train``'s flags."""

import math
from dataclasses import fields, replace

import pytest

from biounet import InferenceConfig
from biounet.config import LEGACY_INFERENCE_KEYS, Preset, TrainConfig
from biounet.presets import FAST, NUCLEI, PRESETS, customise, get_preset


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", -0.1, r"threshold must be in \[0, 1\], got -0.1"),
        ("threshold", 1.5, r"threshold must be in \[0, 1\], got 1.5"),
        ("threshold", math.nan, r"threshold must be in \[0, 1\], got nan"),
        ("tta", 1, "tta must be True or False, got 1"),
        (
            "method",
            "watershed",
            r"method must be one of \('auto', 'components', 'binary', "
            r"'contour'\), got 'watershed'",
        ),  # fmt: skip
        ("min_size", -1, "min_size must be >= 0 pixels, got -1"),
        ("min_size", "7", "min_size must be >= 0 pixels, got '7'"),
        ("min_peak", 2, r"min_peak must be in \[0, 1\], got 2"),
        ("min_fraction", math.nan, r"min_fraction must be in \[0, 1\], got nan"),
        ("seed_threshold", 0, r"seed_threshold must be in \(0, 1\), got 0"),
        ("seed_threshold", 1, r"seed_threshold must be in \(0, 1\), got 1"),
        ("seed_dynamics", 1, r"seed_dynamics must be in \[0, 1\), got 1"),
        ("split_solidity", -0.5, r"split_solidity must be in \[0, 1\], got -0.5"),
        ("split_depth", 0, "split_depth must be > 0 pixels, got 0"),
        ("split_depth", math.nan, "split_depth must be > 0 pixels, got nan"),
    ],
)
def test_each_bad_inference_value_is_one_line_naming_it(field, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        InferenceConfig(**{field: value})
    # the same check, in the caller's name for the field (the command line: its flag)
    with pytest.raises(ValueError, match=f"^--flag{message[len(field) :]}$"):
        InferenceConfig.check(field, value, label="--flag")


def test_the_limits_of_each_range_are_accepted():
    InferenceConfig(threshold=0, min_peak=1, min_fraction=1, seed_threshold=0.01,
                    seed_dynamics=0, split_solidity=1, split_depth=0.5, min_size=0)  # fmt: skip
    InferenceConfig(threshold=1, tta=True, method="contour", seed_dynamics=0.99)


def test_inference_defaults_are_the_settings_models_predicted_with_before():
    # the training configuration's former defaults: a checkpoint without them predicts the same
    assert InferenceConfig() == InferenceConfig(
        threshold=0.5, tta=False, method="auto", min_size=0, min_peak=0.0, min_fraction=0.0,
        seed_threshold=0.5, seed_dynamics=0.0, split_solidity=0.0, split_depth=3.0,
        diameter=0.0,
    )  # fmt: skip
    with pytest.raises(AttributeError):
        InferenceConfig().threshold = 0.3  # frozen


def test_training_configuration_holds_no_inference_setting():
    train = {f.name for f in fields(TrainConfig)}
    assert train.isdisjoint(LEGACY_INFERENCE_KEYS), train & set(LEGACY_INFERENCE_KEYS)
    # every inference setting that once lived in TrainConfig (method and diameter never did)
    assert set(LEGACY_INFERENCE_KEYS.values()) == {f.name for f in fields(InferenceConfig)} - {
        "method", "diameter"
    }


def test_the_instance_method_follows_the_target_unless_named():
    auto = InferenceConfig()
    assert auto.instance_method("mask", 2) == "components"
    assert auto.instance_method("mask", 1) == "components"
    assert auto.instance_method("binary", 2) == "binary"
    assert auto.instance_method("contour", 3) == "contour"
    assert InferenceConfig(method="binary").instance_method("mask", 2) == "binary"
    assert InferenceConfig(method="components").instance_method("contour", 3) == "components"
    with pytest.raises(ValueError, match="method 'contour' needs a model with 3 outputs .*got 2"):
        InferenceConfig(method="contour").instance_method("mask", 2)


def _legacy(preset: Preset, **train) -> dict:
    """``preset`` as a checkpoint written before InferenceConfig stored it: no "inference"
    part, its settings among the training keys under their old names."""
    d = preset.to_dict()
    inference = d.pop("inference")
    d["train"].update({old: inference[new] for old, new in LEGACY_INFERENCE_KEYS.items()})
    d["train"].update(train)
    return d


def test_a_legacy_configuration_migrates_to_the_same_inference_settings():
    legacy = _legacy(NUCLEI)
    assert "inference" not in legacy and legacy["train"]["foreground_threshold"] == 0.6
    migrated = Preset.from_dict(legacy)
    assert migrated == NUCLEI
    assert migrated.inference == InferenceConfig(
        threshold=0.6, tta=True, min_size=25, min_peak=0.9, min_fraction=0.3,
        seed_threshold=0.4, seed_dynamics=0.25, split_solidity=0.0, split_depth=4.0,
    )  # fmt: skip
    # keys written by older versions that lacked some of them: the defaults fill in
    older = _legacy(FAST)
    for key in ("tta", "min_object_fraction", "seed_dynamics"):
        del older["train"][key]
    older["train"]["min_object_size"] = 12
    assert Preset.from_dict(older).inference == InferenceConfig(min_size=12)
    # a stored value this version rejects names the field it now lives in
    with pytest.raises(ValueError, match=r"min_peak must be in \[0, 1\], got 3"):
        Preset.from_dict(_legacy(FAST, min_object_peak=3))


def test_every_preset_round_trips_through_its_dict():
    for preset in PRESETS.values():
        d = preset.to_dict()
        assert set(d) == {"name", "description", "model", "train", "inference"}
        assert Preset.from_dict(d) == preset
    # the stored part wins over stray legacy keys
    d = NUCLEI.to_dict()
    d["train"]["foreground_threshold"] = 0.2
    assert Preset.from_dict(d).inference.threshold == 0.6


def test_with_inference_replaces_given_settings_only():
    changed = FAST.with_inference(threshold=0.3, min_size=None)
    assert changed.inference == InferenceConfig(threshold=0.3)
    assert (changed.model, changed.train) == (FAST.model, FAST.train)


def test_customise_maps_the_train_flags_onto_a_preset():
    assert customise(FAST) == FAST  # no flag: the preset as it is
    assert customise(FAST, lr=None, zoom=None) == FAST
    binary = customise(FAST, target="binary")
    assert binary.train.weight_map and binary.model.out_channels == 2  # the paper's loss
    assert not customise(FAST, target="binary", weight_map=False).train.weight_map
    assert customise(FAST, target="contour").model.out_channels == 3
    assert customise(FAST, target="contour").train.weight_map is False
    assert customise(NUCLEI, target="mask").model.out_channels == 2  # 3 outputs, 2 classes
    assert customise(get_preset("blog"), target="binary").model.out_channels == 1  # sigmoid
    zoom = customise(FAST, zoom=0.2, lr=0.01)
    assert (zoom.train.augment.scale, zoom.train.augment.scale_range, zoom.train.lr) == (
        True, 0.2, 0.01)  # fmt: skip
    assert zoom.train.augment == replace(FAST.train.augment, scale=True, scale_range=0.2)
    off = customise(zoom, zoom=0)
    assert (off.train.augment.scale, off.train.augment.scale_range) == (False, 0.2)
    assert customise(NUCLEI, epochs=3).inference == NUCLEI.inference
    inv = customise(FAST, invert_tiles=0.5)
    assert inv.train == replace(FAST.train, augment=replace(FAST.train.augment, invert=0.5))
    assert customise(inv, invert_tiles=0).train == FAST.train
    assert customise(FAST, sample_by="area").train == replace(FAST.train, sample_by="area")
    with pytest.raises(ValueError, match="^sample_by must be one of .'image', 'area'., got 'px'$"):
        TrainConfig(sample_by="px")


def test_presets_carry_their_inference_settings():
    assert FAST.inference == InferenceConfig()
    assert (NUCLEI.inference.tta, NUCLEI.inference.threshold) == (True, 0.6)
    assert NUCLEI.inference.instance_method(NUCLEI.train.target, NUCLEI.model.out_channels) == (
        "contour"
    )


def test_exporting_a_legacy_checkpoint_with_new_settings_stores_todays_layout(tmp_path):
    from biounet.checkpoint import export_model, load_checkpoint, save_checkpoint
    from biounet.model import UNet

    tiny = replace(NUCLEI.model, depth=2, base_channels=4)
    legacy = _legacy(replace(NUCLEI, model=tiny))
    save_checkpoint(tmp_path / "old.pt", {"preset": legacy, "model": UNet(tiny).state_dict()})
    untouched = export_model(tmp_path / "old.pt", tmp_path / "same.pt")
    assert untouched["preset"] == legacy  # no new setting: the stored dict as it was
    export_model(tmp_path / "old.pt", tmp_path / "new.pt", min_size=7, tta=False)
    stored = load_checkpoint(tmp_path / "new.pt")["preset"]
    assert stored["inference"] == {**NUCLEI.to_dict()["inference"], "min_size": 7, "tta": False}
    assert set(stored["train"]).isdisjoint(LEGACY_INFERENCE_KEYS)
