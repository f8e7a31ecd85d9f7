"""Configuration dataclasses. Presets (presets.py) are named instances of :class:`Preset`.

A run directory stores ``Preset.to_dict()`` as ``config.json``; ``Preset.from_dict`` reads
it back, so every run can be reproduced exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .model import ModelConfig

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms applied identically to a training tile and its label."""

    flip: bool = True  # random horizontal and vertical flips
    rot90: bool = True  # random multiples of 90 degrees


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Lengths are in pixels, rates per optimiser step."""

    images: str | None = None  # image stack / folder; None = bundled ISBI 2012 train-volume
    labels: str | None = None  # label stack / folder; None = bundled ISBI 2012 train-labels
    val_slices: str = "25-29"  # held-out slice indices ("25-29", "28,29", "" for none)
    train_slices: str | None = None  # None = every slice not in val_slices
    tile: int = 256  # input tile edge; must be a valid input size of the model
    batch_size: int = 8  # tiles per step
    epochs: int = 30
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
    precision: str = "auto"  # "auto" (bf16 where the hardware has it) | "bf16" | "fp32"
    device: str = "auto"  # "auto" (cuda if present) | "cpu" | "cuda" | "cuda:1" ...
    seed: int = 0
    select_by: str = "val_loss"  # best.pt criterion: "val_loss" | "val_pixel_error"

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.select_by not in ("val_loss", "val_pixel_error"):
            raise ValueError(
                f"select_by must be val_loss or val_pixel_error, got {self.select_by!r}"
            )
        for name in ("batch_size", "epochs", "tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Preset:
    """A named, complete configuration: the network and how to train it."""

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        train = dict(d["train"])
        train["augment"] = _build(AugmentConfig, train.get("augment", {}))
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            model=_build(ModelConfig, d["model"]),
            train=_build(TrainConfig, train),
        )

    def with_train(self, **changes) -> Preset:
        """A copy with training settings replaced (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, train=replace(self.train, **changes))


def _build(cls, d: dict):
    """Dataclass from a dict, ignoring unknown keys (forward compatible config.json)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
