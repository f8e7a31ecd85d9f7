"""Configuration dataclasses: the network (model.py's ModelConfig), training
(:class:`TrainConfig`, :class:`AugmentConfig`) and segmentation (:class:`InferenceConfig`).
Presets (presets.py) are named instances of :class:`Preset`.

A run directory stores ``Preset.to_dict()`` as ``config.json``; ``Preset.from_dict`` reads
it back, so every run can be reproduced exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .labels import MAX_CLASSES
from .model import ModelConfig

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
SELECT_BY = ("train_loss", "val_loss", "val_pixel_error", "v_rand", "v_info", "last")
HIGHER_IS_BETTER = ("v_rand", "v_info")
TARGETS = ("mask", "binary", "contour")  # see targets.py
CLASS_BALANCES = ("image", "dataset", "none")  # see weights.background_weights
SAMPLE_BY = ("image", "area")  # see TrainConfig.sample_by
MAX_FOUND_CLASSES = 16  # more classes than this are not guessed from masks: give classes


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms applied identically to a training tile, its label and its weights.

    Geometric transforms (rotation, shift, elastic deformation, flips) are composed into one
    sampling grid, so each tile is resampled once. Strengths are in pixels and degrees;
    gray values act on the normalised image (zero mean, unit variance).
    """

    flip: bool = True  # random left-right / up-down mirroring
    rot90: bool = True  # random multiples of 90 degrees (exact, no resampling)
    rotate: bool = False  # rotation by any angle
    rotate_degrees: float = 180.0  # angle uniform in [-rotate_degrees, rotate_degrees]
    shift: bool = False  # random translation
    shift_px: float = 16.0  # per axis, uniform in [-shift_px, shift_px]
    scale: bool = False  # random zoom (objects drawn larger or smaller)
    scale_range: float = 0.25  # zoom factor log-uniform in [1 / (1 + r), 1 + r]
    elastic: bool = False  # the paper's elastic deformation
    elastic_grid: int = 3  # coarse grid of random displacement vectors (paper: 3 x 3)
    elastic_sigma: float = 10.0  # their standard deviation in pixels (paper: 10)
    gray: bool = False  # gray-value variation
    brightness: float = 0.1  # added offset, uniform in [-b, b] (image std units)
    contrast: float = 0.1  # factor uniform in [1 - c, 1 + c]
    gamma: float = 0.2  # exponent log-uniform in [1 / (1 + g), 1 + g] on the tile's range
    # probability that a tile's gray values are negated (contrast inversion: bright objects
    # on a dark background become dark on bright), after the other gray-value changes
    invert: float = 0.0
    interpolation: str = "bicubic"  # image resampling: "bicubic" | "bilinear"

    def __post_init__(self):
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"interpolation must be bicubic or bilinear, got {self.interpolation!r}"
            )
        if self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        for name in ("rotate_degrees", "shift_px", "scale_range", "elastic_sigma", "brightness",
                     "gamma"):  # fmt: skip
            if not 0 <= getattr(self, name) < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.contrast < 1:
            raise ValueError(f"contrast must be in [0, 1), got {self.contrast}")
        if not 0 <= self.invert <= 1:
            raise ValueError(f"invert must be a probability in [0, 1], got {self.invert}")

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

    images: str | None = None  # image stack / folder; None = bundled ISBI 2012 train-volume
    labels: str | None = None  # label stack / folder; None = bundled ISBI 2012 train-labels
    # what the labels hold and the network learns (targets.py): "mask" (class masks, e.g.
    # ISBI 0/255), "binary" (instance labels -> foreground with carved borders, the
    # paper) or "contour" (instance labels -> background / interior / boundary)
    target: str = "mask"
    boundary_width: int = 1  # "contour": boundary class width per object (pixels)
    # "contour": ... and within touch_width px (city-block, across background gaps too) of
    # another object, so deeper where nuclei touch or nearly touch (0: boundary_width only)
    touch_width: int = 0
    # "binary" / "contour": warp the instance labels and make the class map after the warp
    # (exact one-pixel boundaries) instead of warping the class map by nearest neighbour.
    # Off: on the nuclei preset (15 min, 2 seeds) AP@0.5 0.811 / 0.817 and DSB 0.601 / 0.611
    # against 0.829 / 0.611 warping the class map, with more merges (93 / 98 against 82)
    targets_after_warp: bool = False
    # held-out slices: "auto" (a seeded ~15 % of the images, at least one, none of a single
    # image; a run stores the resolved list), "25-29", "28,29", "" for none, "@names.txt"
    val_slices: str = "auto"
    train_slices: str | None = None  # None = every slice not in val_slices
    tile: int = 256  # input tile edge; must be a valid input size of the model
    batch_size: int = 8  # tiles per step
    # which image a training tile comes from: "image" (every training image equally often)
    # or "area" (in proportion to its pixels, so every pixel is equally likely to be learned
    # however the images' sizes differ)
    sample_by: str = "image"
    epochs: int = 30  # at most this many (see time_limit)
    steps_per_epoch: int | None = None  # None = one pass: ceil(train slices / batch size)
    optimizer: str = "adamw"  # "sgd" | "adam" | "adamw"
    lr: float = 2e-3  # peak learning rate
    momentum: float = 0.9  # SGD momentum (Adam: beta1)
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "step" | "cosine" | "poly" | "constant", per epoch
    step_epochs: int = 30  # "step": multiply the rate by gamma every step_epochs epochs
    gamma: float = 0.1  # "step": the factor
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weight_map: bool = False  # weight the loss by the paper's w(x) (weights.weight_map)
    w0: float = 10.0  # its border weight (paper: 10)
    sigma: float = 5.0  # its border width in pixels (paper: 5)
    # its w_c, the weight of background pixels (foreground pixels weigh 1): "image" (the
    # paper) f_fg / f_bg of each image; "dataset" one f_fg / f_bg over the training set;
    # "none" 1 (weights.background_weights)
    class_balance: str = "image"
    # add this weight times a soft Dice loss of the foreground, per tile (losses.soft_dice_loss;
    # 0 = cross entropy alone)
    dice: float = 0.0
    # validate and ship an exponential moving average of the weights with this decay per
    # step (0 = off; 0.999 averages over about the last 1000 steps)
    ema: float = 0.0
    # minutes of training (0 = no limit): after every epoch the run plans as many epochs as
    # fit (at most ``epochs``) from its mean epoch time, and the schedule (cosine, poly)
    # ends with the last planned epoch instead of being cut off
    time_limit: float = 0.0
    precision: str = "auto"  # "auto" (bf16 where the hardware has it) | "bf16" | "fp32"
    device: str = "auto"  # "auto" (cuda if present) | "cpu" | "cuda" | "cuda:1" ...
    seed: int = 0
    # best.pt minimises this: "train_loss" keeps the validation slices out of model
    # selection (they are then only watched); "val_loss" | "val_pixel_error" | "v_rand" |
    # "v_info" select on them; "last": the last epoch's weights (the end of the schedule)
    select_by: str = "val_loss"
    isbi_every: int = 1  # validation V_rand / V_info every N epochs (0 = never)
    val_every: int = 1  # validate every N epochs (0 = never; held-out images stay unused)
    # "mask" target: binarise soft or anti-aliased masks, value > label_threshold is
    # foreground (instance targets: the binary mask's components); None = masks hold classes
    label_threshold: float | None = None
    # labels of this stored value are "not labelled": zero loss weight, left out of the
    # weight map and of validation scores (None = every pixel is labelled)
    ignore_label: int | None = None
    # "mask" target: the classes 0..C-1 of the masks; None = found from the training masks
    # (largest class + 1, at least 2; at most MAX_FOUND_CLASSES)
    classes: int | None = None
    init: str | None = None  # start from this model's weights (a checkpoint); None = random
    # which image channels the network sees (biounet.io.parse_channels): "1", "0,2" (in
    # that order), "rgb" (colour as 3 channels); None = as stored: gray, colour made gray,
    # a TIFF's C axis as channels. The network's in_channels follow the images read
    channels: str | None = None
    # also write the epoch's scalars and validation panels for TensorBoard to RUN/tensorboard/
    tensorboard: bool = False
    # processes the run trains on (recorded by train: torchrun's WORLD_SIZE, 1 without it);
    # batch_size is per process, the global batch batch_size * world_size
    world_size: int = 1

    def __post_init__(self):
        if self.channels is not None:
            from .io import parse_channels

            parse_channels(self.channels)  # InputError for a spec that does not parse
            object.__setattr__(self, "channels", str(self.channels))
        for name in ("images", "labels", "init"):  # Paths are welcome, config.json stores text
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        if self.step_epochs < 1:
            raise ValueError(f"step_epochs must be >= 1, got {self.step_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        for name in ("isbi_every", "val_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.boundary_width < 1 or self.touch_width < 0:
            raise ValueError(f"boundary_width must be >= 1 and touch_width >= 0, got "
                             f"{self.boundary_width}, {self.touch_width}")  # fmt: skip
        if not (0 <= self.w0 < math.inf and 0 < self.sigma < math.inf):  # NaN fails too
            raise ValueError(f"w0 must be >= 0 and sigma > 0, got {self.w0}, {self.sigma}")
        if self.class_balance not in CLASS_BALANCES:
            raise ValueError(f"class_balance must be one of {CLASS_BALANCES}, got "
                             f"{self.class_balance!r}")  # fmt: skip
        if self.sample_by not in SAMPLE_BY:
            raise ValueError(f"sample_by must be one of {SAMPLE_BY}, got {self.sample_by!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target != "contour" and (self.boundary_width != 1 or self.touch_width):
            raise ValueError(f"boundary_width and touch_width shape the contour target's boundary "
                             f"class; target {self.target!r} has none (got "
                             f"{self.boundary_width}, {self.touch_width})")  # fmt: skip
        for name in ("batch_size", "epochs", "tile", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if not (self.dice >= 0 and math.isfinite(self.dice)):
            raise ValueError(f"dice must be >= 0, got {self.dice}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not (self.time_limit >= 0 and math.isfinite(self.time_limit)):
            raise ValueError(f"time_limit must be >= 0 minutes, got {self.time_limit}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.classes is not None and not 2 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes must be in 2..{MAX_CLASSES}, got {self.classes}")
        if self.label_threshold is not None and not math.isfinite(self.label_threshold):
            raise ValueError(f"label_threshold must be a finite number, got "
                             f"{self.label_threshold}")  # fmt: skip
        if self.ignore_label is not None and self.ignore_label < 0:
            raise ValueError(f"ignore_label must be >= 0, got {self.ignore_label}")
        if self.ignore_label is not None and self.targets_after_warp:
            raise ValueError("ignore_label needs class maps warped as such: it does not work "
                             "with targets_after_warp")  # fmt: skip


# How the network's probabilities become instance labels (instances.py): "components"
# (4-connected components of the foreground), "binary" (components grown back over the
# carved borders of the binary target), "contour" (seeded watershed of a 3-output model)
INSTANCE_METHODS = ("components", "binary", "contour")
METHODS = ("auto", *INSTANCE_METHODS)  # InferenceConfig.method
METHOD_FOR_TARGET = {"mask": "components", "binary": "binary", "contour": "contour"}
# the options only the seeded watershed reads
CONTOUR_OPTIONS = ("seed_threshold", "seed_dynamics", "split_solidity", "split_depth")
# what each InferenceConfig value must be: (test, the rule as an error message states it)
_LIMITS = {
    "threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "tta": (lambda v: isinstance(v, bool), "True or False"),
    "method": (lambda v: v in METHODS, f"one of {METHODS}"),
    "min_size": (lambda v: v >= 0, ">= 0 pixels"),
    "min_peak": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "min_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "seed_threshold": (lambda v: 0 < v < 1, "in (0, 1)"),
    "seed_dynamics": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "split_solidity": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "split_depth": (lambda v: v > 0, "> 0 pixels"),
    "diameter": (lambda v: v == "auto" or (not isinstance(v, str | bool) and 0 <= v < math.inf),
                 "auto or >= 0 pixels"),
}  # NaN fails every numeric test


@dataclass(frozen=True)
class InferenceConfig:
    """How a model's probabilities become masks and instances (segment.py, instances.py).

    Stored in checkpoints beside the training configuration; ``predict`` and
    :func:`biounet.segment` use a model's own unless told otherwise.
    """

    # foreground where P(foreground) > threshold (contour models: P(background) <
    # 1 - threshold): the 0/255 mask and the instances' foreground
    threshold: float = 0.5
    # average the 8 flips / quarter turns (for post-processing tuned on averaged
    # probabilities)
    tta: bool = False
    # instances: "auto" (from the training target: mask -> "components", binary ->
    # "binary", contour -> "contour") or one of INSTANCE_METHODS
    method: str = "auto"
    min_size: int = 0  # drop objects under this many pixels
    # ... and objects whose highest P(interior) (contour) or P(foreground) stays below this:
    # faint debris (experiments/tune_instances.py chooses it on training images)
    min_peak: float = 0.0
    # ... and, with this > 0, the size limit follows each image's scale: objects under
    # min(min_size, this x the median size of the image's objects of at least min_size px)
    # are dropped, so an image of small nuclei keeps its small nuclei
    min_fraction: float = 0.0
    # contour: P(interior) above which a pixel seeds an object of the watershed
    seed_threshold: float = 0.5
    # contour, with this > 0: one seed per peak of P(interior) (smoothed 1 px) standing this
    # far above the saddle to a higher one, in the region above seed_threshold
    # (instances.peak_seeds): nuclei whose interiors meet at a ridge get a seed each
    seed_dynamics: float = 0.0
    # contour: a seed less solid than this (area / convex hull area; 0 = never) is split at
    # the peaks of its distance transform that stand split_depth pixels above their saddle
    # (instances.split_seeds): two nuclei whose interiors meet at a neck
    split_solidity: float = 0.0
    split_depth: float = 3.0
    # the objects' diameter in the images (pixels): with the model's training diameter
    # (ModelConfig.diameter) known, each image is rescaled by model diameter / this before
    # the network, so its objects have the size trained on, and every output back to the
    # image's size (instances are found at the model's scale). "auto": each image's own,
    # the median equivalent diameter of the instances of a first pass without TTA; 0: the
    # images as they are
    diameter: float | str = 0.0

    def __post_init__(self):
        for f in fields(self):
            self.check(f.name, getattr(self, f.name))

    @staticmethod
    def check(name: str, value, label: str | None = None) -> None:
        """ValueError ``"<label> must be <rule>, got <value>"`` unless ``value`` suits the
        field ``name`` (``label``: how the caller names it, e.g. a command-line flag)."""
        test, rule = _LIMITS[name]
        try:
            ok = bool(test(value))
        except TypeError:  # e.g. a string where a number belongs
            ok = False
        if not ok:
            got = repr(value) if isinstance(value, str) else value
            raise ValueError(f"{label or name} must be {rule}, got {got}")

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
