"""The training data: images and labels read once and turned into the configured
target's class maps (:func:`load_data`), split into training and validation images by
index or name (:func:`split`), and random training tiles with mirrored context cut from
them (:class:`TileSampler`, :func:`make_sampler`). File formats end here: what leaves
this module is arrays and tensors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import MAX_FOUND_CLASSES, SAMPLE_BY, TrainConfig
from .errors import InputError
from .io import (
    Images,
    as_instances,
    check_pairs,
    find_data,
    read_sources,
    where_of,
)
from .labels import IGNORE_INDEX, THRESHOLD_HINT, labels_to_instances, mask_to_classes
from .mirror import mirror_pad
from .normalization import normalize
from .slices import parse_slices
from .targets import NUM_CLASSES, make_target
from .weights import cached_weight_maps

log = logging.getLogger("biounet")


@dataclass
class Data:
    """A run's images split in two: training images (H, W) or (C, H, W) float32, normalised
    (each channel on its own); validation
    images as stored (prediction normalises them); masks (H, W) uint8 class indices,
    :data:`biounet.labels.IGNORE_INDEX` (255) where a pixel is not labelled."""

    train_images: list[np.ndarray]
    train_masks: list[np.ndarray]
    val_images: list[np.ndarray]
    val_masks: list[np.ndarray]
    val_names: list[str]
    train_instances: list[np.ndarray] | None = None  # (H, W) int32, instance targets only
    num_classes: int = 2  # the classes 0..C-1 the masks may hold
    val_slices: str = "none"  # the held-out images as a spec ("auto" resolved to indices)
    in_channels: int = 1  # the images' channels: (H, W) images 1, (C, H, W) images C


VAL_SHARE = 0.15  # the share of images val_slices="auto" holds out


def load_data(
    cfg: TrainConfig, num_classes: int | None, normalization: str = "zscore"
) -> Data:
    """Read the configured images and labels (default: the bundled ISBI 2012 stacks), turn
    the labels into the configured target's class maps and split them.

    Args:
        cfg: ``images``, ``labels``, ``target`` (and its widths), ``val_slices`` ("auto":
            seeded by ``seed``), ``train_slices``, ``label_threshold``, ``ignore_label``.
        num_classes: the classes a mask may hold (2 for a 1-output network); None: found
            from the masks (mask target: the largest class + 1, at least 2, at most
            MAX_FOUND_CLASSES).
        normalization: how training images are normalised
            (:func:`biounet.normalization.normalize`).

    InputError naming the value or file for a lone ``images`` / ``labels``, unreadable or
    unpaired files, mask values that are not classes, an ignore label that is also a
    class, a threshold outside a mask's values, a split that leaves nothing to train on,
    or training masks holding one class only.
    """
    if (cfg.images is None) != (cfg.labels is None):
        given = "--images" if cfg.images is not None else "--labels"
        raise InputError(f"{given} given alone: --images and --labels go together")
    if cfg.images is None:
        root = find_data("isbi2012")
        images_path, labels_path = root / "train-volume.tif", root / "train-labels.tif"
    else:
        images_path, labels_path = cfg.images, cfg.labels  # one path, or folders joined by ","
    instances = None
    images = read_sources(images_path, channels=cfg.channels)
    masks = read_sources(labels_path, mask=True)
    check_pairs(images, masks)
    if cfg.target == "mask":
        if num_classes is None:
            num_classes = found_classes(masks.arrays, cfg)
        hint = ""
        if num_classes == MAX_FOUND_CLASSES and cfg.classes is None:
            hint = f"{THRESHOLD_HINT}, or --classes C for more than {MAX_FOUND_CLASSES} classes"
        masks.arrays = [
            mask_to_classes(m, num_classes, where_of(masks, i), hint,
                            threshold=cfg.label_threshold, ignore=cfg.ignore_label)  # fmt: skip
            for i, m in enumerate(masks.arrays)
        ]
    else:  # instance labels -> the target's class maps
        num_classes = NUM_CLASSES[cfg.target]
        instances, ignored = instance_labels(masks, cfg)
        masks.arrays = [
            make_target(inst, cfg.target, cfg.boundary_width, cfg.touch_width) for inst in instances
        ]
        for m, ig in zip(masks.arrays, ignored, strict=True):
            if ig is not None:
                m[ig] = IGNORE_INDEX
    train_idx, val_idx, val_spec = split_images(images, cfg)
    present = np.unique(np.concatenate([np.unique(masks.arrays[i]) for i in train_idx]))
    present = present[present != IGNORE_INDEX]
    if len(present) == 0:
        raise InputError(f"{masks.source}: the training masks hold no labelled pixel "
                         f"(every pixel is --ignore-label {cfg.ignore_label})")  # fmt: skip
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
        num_classes=num_classes,
        val_slices=val_spec,
        in_channels=images.channels,
    )


def found_classes(masks: list[np.ndarray], cfg: TrainConfig) -> int:
    """The classes C of stored masks (H, W): 2 for binary masks (0/255, 0/65535, 0/1) or
    with ``cfg.label_threshold``; else the largest whole value + 1 (pixels of
    ``cfg.ignore_label`` left out), at least 2 and at most MAX_FOUND_CLASSES (a mask with
    larger values is then refused by :func:`biounet.labels.mask_to_classes`)."""
    if cfg.label_threshold is not None:
        return 2
    top = 1
    for m in masks:
        values = np.unique(m)
        if cfg.ignore_label is not None:
            values = values[values != cfg.ignore_label]
        binary = any(np.isin(values, (0, t)).all() for t in (1, 255, 65535))
        if values.size and not binary and np.all(values == np.round(values)):
            top = max(top, int(min(values.max(), MAX_FOUND_CLASSES)))
    return min(top + 1, MAX_FOUND_CLASSES)


def instance_labels(
    labels: Images, cfg: TrainConfig
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """(instances, ignored) of stored instance labels: (H, W) int32 ids, 0 = background
    (with ``cfg.label_threshold``, the 4-connected components of value > threshold), and
    (H, W) bool pixels of ``cfg.ignore_label`` (id 0 in the instances), or None each."""
    ignore, threshold = cfg.ignore_label, cfg.label_threshold
    if ignore is not None and threshold is None and ignore == 0:
        raise InputError(f"--ignore-label 0 is the background of {labels.source}")
    if threshold is None and ignore is None:
        return as_instances(labels).arrays, [None] * len(labels)
    instances, ignored = [], []
    for i, raw in enumerate(labels.arrays):
        where = where_of(labels, i)
        if threshold is not None:  # 0/1 and IGNORE_INDEX
            classes = mask_to_classes(raw, 2, where, threshold=threshold, ignore=ignore)
            ig = classes == IGNORE_INDEX
            kept = np.where(ig, 0, classes)
        else:
            ig = raw == ignore
            kept = np.where(ig, 0, raw)
        instances.append(labels_to_instances(kept, where)[0])
        ignored.append(ig if ig.any() else None)
    return instances, ignored


def split_images(images: Images, cfg: TrainConfig) -> tuple[list[int], list[int], str]:
    """(training indices, validation indices, the validation spec to store) of ``images``
    under ``cfg.val_slices`` / ``cfg.train_slices``: "auto" holds out a share VAL_SHARE of
    the images (at least one; none of a single image, with a warning), drawn with
    ``cfg.seed`` and logged by name, and is stored as their indices."""
    n, names = len(images), images.names
    if cfg.val_slices.strip().lower() != "auto":
        train_idx, val_idx = split(n, cfg.val_slices, cfg.train_slices, names)
        return train_idx, val_idx, cfg.val_slices
    pool = list(range(n))
    if cfg.train_slices is not None:  # hold out among the images not trained on
        chosen = set(parse_slices(cfg.train_slices, n, "training slices", names))
        pool = [i for i in pool if i not in chosen]
    val_idx = auto_validation(len(pool), cfg.seed)
    val_idx = [pool[i] for i in val_idx]
    if n == 1:
        log.warning("warning: %s holds one image: none held out for validation", images.source)
    elif val_idx:
        log.info("validation: %d of %d images held out: %s", len(val_idx), n,
                 ", ".join(names[i] for i in val_idx))  # fmt: skip
    spec = ",".join(str(i) for i in val_idx) or "none"
    train_idx, val_idx = split(n, spec, cfg.train_slices, names)
    return train_idx, val_idx, spec


def auto_validation(n: int, seed: int, share: float = VAL_SHARE) -> list[int]:
    """Sorted indices of ``round(share * n)`` of ``n`` images (at least one; none when
    ``n`` < 2), drawn without replacement by a generator seeded with ``seed``."""
    if n < 2:
        return []
    k = max(1, round(share * n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


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


class TileSampler:
    """Random training regions with mirrored context.

    Every output pixel of a valid-padding network sees real or mirrored context: each image
    is padded once by the network's border ``(input_size - output_size) / 2`` plus
    ``margin`` (context for augmentation to rotate and deform into), and up to the output
    size if it is smaller; regions are cut from the padded array. The output tile's
    position is uniform over its image; the image is drawn uniformly (``by="image"``) or in
    proportion to its pixels (``by="area"``: every pixel of the set equally likely).

    Sparse labels: in an image whose mask holds not-labelled pixels (IGNORE_INDEX, e.g.
    outside the boxes a user annotated), the output tile is placed over a labelled pixel
    drawn uniformly (at a uniform offset within the tile), so that no step is spent on
    tiles with nothing to learn; ``by="area"`` then counts labelled pixels only, and an
    image with none is never drawn.

    Args:
        images: (H, W) or (C, H, W) float32 normalised images (all of one C).
        masks: (H, W) uint8 class-index masks, same shapes.
        input_size, output_size: tile edges of the network (pixels).
        rng: the run's numpy Generator (tile positions).
        weights: optional (H, W) float32 per-pixel loss weights, same shapes.
        margin: extra context per side (pixels), see ``AugmentConfig.margin``.
        by: "image" | "area", see above (``TrainConfig.sample_by``).
    """

    def __init__(self, images, masks, input_size, output_size, rng, weights=None, margin=0,
                 by="image"):  # fmt: skip
        if (input_size - output_size) % 2:
            raise ValueError(f"input minus output must be even, got {input_size}-{output_size}")
        if by not in SAMPLE_BY:
            raise ValueError(f"by must be 'image' or 'area', got {by!r}")
        self.p = None  # uniform over the images (one rng.integers call per tile)
        # per image: the flat indices of its labelled pixels where some are not labelled
        index = np.int32 if max((m.size for m in masks), default=0) < 2**31 else np.int64
        self.labelled = [np.flatnonzero(m != IGNORE_INDEX).astype(index)
                         if (m == IGNORE_INDEX).any() else None for m in masks]  # fmt: skip
        if by == "area":
            area = np.array([img.shape[-2] * img.shape[-1] if on is None else on.size
                             for img, on in zip(images, self.labelled, strict=True)],
                            dtype=np.float64)  # fmt: skip
            self.p = area / area.sum()
        elif any(on is not None and on.size == 0 for on in self.labelled):
            some = np.array([on is None or on.size > 0 for on in self.labelled], np.float64)
            self.p = some / some.sum()  # an image with no labelled pixel is never drawn
        self.input_size, self.output_size, self.rng = input_size, output_size, rng
        self.region = input_size + 2 * margin
        b = (input_size - output_size) // 2 + margin
        self.padded, self.shifts = [], []  # shifts: (W, top, left) growth of small images
        for i, img in enumerate(images):
            H, W = img.shape[-2:]
            eh, ew = max(0, output_size - H), max(0, output_size - W)  # grow small images
            pads = (b + eh // 2, b + eh - eh // 2, b + ew // 2, b + ew - ew // 2)
            self.shifts.append((W, eh // 2, ew // 2))
            arrays = [mirror_pad(img.astype(np.float32), *pads), mirror_pad(masks[i], *pads)]
            if weights is not None:
                arrays.append(mirror_pad(weights[i].astype(np.float32), *pads))
            self.padded.append([torch.from_numpy(a) for a in arrays])

    def sample(self, batch: int):
        """Regions of edge R = input_size + 2 margin, centred on a random output tile:

        x (B, C, R, R) float32, y (B, R, R) uint8, w (B, R, R) float32 or None, as CPU
        tensors (views when B == 1). The output tile's label is the centred
        (output_size)^2 square of y.
        """
        R = self.region
        xs, ys, ws = [], [], []
        for _ in range(batch):
            if self.p is None:
                k = int(self.rng.integers(len(self.padded)))
            else:
                k = int(self.rng.choice(len(self.padded), p=self.p))
            arrays = self.padded[k]
            Hp, Wp = arrays[0].shape[-2:]
            if self.labelled[k] is None:
                y0 = int(self.rng.integers(0, Hp - R + 1))
                x0 = int(self.rng.integers(0, Wp - R + 1))
            else:  # the output tile over a labelled pixel, at a uniform offset within it
                W, top, left = self.shifts[k]
                r, c = divmod(int(self.labelled[k][self.rng.integers(self.labelled[k].size)]), W)
                out = self.output_size
                y0 = min(max(r - int(self.rng.integers(out)) + top, 0), Hp - R)
                x0 = min(max(c - int(self.rng.integers(out)) + left, 0), Wp - R)
            cut = [a[..., y0 : y0 + R, x0 : x0 + R] for a in arrays]
            xs.append(cut[0])
            ys.append(cut[1])
            if len(cut) > 2:
                ws.append(cut[2])
        x = torch.stack(xs)
        x = x[:, None] if x.ndim == 3 else x
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
    ``cache`` folder, on disk) and the context margin the augmentation needs."""
    weights = None
    if cfg.weight_map:
        t = time.perf_counter()
        labels = data.train_instances or data.train_masks  # instances where there are some
        ignored = None
        if cfg.ignore_label is not None:
            ignored = [m == IGNORE_INDEX for m in data.train_masks]
        # class maps of more than 2 classes: the objects are each class's components
        class_map = data.train_instances is None and data.num_classes > 2
        weights = cached_weight_maps(labels, cfg.w0, cfg.sigma, cache, cfg.class_balance,
                                     class_map=class_map, ignored=ignored)  # fmt: skip
        log.info("weight maps (w0 %g, sigma %g, class balance %s): %.2fs", cfg.w0, cfg.sigma,
                 cfg.class_balance, time.perf_counter() - t)  # fmt: skip
    margin = cfg.augment.margin(cfg.tile)
    return TileSampler(data.train_images, data.train_masks, cfg.tile, out_tile, rng, weights,
                       margin, by=cfg.sample_by)  # fmt: skip
