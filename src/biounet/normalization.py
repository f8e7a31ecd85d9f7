"""Z-score normalisation, the network's view of an image: (x - mean) / std per channel in
float32, negated where the objects are dark. One :class:`Normalization` applies it, whether
its statistics come from the whole array (:func:`normalize`) or from passes over an image
that stays on disk (``large.streamed_normalization``), so both give the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """The normalisation of one channel: (x - mean) / std in float32 (std 1 for a constant
    image), negated where ``negate``."""

    mean: float
    std: float
    negate: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(..., H, W) any dtype -> (..., H, W) float32, a new array."""
        return self.applied(x.astype(np.float32))

    def applied(self, x: np.ndarray) -> np.ndarray:
        """(..., H, W) float32 ``x`` normalised in place, and returned."""
        x -= self.mean
        x /= self.std if self.std > 1e-8 else 1.0
        if self.negate:
            np.negative(x, out=x)
        return x


def normalize(image: np.ndarray, mode: str = "zscore") -> np.ndarray:
    """(H, W) any dtype -> (H, W) float32 with zero mean and unit variance (per image);
    (C, H, W) -> (C, H, W), each channel on its own.

    ``mode`` "zscore-bright" also negates an image whose median exceeds its mean (a bright
    background dominating dark objects, as in inverted or stained images), so objects are
    bright in every image; "zscore-invert" negates every image (objects known to be dark).
    A constant image maps to zeros. Works in place on one float32 copy (large images).
    """
    if image.ndim == 3:
        return np.stack([normalize(c, mode) for c in image])
    x = image.astype(np.float32)  # always a copy
    Normalization(float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))).applied(x)
    if mode == "zscore-invert" or (mode == "zscore-bright" and float(np.median(x)) > 0):
        np.negative(x, out=x)
    return x
