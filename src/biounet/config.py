"""Configuration dataclasses: the network (model.py's ModelConfig), training
(:class:`TrainConfig`, :class:`AugmentConfig`), segmentation (:class:`InferenceConfig`)
and one prediction call (:class:`PredictOptions`). Presets (presets.py) are named
instances of :class:`Preset`.

Every field is declared once, by :func:`biounet.settings.setting`: its rule, its help and
the commands whose flags set it. The command line, validation, ``--resume``'s guard,
``biounet info`` and the napari forms all read these declarations.

A run directory stores ``Preset.to_dict()`` as ``config.json``; ``Preset.from_dict`` reads
it back, so every run can be reproduced exactly.
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace

from .io import parse_channels
from .labels import MAX_CLASSES
from .model import INVERT, INVERT_RULE, ModelConfig
from .settings import (
    BOOLEAN,
    Rule,
    above,
    at_least,
    integers,
    one_of,
    optional,
    setting,
    validate,
    within,
)
from .settings import check as check_setting

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
SELECT_BY = ("train_loss", "val_loss", "val_pixel_error", "v_rand", "v_info", "last")
HIGHER_IS_BETTER = ("v_rand", "v_info")
TARGETS = ("mask", "binary", "contour")  # see targets.py
CLASS_BALANCES = ("image", "dataset", "none")  # see weights.background_weights
SAMPLE_BY = ("image", "area")  # see TrainConfig.sample_by
ENGINES = ("auto", "torch", "onnxruntime")  # how predict runs a checkpoint (exported.py)
MAX_FOUND_CLASSES = 16  # more classes than this are not guessed from masks: give classes
DEFAULT_OVERLAP = 0.25  # tile overlap of same-padding networks, a share of the tile

FINITE = Rule(lambda v: v is None or (isinstance(v, numbers.Real) and math.isfinite(v)),
               "a finite number")  # fmt: skip
TEXT = Rule(lambda v: v is None or isinstance(v, str), "text")
CHANNELS_HELP = (
    "the image channels the network sees: indices such as 1 or 0,2 (in that order; one "
    "index gives a gray image), or rgb (colour kept as 3 channels, alpha dropped). Default: "
    "as stored: a TIFF's C axis (ImageJ hyperstack or OME metadata) gives channels, colour "
    "is made gray, and TIFF pages without axes metadata are slices, not channels"
)
INVERT_HELP = INVERT_RULE


def _zoom(r: float, augment) -> dict:
    """--zoom R: random zoom by a factor log-uniform in [1/(1+R), 1+R]; 0 turns it off."""
    return {"scale": r != 0, "scale_range": r if r != 0 else augment.scale_range}


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms applied identically to a training tile, its label and its weights.

    Geometric transforms (rotation, shift, elastic deformation, flips) are composed into one
    sampling grid, so each tile is resampled once. Strengths are in pixels and degrees;
    gray values act on the normalised image (zero mean, unit variance).
    """

    flip: bool = setting(True, rule=BOOLEAN, help="random left-right / up-down mirroring")
    rot90: bool = setting(True, rule=BOOLEAN,
                          help="random multiples of 90 degrees (exact, no resampling)")
    rotate: bool = setting(False, rule=BOOLEAN, help="rotation by any angle")
    rotate_degrees: float = setting(180.0, rule=at_least(0),
                                    help="angle uniform in [-rotate_degrees, rotate_degrees]")
    shift: bool = setting(False, rule=BOOLEAN, help="random translation")
    shift_px: float = setting(16.0, rule=at_least(0),
                              help="per axis, uniform in [-shift_px, shift_px]")
    scale: bool = setting(False, rule=BOOLEAN, help="random zoom (objects drawn larger or "
                          "smaller)")  # fmt: skip
    scale_range: float = setting(
        0.25, rule=at_least(0), commands=("train",), flag="--zoom", metavar="R",
        to_field=_zoom, label="zoom",
        help="random zoom by a factor log-uniform in [1/(1+R), 1+R] (0: off)")
    elastic: bool = setting(False, rule=BOOLEAN, help="the paper's elastic deformation")
    elastic_grid: int = setting(3, rule=integers(2), help="coarse grid of random displacement "
                                "vectors (paper: 3 x 3)")  # fmt: skip
    elastic_sigma: float = setting(10.0, rule=at_least(0), help="their standard deviation in "
                                   "pixels (paper: 10)")  # fmt: skip
    gray: bool = setting(False, rule=BOOLEAN, help="gray-value variation")
    brightness: float = setting(0.1, rule=at_least(0), help="added offset, uniform in [-b, b] "
                                "(image std units)")  # fmt: skip
    contrast: float = setting(0.1, rule=within(0, 1, "[)"),
                              help="factor uniform in [1 - c, 1 + c]")
    gamma: float = setting(0.2, rule=at_least(0), help="exponent log-uniform in "
                           "[1 / (1 + g), 1 + g] on the tile's range")  # fmt: skip
    invert: float = setting(
        0.0, rule=within(0, 1, text="a probability in [0, 1]"), commands=("train",),
        flag="--invert-tiles", metavar="P", label="contrast inversion",
        help="augmentation: negate a training tile's gray values with probability P "
        "(contrast inversion: bright objects on a dark background become dark on bright), "
        "after the other gray-value changes; 0: off")
    interpolation: str = setting("bicubic", rule=one_of(("bicubic", "bilinear")),
                                 help="image resampling")

    def __post_init__(self):
        validate(self)

    @property
    def resamples(self) -> bool:
        """True if tiles are resampled (rotation, shift, zoom or elastic deformation is on)."""
        return self.rotate or self.shift or self.scale or self.elastic

    def margin(self, tile: int) -> int:
        """Extra context (pixels per side) a ``tile`` x ``tile`` crop needs so that the
        transformed tile stays inside the cut region (rotation, zoom out, shift, 4 sigma of
        elastic displacement)."""
        if not self.resamples:
            return 0
        m = 2.0  # interpolation support
        half = (tile - 1) / 2  # the tile's corner reads the source this far from the centre
        reach = (
            half
            * (math.sqrt(2) if self.rotate else 1.0)
            * (1 + self.scale_range if self.scale else 1.0)
        )
        m += reach - half
        if self.shift:
            m += self.shift_px
        if self.elastic:
            m += 4 * self.elastic_sigma
        return int(math.ceil(m))


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Lengths are in pixels, rates per optimiser step."""

    images: str | None = setting(None, rule=TEXT, commands=("train",), form=False,
                                 help="image stack (TIFF) or folder of PNG/TIFF images, or "
                                 "several folders separated by commas (default: the bundled "
                                 "ISBI 2012 train-volume)")  # fmt: skip
    labels: str | None = setting(None, rule=TEXT, commands=("train",), form=False,
                                 help="mask stack or folder of masks paired by file name, "
                                 "or several folders separated by commas (default: the "
                                 "bundled ISBI 2012 train-labels)")  # fmt: skip
    target: str = setting(
        "mask", rule=one_of(TARGETS), commands=("train",),
        help="mask: labels are class masks (ISBI 0/255); binary / contour: labels are instance "
        "images, learned as foreground with carved borders (the paper) / background-interior-"
        "boundary (targets.py)")
    boundary_width: int = setting(1, rule=integers(1), help="contour target: the boundary "
                                  "class's width per object (pixels)")  # fmt: skip
    touch_width: int = setting(
        0, rule=integers(0), commands=("train",), metavar="PX",
        help="contour target: boundary class this many pixels deep where objects touch or "
        "come within PX pixels (city-block, across background gaps too; 0: off)")
    val_slices: str = setting(
        "auto", rule=TEXT, commands=("train",), form=False,
        help="held-out images: auto (a seeded 15% of them, at least one; the preset's own "
        "list for its bundled data), indices such as 25-29 or 28,29, none, or @FILE naming "
        "them; a run stores the chosen ones in config.json")
    train_slices: str | None = setting(None, rule=TEXT, commands=("train",), form=False,
                                       help="training slice indices (default: all others)")
    tile: int = setting(256, rule=integers(1), commands=("train",),
                        help="input tile edge in pixels; a valid input size of the model")
    batch_size: int = setting(8, rule=integers(1), commands=("train",),
                              help="tiles per step (per process under torchrun: the global "
                              "batch is this times the processes)")  # fmt: skip
    sample_by: str = setting(
        "image", rule=one_of(SAMPLE_BY), commands=("train",),
        help="draw training tiles from every image equally often, or in proportion to its "
        "pixels (for sets of very different image sizes)")
    epochs: int = setting(30, rule=integers(1), commands=("train",), resume=True,
                          help="at most this many epochs (see --time-limit)")
    steps_per_epoch: int | None = setting(None, rule=optional(integers(1)), commands=("train",),
                                          help="steps per epoch (default: one pass, ceil("
                                          "training images / batch size))")  # fmt: skip
    optimizer: str = setting("adamw", rule=one_of(OPTIMIZERS), help="the optimiser")
    lr: float = setting(2e-3, rule=above(0), commands=("train",), help="peak learning rate")
    momentum: float = setting(0.9, rule=at_least(0), help="SGD momentum (Adam: beta1)")
    weight_decay: float = setting(1e-4, rule=at_least(0), help="decoupled weight decay")
    schedule: str = setting("cosine", rule=one_of(SCHEDULES),
                            help="learning-rate schedule, per epoch")
    step_epochs: int = setting(30, rule=integers(1), help="step schedule: multiply the rate "
                               "by gamma every step_epochs epochs")  # fmt: skip
    gamma: float = setting(0.1, rule=at_least(0), help="step schedule: the factor")
    warmup_steps: int = setting(0, rule=integers(0), commands=("train",), metavar="N",
                                help="linear warm-up of the learning rate from 0 over N steps")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weight_map: bool = setting(False, rule=BOOLEAN, commands=("train",),
                               help="weight the loss by the paper's border weight map w(x)")
    w0: float = setting(10.0, rule=at_least(0), commands=("train",),
                        help="the weight map's border term w0 (paper: 10)")
    sigma: float = setting(5.0, rule=above(0),
                           help="the weight map's border width in pixels (paper: 5)")
    class_balance: str = setting(
        "image", rule=one_of(CLASS_BALANCES), commands=("train",),
        help="the weight map's w_c, the weight of background pixels: each image's own class "
        "frequencies (the paper), the training set's, or none")
    dice: float = setting(0.0, rule=at_least(0), commands=("train",), metavar="W",
                          help="add W x a soft Dice loss of the foreground (per tile) to the "
                          "cross entropy")  # fmt: skip
    ema: float = setting(
        0.0, rule=within(0, 1, "[)"), commands=("train",),
        help="keep an exponential moving average of the weights with this decay per step "
        "(e.g. 0.999); validation, best.pt and predict use it (0: off)")
    time_limit: float = setting(
        0.0, rule=at_least(0, " minutes"), commands=("train",), metavar="MIN", resume=True,
        help="minutes of training: plan as many epochs as fit (at most --epochs) and end the "
        "learning-rate schedule with them (0: no limit)")
    precision: str = setting("auto", rule=one_of(PRECISIONS), commands=("train",),
                             help="auto (bf16 where the hardware has it), bf16 or fp32")
    compile: bool = setting(False, rule=BOOLEAN, commands=("train",), resume=True,
                            help="train the network through torch.compile (compiled at the "
                            "first step; falls back to plain PyTorch, with a warning, where "
                            "compiling fails); a run may resume with or without it")  # fmt: skip
    device: str = setting("auto", rule=TEXT, commands=("train",), form=False, resume=True,
                          help="auto (default: cuda if present), cpu, cuda, cuda:N")
    seed: int = setting(0, rule=integers(0), commands=("train",), help="the run's random seed")
    select_by: str = setting(
        "val_loss", rule=one_of(SELECT_BY), commands=("train",), form=False,
        help="what best.pt minimises/maximises (train_loss keeps validation slices out of "
        "model selection; last: the last epoch)")
    isbi_every: int = setting(1, rule=integers(0), commands=("train",), form=False,
                              help="validation V_rand / V_info every N epochs (0: never)")
    val_every: int = setting(1, rule=integers(0), commands=("train",), form=False,
                             help="validate every N epochs (0: never)")
    label_threshold: float | None = setting(
        None, rule=FINITE, commands=("train",), form=False, metavar="T",
        help="binarise soft or anti-aliased masks: value > T is foreground (instance targets: "
        "the components of that mask)")
    ignore_label: int | None = setting(
        None, rule=optional(integers(0)), commands=("train",), form=False, metavar="V",
        help="pixels of mask value V are not labelled: no loss, left out of the weight map "
        "and of validation scores (V must not be a class)")
    classes: int | None = setting(
        None, rule=optional(integers(2, MAX_CLASSES)), commands=("train",), form=False,
        metavar="C",
        help="mask target: the masks hold classes 0..C-1, learned with a C-way softmax "
        "(default: found from the masks, largest class + 1, at least 2)")
    init: str | None = setting(
        None, rule=TEXT, commands=("train",), form=False, metavar="MODEL",
        help="start from the weights of MODEL (a shipped model or any checkpoint) with a fresh "
        "optimiser and schedule; its preset unless --preset is given (then that preset's "
        "training settings around the model's network)")
    channels: str | None = setting(None, rule=TEXT, commands=("train",), form=False, metavar="SPEC",
                                   help=CHANNELS_HELP + "; the network takes the channels "
                                   "read, and the model stores them")  # fmt: skip
    tensorboard: bool = setting(False, rule=BOOLEAN, commands=("train",), form=False,
                                negatable=False,
                                help="also write the epoch scalars and validation panels to "
                                "RUN/tensorboard/ (pip install biounet[tensorboard])")
    world_size: int = setting(1, rule=integers(1), help="processes the run trains on "
                              "(recorded: torchrun's WORLD_SIZE); batch_size is per "
                              "process")  # fmt: skip

    def __post_init__(self):
        for name in ("images", "labels", "init", "channels"):  # Paths and numbers are
            value = getattr(self, name)  # welcome, config.json stores text
            if value is not None:
                object.__setattr__(self, name, str(value))
        if self.channels is not None:
            parse_channels(self.channels)  # InputError for a spec that does not parse
        validate(self)
        if self.target != "contour" and (self.boundary_width != 1 or self.touch_width):
            raise ValueError(f"boundary_width and touch_width shape the contour target's boundary "
                             f"class; target {self.target!r} has none (got "
                             f"{self.boundary_width}, {self.touch_width})")  # fmt: skip


# How the network's probabilities become instance labels (instances.py): "components"
# (4-connected components of the foreground), "binary" (components grown back over the
# carved borders of the binary target), "contour" (seeded watershed of a 3-output model)
INSTANCE_METHODS = ("components", "binary", "contour")
METHODS = ("auto", *INSTANCE_METHODS)  # InferenceConfig.method
METHOD_FOR_TARGET = {"mask": "components", "binary": "binary", "contour": "contour"}
# the options only the seeded watershed reads
CONTOUR_OPTIONS = ("seed_threshold", "seed_dynamics", "split_solidity", "split_depth")
INFERENCE = ("predict", "export")  # inference settings: for one call, or stored in a model
DIAMETER = Rule(lambda v: v == "auto" or (not isinstance(v, str | bool) and 0 <= v < math.inf),
                 "auto or >= 0 pixels")  # fmt: skip


def diameter_value(text: str) -> float | str:
    """--diameter: "auto" or a number of pixels (checked by InferenceConfig)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or pixels, got {text!r}") from None


