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
from scipy import ndimage

from .config import TARGETS
from .labels import FOUR_CONNECTED, separate_touching

__all__ = ["TARGETS", "NUM_CLASSES", "make_target", "binary_target", "contour_target"]
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
