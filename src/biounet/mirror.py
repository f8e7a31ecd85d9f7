"""Mirrored context: an image continued past its edges by reflection, as numpy's "reflect"
padding continues it (the edge pixel is not repeated; a pad longer than the image reflects
again). One rule, as index arithmetic, so that a window of an array in memory
(:func:`mirrored_window`), a padded copy (:func:`mirror_pad`) and a window of an image on
disk (``large.LazyImage.window``) are the same pixels.
"""

from __future__ import annotations

import numpy as np


def mirrored(index: np.ndarray, n: int) -> np.ndarray:
    """Indices of an axis of length ``n`` mirrored into 0..n-1 as numpy's "reflect" padding
    maps them (period 2 (n - 1); 0 for n = 1)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    i = np.abs(index) % period
    return np.where(i >= n, period - i, i)


def mirrored_window(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(..., y1 - y0, x1 - x0) window of an (..., H, W) array whose rows y0..y1 and columns
    x0..x1 may reach past its edges, mirrored there; a view where the window lies inside."""
    H, W = image.shape[-2:]
    rows = slice(y0, y1) if y0 >= 0 and y1 <= H else mirrored(np.arange(y0, y1), H)
    cols = slice(x0, x1) if x0 >= 0 and x1 <= W else mirrored(np.arange(x0, x1), W)
    return image[..., rows, :][..., cols]


def mirror_pad(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """(..., H, W) -> (..., H + top + bottom, W + left + right) copy, context mirrored at
    the borders (each channel of a (C, H, W) image alike)."""
    H, W = image.shape[-2:]
    rows, cols = mirrored(np.arange(-top, H + bottom), H), mirrored(np.arange(-left, W + right), W)
    return image[..., rows, :][..., cols]  # fancy indices: always a new array