@dataclass(frozen=True)
class InferenceConfig:
    """How a model's probabilities become masks and instances (segment.py, instances.py).

    Stored in checkpoints beside the training configuration; ``predict`` and
    :func:`biounet.segment` use a model's own unless told otherwise.
    """

    threshold: float = setting(
        0.5, rule=within(0, 1), commands=INFERENCE, metavar="T",
        help="foreground where P(foreground) > T (contour models: P(background) < 1 - T): "
        "predict writes it as a 0/255 mask, *-mask.tif, and --instances takes it as their "
        "foreground")
    tta: bool = setting(False, rule=BOOLEAN, commands=INFERENCE,
                        help="average the 8 flips / quarter turns (test-time augmentation; "
                        "for post-processing tuned on averaged probabilities)")  # fmt: skip
    method: str = setting("auto", rule=one_of(METHODS),
                          help="instances: auto (from the training target: mask -> "
                          "components, binary -> binary, contour -> contour) or one of "
                          "INSTANCE_METHODS")  # fmt: skip
    min_size: int = setting(0, rule=at_least(0, " pixels"), commands=INFERENCE, metavar="PX",
                            parse=int, help="--instances: drop objects under PX pixels")
    min_peak: float = setting(
        0.0, rule=within(0, 1), commands=INFERENCE, metavar="P",
        help="--instances: drop objects whose highest interior / foreground probability "
        "stays under P (faint debris)")
    min_fraction: float = setting(
        0.0, rule=within(0, 1), commands=INFERENCE, metavar="F",
        help="--instances: in each image, drop objects under F x the median size of its "
        "objects of at least --min-size pixels where that is less than --min-size (an image "
        "of small nuclei keeps them); 0: --min-size alone")
    seed_threshold: float = setting(
        0.5, rule=within(0, 1, "()"), commands=INFERENCE, metavar="P",
        help="--instances, contour models: P(interior) above which a pixel seeds an object")
    seed_dynamics: float = setting(
        0.0, rule=within(0, 1, "[)"), commands=INFERENCE, metavar="H",
        help="--instances, contour models: one seed per peak of P(interior) (smoothed 1 px) "
        "standing H above the saddle to a higher one, where it exceeds --seed-threshold: "
        "nuclei whose interiors meet at a ridge get a seed each; 0: the thresholded "
        "region's components")
    split_solidity: float = setting(
        0.0, rule=within(0, 1), commands=INFERENCE, metavar="S",
        help="--instances, contour models: split a seed whose solidity (area / convex hull "
        "area) is under S at its distance-transform peaks; 0: never")
    split_depth: float = setting(
        3.0, rule=above(0, " pixels"), commands=INFERENCE, metavar="PX",
        help="--instances, contour models: where seeds are split (--split-solidity or the "
        "model's setting above 0), the peaks that split a seed stand at least PX pixels "
        "above the saddle between them")
    diameter: float | str = setting(
        0.0, rule=DIAMETER, commands=INFERENCE, metavar="D|auto", parse=diameter_value,
        help="the objects' diameter in the images, in pixels: each image is rescaled so they "
        "have the size the model was trained on (biounet info MODEL), and every output back "
        "to its size; auto: measured in each image by a first pass; 0: images as they are")

    def __post_init__(self):
        validate(self)

    @staticmethod
    def check(name: str, value, label: str | None = None) -> None:
        """ValueError ``"<label> must be <rule>, got <value>"`` unless ``value`` suits the
        field ``name`` (``label``: how the caller names it, e.g. a command-line flag)."""
        check_setting(InferenceConfig, name, value, label)

    def instance_method(self, target: str, out_channels: int) -> str:
        """The instance method for a model trained on ``target`` with ``out_channels``
        outputs: ``method``, or with "auto" the target's (METHOD_FOR_TARGET). ValueError if
        "contour" meets a model without the 3 contour outputs."""
        method = METHOD_FOR_TARGET[target] if self.method == "auto" else self.method
        if method == "contour" and out_channels != 3:
            raise ValueError(f"method 'contour' needs a model with 3 outputs (background, "
                             f"interior, boundary), got {out_channels}")  # fmt: skip
        return method

    def instance_options(self, method: str) -> dict:
        """The keyword options of ``instances.instances(probs, **options)`` for ``method``
        ("components" passes ``gap=0``: no carved border to grow back)."""
        options = {"threshold": self.threshold, "min_size": self.min_size,
                   "min_peak": self.min_peak}  # fmt: skip
        if method == "components":
            options["gap"] = 0
        if self.min_fraction > 0:
            options["min_fraction"] = self.min_fraction
        if method == "contour":
            options["seed_threshold"] = self.seed_threshold
            if self.split_solidity > 0:
                options["split_solidity"] = self.split_solidity
                options["split_depth"] = self.split_depth
            if self.seed_dynamics > 0:
                options["seed_dynamics"] = self.seed_dynamics
        return options


