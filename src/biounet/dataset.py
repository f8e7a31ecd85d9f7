"""The training data: images and labels read once and turned into the configured
target's class maps (:func:`load_data`), split into training and validation images by
index or name (:func:`split`), and random training tiles with mirrored context cut from
them (:class:`TileSampler`, :func:`make_sampler`). File formats end here: what leaves
this module is arrays and tensors.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .io import (
    InputError,
    check_pairs,
    find_data,
    normalize,
    read_images,
    read_instances,
    read_pairs,
    resolve_data_path,
)
from .targets import label_context, make_target
from .weights import cached_weight_maps

log = logging.getLogger("biounet")


@dataclass
class Data:
    """A run's images split in two: training images (H, W) float32, normalised; validation
    images as stored (prediction normalises them); masks (H, W) uint8 class indices."""

    train_images: list[np.ndarray]
    train_masks: list[np.ndarray]
    val_images: list[np.ndarray]
    val_masks: list[np.ndarray]
    val_names: list[str]
    train_instances: list[np.ndarray] | None = None  # (H, W) int32, instance targets only


def load_data(cfg: TrainConfig, num_classes: int, normalization: str = "zscore") -> Data:
    """Read the configured images and labels (default: the bundled ISBI 2012 stacks), turn
    the labels into the configured target's class maps and split them.

    Args:
        cfg: ``images``, ``labels``, ``target`` (and its widths), ``val_slices``,
            ``train_slices``.
        num_classes: the classes a mask may hold (2 for a 1-output network).
        normalization: how training images are normalised (:func:`biounet.io.normalize`).

    InputError naming the value or file for a lone ``images`` / ``labels``, unreadable or
    unpaired files, a split that leaves nothing to train on, or training masks holding one
    class only.
    """
    if (cfg.images is None) != (cfg.labels is None):
        given = "--images" if cfg.images is not None else "--labels"
        raise InputError(f"{given} given alone: --images and --labels go together")
    if cfg.images is None:
        root = find_data("isbi2012")
        images_path, labels_path = root / "train-volume.tif", root / "train-labels.tif"
    else:
        images_path, labels_path = resolve_data_path(cfg.images), resolve_data_path(cfg.labels)
    instances = None
    if cfg.target == "mask":
        images, masks = read_pairs(images_path, labels_path, num_classes)
    else:  # instance labels -> the target's class maps
        images, masks = read_images(images_path), read_instances(labels_path)
        check_pairs(images, masks)
        instances = masks.arrays
        masks.arrays = [
            make_target(inst, cfg.target, cfg.boundary_width, cfg.touch_width) for inst in instances
        ]
    train_idx, val_idx = split(len(images), cfg.val_slices, cfg.train_slices, images.names)
    present = np.unique(np.concatenate([np.unique(masks.arrays[i]) for i in train_idx]))
    if len(present) < 2:
        raise InputError(
            f"{masks.source}: the training masks hold only class {present[0]}; "
            "check the mask encoding (foreground must be 255 or 1)"
        )
    return Data(
        train_images=[normalize(images.arrays[i], normalization) for i in train_idx],
        train_masks=[masks.arrays[i] for i in train_idx],
        val_images=[images.arrays[i] for i in val_idx],
        val_masks=[masks.arrays[i] for i in val_idx],
        val_names=[images.names[i] for i in val_idx],
        train_instances=None if instances is None else [instances[i] for i in train_idx],
    )


def parse_slices(
    spec: str, n: int, what: str = "slices", names: list[str] | None = None
) -> list[int]:
    """Slice indices from a spec such as ``"25-29"``, ``"28,29"`` or ``"0-4,10"``, or
    ``"@list.txt"``: a text file naming images (file stems, one per line, ``#`` comments),
    looked up in ``names``.

    Ranges are inclusive; ``""`` or ``"none"`` gives no slices. InputError if an index is
    outside 0..n-1, a listed name is not among ``names``, or the spec does not parse.
    """
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return []
    if spec.startswith("@"):
        return _listed(spec[1:], names, what)
    out: list[int] = []
    for part in spec.split(","):
        try:
            lo, _, hi = part.strip().partition("-")
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            raise InputError(f"{what} {spec!r}: expected indices like 25-29 or 28,29") from None
        if not 0 <= a <= b < n:
            raise InputError(f"{what} {spec!r}: {part.strip()} is outside 0..{n - 1} ({n} images)")
        out.extend(range(a, b + 1))
    return sorted(set(out))


def _listed(path: str, names: list[str] | None, what: str) -> list[int]:
    file = resolve_data_path(path)
    if not file.is_file():
        raise InputError(f"{what} @{path}: no such list file")
    try:
        text = file.read_text()
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"{file}: not a readable text list of image names ({e})") from None
    wanted = [ln.split("#")[0].strip() for ln in text.splitlines()]
    wanted = [w for w in wanted if w]
    if names is None:
        raise InputError(f"{what} @{path}: a name list needs named images (a folder)")
    index = {n: i for i, n in enumerate(names)}
    unknown = [w for w in wanted if w not in index]
    if unknown:
        more = f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
        raise InputError(f"{file}: {unknown[0]!r} is not among the {len(names)} images{more}")
    return sorted({index[w] for w in wanted})


def split(
    n: int, val: str, train: str | None, names: list[str] | None = None
) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) of ``n`` images; train defaults to the rest.
    Specs as in :func:`parse_slices` (``names``: the images' names, for ``@list`` specs)."""
    val_idx = parse_slices(val, n, "validation slices", names)
    if train is None:
        train_idx = [i for i in range(n) if i not in set(val_idx)]
    else:
        train_idx = parse_slices(train, n, "training slices", names)
    if not train_idx:
        raise InputError(f"no training slices left (n = {n}, validation slices {val!r})")
    return train_idx, val_idx


def mirror_pad(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """(H, W) -> (H + top + bottom, W + left + right), context mirrored at the borders.

    Mirroring excludes the edge pixel (numpy "reflect"); pads wider than the image reflect
    again, so any image, however small, gets context.
    """
    return np.pad(image, ((top, bottom), (left, right)), mode="reflect")


class TileSampler:
    """Random training regions with mirrored context.

    Every output pixel of a valid-padding network sees real or mirrored context: each image
    is padded once by the network's border ``(input_size - output_size) / 2`` plus
    ``margin`` (context for augmentation to rotate and deform into), and up to the output
    size if it is smaller; regions are cut from the padded array. The output tile's
    position is uniform over the image, so every pixel is equally likely to be learned.

    Args:
        images: (H, W) float32 normalised images.
        masks: (H, W) uint8 class-index masks, same shapes.
        input_size, output_size: tile edges of the network (pixels).
        rng: the run's numpy Generator (tile positions).
        weights: optional (H, W) float32 per-pixel loss weights, same shapes.
        margin: extra context per side (pixels), see ``AugmentConfig.margin``.
    """

    def __init__(self, images, masks, input_size, output_size, rng, weights=None, margin=0):
        if (input_size - output_size) % 2:
            raise ValueError(f"input minus output must be even, got {input_size}-{output_size}")
        self.input_size, self.output_size, self.rng = input_size, output_size, rng
        self.region = input_size + 2 * margin
        b = (input_size - output_size) // 2 + margin
        self.padded = []
        for i, img in enumerate(images):
            H, W = img.shape
            eh, ew = max(0, output_size - H), max(0, output_size - W)  # grow small images
            pads = (b + eh // 2, b + eh - eh // 2, b + ew // 2, b + ew - ew // 2)
            arrays = [mirror_pad(img.astype(np.float32), *pads), mirror_pad(masks[i], *pads)]
            if weights is not None:
                arrays.append(mirror_pad(weights[i].astype(np.float32), *pads))
            self.padded.append([torch.from_numpy(a) for a in arrays])

    def sample(self, batch: int):
        """Regions of edge R = input_size + 2 margin, centred on a random output tile:

        x (B, 1, R, R) float32, y (B, R, R) uint8, w (B, R, R) float32 or None, as CPU
        tensors (views when B == 1). The output tile's label is the centred
        (output_size)^2 square of y.
        """
        R = self.region
        xs, ys, ws = [], [], []
        for _ in range(batch):
            arrays = self.padded[self.rng.integers(len(self.padded))]
            Hp, Wp = arrays[0].shape
            y0 = int(self.rng.integers(0, Hp - R + 1))
            x0 = int(self.rng.integers(0, Wp - R + 1))
            cut = [a[y0 : y0 + R, x0 : x0 + R] for a in arrays]
            xs.append(cut[0])
            ys.append(cut[1])
            if len(cut) > 2:
                ws.append(cut[2])
        x = torch.stack(xs)[:, None]
        y = torch.stack(ys)
        w = torch.stack(ws) if ws else None
        return x, y, w


def make_sampler(
    cfg: TrainConfig,
    data: Data,
    out_tile: int,
    rng: np.random.Generator,
    cache: str | Path | None = None,
) -> TileSampler:
    """The training tile sampler: weight maps if configured (cached in memory and, given a
    ``cache`` folder, on disk) and the context margin the augmentation needs. With
    ``targets_after_warp`` it samples the instance labels themselves, with the label
    context their target needs (:func:`biounet.targets.tile_targets`)."""
    weights = None
    if cfg.weight_map:
        t = time.perf_counter()
        labels = data.train_instances or data.train_masks  # instances where there are some
        weights = cached_weight_maps(labels, cfg.w0, cfg.sigma, cache, cfg.class_balance)
        log.info("weight maps (w0 %g, sigma %g, class balance %s): %.2fs", cfg.w0, cfg.sigma,
                 cfg.class_balance, time.perf_counter() - t)  # fmt: skip
    margin = cfg.augment.margin(cfg.tile)
    labels = data.train_masks
    if label_context(cfg):  # instance targets made after the warp
        labels = data.train_instances
        # the label context, past a rotated tile's corner (sqrt 2 per pixel)
        margin += math.ceil(label_context(cfg) * math.sqrt(2))
    return TileSampler(data.train_images, labels, cfg.tile, out_tile, rng, weights, margin)
