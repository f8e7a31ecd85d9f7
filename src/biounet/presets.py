"""Named configurations: ``fast`` (the default), ``paper``, ``blog``, ``isbi`` and
``nuclei``; :func:`customise` reshapes one for ``biounet train``'s flags."""

from __future__ import annotations

import textwrap
from dataclasses import asdict, replace

from . import settings
from .checkpoint import load_checkpoint
from .config import HIGHER_IS_BETTER, AugmentConfig, InferenceConfig, Preset, TrainConfig
from .model import INVERT, ModelConfig, UNet, count_parameters, output_size
from .targets import NUM_CLASSES

# the flags of ``biounet train``: the settings of the network and of training that have one
TRAIN_FLAGS = settings.flags({"model": ModelConfig, "train": TrainConfig}, "train")

# The paper's augmentation: elastic deformation on a 3 x 3 grid with 10 px standard
# deviation, composed with rotation, shift, flips and gray-value changes.
PAPER_AUGMENT = AugmentConfig(
    flip=True, rot90=True, rotate=True, shift=True, elastic=True, elastic_grid=3,
    elastic_sigma=10.0, gray=True, interpolation="bicubic",
)  # fmt: skip

PAPER = Preset(
    name="paper",
    description=(
        "Ronneberger et al. 2015: unpadded convs 572 -> 388, no batch norm, dropout 0.5, "
        "2-class softmax weighted by the border weight map (w0 10, sigma 5), elastic "
        "deformation (3 x 3 grid, 10 px) + rotation + shift + flips + gray values, "
        "SGD momentum 0.99 at lr 0.001 (the paper gives no rate; 0.01 diverged in the first "
        "epoch), one large tile per batch"
    ),
    model=ModelConfig(
        in_channels=1,
        out_channels=2,
        depth=4,
        base_channels=64,
        padding="valid",
        batch_norm=False,
        dropout=0.5,
        upsample="transpose",
    ),
    train=TrainConfig(
        tile=572,
        batch_size=1,
        epochs=100,
        steps_per_epoch=25,
        optimizer="sgd",
        lr=0.001,  # 0.01 diverges (docs/results-isbi2012.md)
        momentum=0.99,
        weight_decay=0.0,
        schedule="constant",
        augment=PAPER_AUGMENT,
        weight_map=True,
        w0=10.0,
        sigma=5.0,
        val_slices="25-29",
    ),
)

BLOG = Preset(
    name="blog",
    description=(
        "The popular simplified U-Net: same padding 512 -> 512, batch norm after every conv, "
        "1 output + sigmoid + BCE, flips only, SGD lr 0.01 x0.1 every 30 epochs, 60 epochs"
    ),
    model=ModelConfig(
        in_channels=1,
        out_channels=1,
        depth=4,
        base_channels=64,
        padding="same",
        batch_norm=True,
        dropout=0.0,
        upsample="transpose",
    ),
    train=TrainConfig(
        tile=512,
        batch_size=1,
        epochs=60,
        steps_per_epoch=None,  # one pass over 28 slices
        optimizer="sgd",
        lr=0.01,
        momentum=0.99,
        weight_decay=5e-4,
        schedule="step",
        step_epochs=30,
        gamma=0.1,
        augment=AugmentConfig(flip=True, rot90=False),
        train_slices="0-27",
        val_slices="28-29",
    ),
)

FAST = Preset(
    name="fast",
    description=(
        "The CPU default: a 16-channel same-padding U-Net with batch norm, 256 x 256 tiles, "
        "the paper's elastic deformation + rotation + shift + flips + gray values (no weight "
        "map: see experiments/ablate_fast.py), AdamW with a cosine schedule, bf16 where the CPU "
        "has it; 30 epochs or as many as fit in 11.5 minutes (2 Zen 4 cores: all 30 in about "
        "9 minutes; 2 Zen 3 cores, fp32: 8); best.pt by training loss (slices 25-29 only "
        "watched)"
    ),
    model=ModelConfig(
        in_channels=1,
        out_channels=2,
        depth=4,
        base_channels=16,
        padding="same",
        batch_norm=True,
        dropout=0.0,
        upsample="transpose",
    ),
    train=TrainConfig(
        tile=256,
        batch_size=8,
        epochs=30,
        steps_per_epoch=30,
        optimizer="adamw",
        lr=2e-3,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="cosine",
        warmup_steps=30,
        time_limit=11.5,  # minutes: the main job, set-up and scoring included, within 15
        augment=PAPER_AUGMENT,
        val_slices="25-29",
        select_by="train_loss",  # the held-out slices are watched, never used for selection
    ),
)