@dataclass(frozen=True)
class TileOptions:
    """How prediction tiles an image (tiling.py): each field is the one declaration of its
    default; ``predict``, ``segment``, ``segment_files`` and ``large_probabilities`` take
    them as keywords."""

    tile: int | None = setting(None, rule=optional(integers(1)), commands=("predict",),
                               help="input tile edge in pixels (rounded to a valid size); "
                               "default: the largest that fits --memory-mb")  # fmt: skip
    overlap: float = setting(DEFAULT_OVERLAP, rule=within(0, 1, "[)"), commands=("predict",),
                             flag_default=DEFAULT_OVERLAP, help="tile overlap for "
                             f"same-padding networks (default {DEFAULT_OVERLAP:g}); "
                             "valid-padding tiles abut exactly")  # fmt: skip
    memory_mb: int = setting(1024, rule=integers(1), commands=("predict",), flag_default=1024,
                             help="activation memory budget per forward pass, MiB (default "
                             "1024): it chooses the tile and the batch")  # fmt: skip
    precision: str = setting("auto", rule=one_of(PRECISIONS), commands=("predict",),
                             flag_default="auto", help="auto (default: bf16 where the hardware "
                             "has it), bf16 or fp32")  # fmt: skip
    tta: bool = setting(False, rule=BOOLEAN, help="average over the 8 flips / quarter turns "
                        "(the paper's rotations); predict takes it from the model's inference "
                        "settings")  # fmt: skip
    progress: bool = setting(False, rule=BOOLEAN, help="a progress bar over tiles")
    compile: bool = setting(False, rule=BOOLEAN, commands=("predict",), negatable=False,
                            help="run the network through torch.compile (compiled once per "
                            "tile shape; falls back to plain PyTorch, with a warning, where "
                            "compiling fails)")  # fmt: skip
    block: int = setting(2048, rule=integers(1), help="output pixels along a block's edge, "
                         "for images read block by block")  # fmt: skip

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class PredictOptions:
    """How one ``biounet predict`` call runs (segment.segment_files); not stored."""

    out: str | None = setting(
        None, rule=TEXT, commands=("predict",),
        help="output TIFF (file input) or folder (folder input); default: <input name>-prob.tif "
        "/ <input>-prob/ in the current folder (multi-class models: -classes)")
    slices: str | None = setting(None, rule=TEXT, commands=("predict",),
                                 help="only these slices of a stack, e.g. 25-29")
    channels: str | None = setting(None, rule=TEXT, commands=("predict",), metavar="SPEC",
                                   help=CHANNELS_HELP + "; they must be as many as the "
                                   "model's input channels (biounet info MODEL)")  # fmt: skip
    instances: bool = setting(
        False, rule=BOOLEAN, commands=("predict",), negatable=False, flag_default=False,
        help="also write instance labels (uint16; uint32 past 65535) as *-instances.tif (mask "
        "models: connected components; binary: components grown over the carved borders; "
        "contour: seeded watershed)")
    roi_zip: bool = setting(
        False, rule=BOOLEAN, commands=("predict",), negatable=False, flag_default=False,
        help="with --instances, also write the objects' outlines as an ImageJ ROI set, "
        "*-rois.zip (one polygon per object, named by label; Fiji's ROI Manager opens it)")
    probabilities: bool = setting(
        False, rule=BOOLEAN, commands=("predict",), negatable=False, flag_default=False,
        help="multi-class models: also write the class probabilities as *-probabilities.tif, "
        "float32, C pages per image (P(class 0) .. P(class C-1)); for a stack input, image "
        "i's class c is page i*C+c (an ImageJ hyperstack: Fiji shows slices and channels)")
    invert: str | None = setting(None, rule=optional(one_of(INVERT)), commands=("predict",),
                                 help=INVERT_HELP + "; default: as the model was trained "
                                 "(biounet info MODEL)")  # fmt: skip
    device: str = setting("auto", rule=TEXT, commands=("predict",), flag_default="auto",
                          help="auto (default: cuda if present), cpu, cuda, cuda:N")
    engine: str = setting(
        "auto", rule=one_of(ENGINES), commands=("predict",), flag_default="auto",
        help="how a checkpoint runs: torch, onnxruntime (its ONNX export, made once and "
        "cached; needs biounet[onnx]) or auto (default: onnxruntime on a CPU without native "
        "bf16 where it is installed, else torch)")
    shard: str | None = setting(
        None, rule=TEXT, commands=("predict",), metavar="K/N",
        help="predict every N-th image from the K-th (0-based) of the sorted inputs, e.g. "
        "$SLURM_ARRAY_TASK_ID/8; under torchrun RANK/WORLD_SIZE unless given")
    skip_existing: bool = setting(False, rule=BOOLEAN, commands=("predict",), negatable=False,
                                  flag_default=False, help="skip the images whose outputs all "
                                  "exist (to resume an interrupted run)")  # fmt: skip

    def __post_init__(self):
        validate(self)


