"""Training targets from instance labels: what the network learns to predict.

- ``mask``: the label image is already a class mask (ISBI 2012: 255 = cell, 0 = membrane).
- ``binary`` (the paper): foreground / background, with a background border carved between
  touching instances (a pixel 4-adjacent to another instance becomes background), so the
  foreground's connected components are the instances. The paper's w(x) is computed from
  the instances. ``instances.binary_instances`` undoes the carving after prediction.
- ``contour`` (common for nuclei, beyond the paper): three classes, 0 background,
  1 interior, 2 boundary (the instance's own pixels that touch another label, background
  included, 4-connectivity: one pixel wide on each side of a touching edge; wider with
  ``boundary_width``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .config import TARGETS, TrainConfig
from .labels import FOUR_CONNECTED, separate_touching

__all__ = [
    "TARGETS", "NUM_CLASSES", "make_target", "binary_target", "contour_target", "label_context",
    "tile_targets",
]  # fmt: skip
NUM_CLASSES = {"mask": 2, "binary": 2, "contour": 3}
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def inner_boundary(instances: np.ndarray) -> np.ndarray:
    """(H, W) bool: instance pixels with a 4-neighbour of another label (0 included).
    The image edge is not a boundary (a nucleus cut by the border keeps its interior)."""
    lab = instances
    out = np.zeros(lab.shape, bool)
    diff_v = lab[1:, :] != lab[:-1, :]  # (H-1, W): row y differs from row y+1
    diff_h = lab[:, 1:] != lab[:, :-1]  # (H, W-1)
    out[1:, :] |= diff_v
    out[:-1, :] |= diff_v
    out[:, 1:] |= diff_h
    out[:, :-1] |= diff_h
    return out & (lab != 0)


def binary_target(instances: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0/1: foreground with touching instances separated by background."""
    return (separate_touching(instances) != 0).astype(np.uint8)


def near_another_instance(instances: np.ndarray, reach: int) -> np.ndarray:
    """(H, W) bool: instance pixels within ``reach`` 4-steps (city-block distance) of a
    pixel of another instance (background does not count)."""
    lab = np.asarray(instances)
    H, W = lab.shape
    out = np.zeros(lab.shape, bool)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach + abs(dy), reach - abs(dy) + 1):
            if (dy, dx) == (0, 0):
                continue
            # other[y, x] = lab[y + dy, x + dx] where that is inside the image
            here = lab[max(0, -dy) : H - max(0, dy), max(0, -dx) : W - max(0, dx)]
            other = lab[max(0, dy) : H + min(0, dy), max(0, dx) : W + min(0, dx)]
            hit = (other != 0) & (other != here)
            out[max(0, -dy) : H - max(0, dy), max(0, -dx) : W - max(0, dx)] |= hit
    return out & (lab != 0)


def contour_target(instances: np.ndarray, width: int = 1, touch_width: int = 0) -> np.ndarray:
    """(H, W) uint8 classes 0 background, 1 interior, 2 boundary: the instance pixels
    within ``width`` 4-steps of another label (``width`` 1: the inner boundary), and
    within ``touch_width`` 4-steps of another instance (0: no wider there)."""
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    boundary = inner_boundary(instances)
    for _ in range(width - 1):
        boundary |= ndimage.binary_dilation(boundary, FOUR_CONNECTED) & (instances != 0)
    if touch_width > width:
        boundary |= near_another_instance(instances, touch_width)
    out = (instances != 0).astype(np.uint8)  # interior unless on a boundary
    out[boundary] = BOUNDARY
    return out


def make_target(
    instances: np.ndarray, target: str, boundary_width: int = 1, touch_width: int = 0
) -> np.ndarray:
    """The class map the network learns for ``target`` ("binary" or "contour")."""
    if target == "binary":
        return binary_target(instances)
    if target == "contour":
        return contour_target(instances, boundary_width, touch_width)
    raise ValueError(f"target must be 'binary' or 'contour' for instance labels, got {target!r}")


def label_context(cfg: TrainConfig) -> int:
    """Pixels of label context per side a training tile keeps: instance targets made after
    the warp (``targets_after_warp``, see :func:`tile_targets`) need the tile's neighbours;
    0 where the class map itself is warped."""
    if cfg.target == "mask" or not cfg.targets_after_warp:
        return 0
    return max(cfg.boundary_width, cfg.touch_width) if cfg.target == "contour" else 1