ISBI = Preset(
    name="isbi",
    description=(
        "The shipped ISBI 2012 model (models/isbi2012.pt): the fast network at 32 channels, "
        "the paper's augmentation and border weight map, AdamW with a cosine schedule, "
        "100 x 30 steps of 8 x 256 x 256 tiles (about 1.8 hours on 2 Zen 4 cores with bf16) "
        "or as many as fit in 2.5 hours, "
        "weights averaged (EMA 0.999); slices 25-29 are watched, never used for model "
        "selection (best.pt: the averaged weights of the epoch with the lowest training loss)"
    ),
    model=replace(FAST.model, base_channels=32),
    train=replace(
        FAST.train,
        epochs=100,
        time_limit=150.0,
        weight_map=True,
        select_by="train_loss",
        isbi_every=10,
        ema=0.999,
    ),
)

NUCLEI = Preset(
    name="nuclei",
    description=(
        "Touching fluorescence nuclei (bundled DSB 2018 images, instance labels): the fast "
        "network with 3 outputs learning background / interior / boundary, the paper's "
        "border weight map computed from the instances plus half a soft Dice loss, the paper's "
        "augmentation, tiles drawn in proportion to each image's pixels, AdamW cosine, "
        "105 x 30 steps of 4 x 256 x 256 tiles or as many as fit "
        "in 15 minutes (2 Zen 4 cores with bf16: about 105; 2 Zen 3 cores in fp32: 27); "
        "8-view test-time averaging, instances by seeded watershed; the fixed held-out 20% "
        "is never trained on"
    ),
    # why each value: docs/results-nuclei.md, "The nuclei preset, value by value"
    model=replace(FAST.model, out_channels=3, normalization="zscore-bright"),
    train=replace(
        FAST.train,
        images="data/dsb2018-fluo/images",
        labels="data/dsb2018-fluo/labels",
        target="contour",
        val_slices="@data/splits/dsb2018-fluo-holdout.txt",
        batch_size=4,
        sample_by="area",
        epochs=105,
        time_limit=15.0,
        weight_map=True,
        dice=0.5,
        isbi_every=0,
        val_every=24,
        select_by="last",
    ),
    inference=InferenceConfig(
        threshold=0.6,
        tta=True,
        min_size=25,
        min_peak=0.9,
        min_fraction=0.3,
        seed_threshold=0.4,
        seed_dynamics=0.25,
        split_solidity=0.0,
        split_depth=4.0,
    ),
)

NUCLEI_SHIPPED = Preset(
    name="nuclei-shipped",
    description=(
        "The shipped nuclei model (models/dsb2018-nuclei.pt): the nuclei preset's network, "
        "loss, augmentation and post-processing, trained on all 497 bundled DSB 2018 "
        "fluorescence images (data/dsb2018-fluo and data/dsb2018-fluo-more) but the "
        "held-out 40 of data/splits/dsb2018-fluo-holdout.txt, which are watched, never "
        "trained on; 840 x 30 steps of 4 x 256 x 256 tiles (about 140 minutes on 2 Zen "
        "4 cores with bf16) or as many as fit in 150 minutes; best.pt = the last epoch"
    ),
    model=NUCLEI.model,
    train=replace(
        NUCLEI.train,
        images="data/dsb2018-fluo/images,data/dsb2018-fluo-more/images",
        labels="data/dsb2018-fluo/labels,data/dsb2018-fluo-more/labels",
        epochs=840,
        time_limit=150.0,
        val_every=45,
    ),
    inference=NUCLEI.inference,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (FAST, PAPER, BLOG, ISBI, NUCLEI, NUCLEI_SHIPPED)}
DEFAULT = "fast"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def customise(preset: Preset, **given) -> Preset:
    """``preset`` reshaped by ``biounet train``'s flags: ``given`` maps a flag's name
    (:data:`TRAIN_FLAGS` dests: ``lr``, ``zoom``, ``invert_tiles``, ...) to its value, None
    keeping the preset's.

    Other ``images`` than the preset's own make its held-out lists, which name its own
    data, fall back to ``val_slices="auto"`` and every other image for training, unless
    ``val_slices`` / ``train_slices`` are given. The binary target turns the paper's
    weighted loss on (``weight_map=True``) unless ``weight_map`` is given; the network gets
    as many outputs as the target (or ``classes``) needs (:func:`with_target_outputs`).
    """
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - {f.dest for f in TRAIN_FLAGS}
    if unknown:
        raise TypeError(f"customise: no train flag {', '.join(sorted(unknown))}")
    images = given.get("images")
    if images is not None and str(images) != preset.train.images:  # data of the user's own
        given.setdefault("val_slices", "auto")
        if "train_slices" not in given:
            preset = replace(preset, train=replace(preset.train, train_slices=None))
    if given.get("target") == "binary":
        given.setdefault("weight_map", True)
    return with_target_outputs(settings.changes(preset, TRAIN_FLAGS, given))