# Checkpoints and config.json files written before InferenceConfig existed keep these
# settings among the training keys: old name -> InferenceConfig field
LEGACY_INFERENCE_KEYS = {
    "foreground_threshold": "threshold",
    "tta": "tta",
    "min_object_size": "min_size",
    "min_object_peak": "min_peak",
    "min_object_fraction": "min_fraction",
    "seed_threshold": "seed_threshold",
    "seed_dynamics": "seed_dynamics",
    "split_solidity": "split_solidity",
    "split_depth": "split_depth",
}


@dataclass(frozen=True)
class Preset:
    """A named, complete configuration: the network, how to train it and how to segment
    with it."""

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        """The preset of ``to_dict()``. A dict without ``"inference"`` (written before it
        existed) takes it from its training keys (LEGACY_INFERENCE_KEYS)."""
        train = dict(d["train"])
        train["augment"] = _build(AugmentConfig, train.get("augment", {}))
        if "inference" in d:
            inference = d["inference"]
        else:
            inference = {new: train[old] for old, new in LEGACY_INFERENCE_KEYS.items()
                         if old in train}  # fmt: skip
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            model=_build(ModelConfig, d["model"]),
            train=_build(TrainConfig, train),
            inference=_build(InferenceConfig, inference),
        )

    def with_train(self, **changes) -> Preset:
        """A copy with training settings replaced (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, train=replace(self.train, **changes))

    def with_inference(self, **changes) -> Preset:
        """A copy with inference settings replaced (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, inference=replace(self.inference, **changes))


def _build(cls, d: dict):
    """Dataclass from a dict, ignoring unknown keys (forward compatible config.json)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