def tile_targets(y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Class maps (B, s, s) int64 of augmented instance-label tiles (B, s + 2c, s + 2c)
    integer, c = :func:`label_context`, on ``y``'s device: :func:`make_target` of each
    tile, cropped to its centre.

    The target is made after the warp, from the warped instances: resampling a class map
    by nearest neighbour breaks and doubles its one-pixel boundary class (rotated 30-45
    degrees, a quarter to a third of a nucleus image's boundary pixels differ from the
    boundary of the rotated instances), and can leave two touching interiors with no
    boundary between them. The context gives the tile's edge pixels the class they have in
    the whole image.

    Made with torch on the batch itself, bit for bit the class maps of :func:`make_target`
    (tests/test_targets.py): no copy to the host and back on a GPU, and faster on a CPU
    than :func:`make_target` per tile and back. Measured 2026-12-02 on warped batches of
    the nuclei preset with ``targets_after_warp`` (4 tiles of 256 px; medians of 5
    interleaved rounds of 15 calls; 2 cores of an AMD EPYC Zen 4 with AVX-512 BF16, torch
    2.13, 2 threads, the machine shared with other jobs): contour 0.98 ms against 19.9 ms,
    ``boundary_width`` 2 0.94 against 16.0, binary 0.72 against 16.0, ``touch_width`` 3
    37.8 against 44.0 (its 24 shifted comparisons; 23.0 against 24.6 with one thread).
    """
    c = label_context(cfg)
    lab = y
    foreground = lab != 0
    if cfg.target == "binary":
        out = (foreground & ~_touching_another(lab, foreground)).long()
    elif cfg.target == "contour":
        boundary = _inner_boundary_batch(lab, foreground)
        for _ in range(cfg.boundary_width - 1):
            boundary |= _dilate4(boundary) & foreground
        if cfg.touch_width > cfg.boundary_width:
            boundary |= _near_another_batch(lab, foreground, cfg.touch_width)
        out = foreground.long().masked_fill_(boundary, BOUNDARY)
    else:
        raise ValueError(f"target must be 'binary' or 'contour' for instance labels, got "
                         f"{cfg.target!r}")  # fmt: skip
    return out[:, c:-c, c:-c] if c else out


def _inner_boundary_batch(lab: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: :func:`inner_boundary` of each (H, W) label tile."""
    out = torch.zeros_like(foreground)
    diff_v = lab[:, 1:] != lab[:, :-1]  # (B, H-1, W): row y differs from row y+1
    out[:, 1:] |= diff_v
    out[:, :-1] |= diff_v
    diff_h = lab[:, :, 1:] != lab[:, :, :-1]  # (B, H, W-1)
    out[:, :, 1:] |= diff_h
    out[:, :, :-1] |= diff_h
    return out & foreground


def _touching_another(lab: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: foreground pixels with a 4-neighbour of another instance (not
    background), the pixels the binary target carves away."""
    out = torch.zeros_like(foreground)
    edge_v = (lab[:, 1:] != lab[:, :-1]) & foreground[:, 1:] & foreground[:, :-1]
    out[:, 1:] |= edge_v
    out[:, :-1] |= edge_v
    edge_h = (lab[:, :, 1:] != lab[:, :, :-1]) & foreground[:, :, 1:] & foreground[:, :, :-1]
    out[:, :, 1:] |= edge_h
    out[:, :, :-1] |= edge_h
    return out


def _dilate4(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: ``mask`` grown by one 4-step (nothing outside the tile)."""
    out = mask.clone()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def _near_another_batch(lab: torch.Tensor, foreground: torch.Tensor, reach: int) -> torch.Tensor:
    """(B, H, W) bool: :func:`near_another_instance` of each (H, W) label tile."""
    _, H, W = lab.shape
    out = torch.zeros_like(foreground)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach + abs(dy), reach - abs(dy) + 1):
            if (dy, dx) == (0, 0):
                continue
            # other[b, y, x] = lab[b, y + dy, x + dx] where that is inside the tile
            ys, yo = slice(max(0, -dy), H - max(0, dy)), slice(max(0, dy), H + min(0, dy))
            xs, xo = slice(max(0, -dx), W - max(0, dx)), slice(max(0, dx), W + min(0, dx))
            out[:, ys, xs] |= foreground[:, yo, xo] & (lab[:, yo, xo] != lab[:, ys, xs])
    return out & foreground