def with_target_outputs(preset: Preset) -> Preset:
    """The preset with as many network outputs as its target needs: the target's classes,
    or ``classes`` of the mask target (a 1-output sigmoid network stays as it is for two
    classes). Without ``classes`` a mask network's outputs may grow once its training
    masks are read (:func:`with_classes`)."""
    t, m, classes = preset.train.target, preset.model, preset.train.classes
    need = classes if t == "mask" and classes is not None else NUM_CLASSES[t]
    if m.out_channels == need or (t in ("mask", "binary") and need == 2 and m.out_channels == 1):
        return preset
    if t == "mask" and classes is None and m.out_channels > 2:  # e.g. an instance preset's
        need = 2  # 3 outputs, now 2 classes
    return replace(preset, model=replace(m, out_channels=need))


def with_classes(preset: Preset, classes: int) -> Preset:
    """The preset's network with ``classes`` softmax outputs where its masks hold more
    classes than it has outputs (found in the data); unchanged otherwise."""
    if classes <= max(2, preset.model.out_channels):
        return preset
    return replace(preset, model=replace(preset.model, out_channels=classes))


def init_preset(path: str, name: str | None = None) -> Preset:
    """The preset a run fine-tuning the model ``path`` starts from: the model's own (its
    network and its training configuration), or with ``name`` that preset's training and
    inference settings around the model's network. InputError naming ``path`` if it is not
    a biounet model."""
    model = Preset.from_dict(load_checkpoint(path)["preset"])
    base = model if name is None else replace(get_preset(name), model=model.model)
    return replace(base, train=replace(base.train, init=str(path)))


def describe(preset: Preset, as_dict: bool = False) -> list[str] | dict:
    """What ``biounet info`` shows of ``preset``: the network's size and shapes, then every
    setting by section, as declared (biounet.settings.listing); ``as_dict``: one dict
    (``info --json``)."""
    m, t = preset.model, preset.train
    facts = {"preset": preset.name, "description": preset.description,
             "parameters": count_parameters(UNet(m)), "input_size": t.tile,
             "output_size": output_size(t.tile, m.depth, m.padding),
             "padding": m.padding}  # fmt: skip
    if as_dict:
        return {**facts, **{k: asdict(getattr(preset, k)) for k in ("model", "train",
                                                                    "inference")}}  # fmt: skip
    invert = next(k for k, v in INVERT.items() if v == m.normalization)
    best = "the last epoch" if t.select_by == "last" else (
        f"{'highest' if t.select_by in HIGHER_IS_BETTER else 'lowest'} "
        f"{t.select_by.replace('_', ' ')}")  # fmt: skip
    lines = [f"{preset.name}: {preset.description}",
             f"  parameters   {facts['parameters']:,}",
             f"  input        {m.in_channels} channel{'s' * (m.in_channels != 1)}"
             + (f" (--channels {t.channels})" if t.channels else "")
             + (f", --invert {invert}" if invert != "no" else "")
             + (f", objects of {m.diameter:.3g} px (median diameter)" if m.diameter else ""),
             f"  tile         {t.tile} -> {facts['output_size']} ({m.padding} padding, "
             f"depth {m.depth}), network {'/'.join(map(str, m.widths))} channels",
             f"  best.pt      {best}"]  # fmt: skip
    if t.world_size > 1:
        lines.append(f"  ranks        {t.world_size} (torchrun), global batch "
                     f"{t.batch_size * t.world_size}")  # fmt: skip
    sections: dict[str, list[str]] = {}
    for section, label, value in settings.listing(preset):
        sections.setdefault(section, []).append(f"{label} {value}")
    for section, items in sections.items():
        lines += textwrap.wrap(", ".join(items), 100, initial_indent=f"  {section:<14}",
                               subsequent_indent=" " * 16, break_on_hyphens=False)  # fmt: skip
    return lines
