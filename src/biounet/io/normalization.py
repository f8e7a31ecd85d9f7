"""Gray-value normalisation of an image before it meets the network."""

from __future__ import annotations

import numpy as np


def normalize(image: np.ndarray, mode: str = "zscore") -> np.ndarray:
    """(H, W) any dtype -> (H, W) float32 with zero mean and unit variance (per image);
    (C, H, W) -> (C, H, W), each channel on its own.

    ``mode`` "zscore-bright" also negates an image whose median exceeds its mean (a bright
    background dominating dark objects, as in inverted or stained images), so objects are
    bright in every image; "zscore-invert" negates every image (objects known to be dark).
    A constant image maps to zeros. Works in place on one float32
    copy (large images).
    """
    if image.ndim == 3:
        return np.stack([normalize(c, mode) for c in image])
    x = image.astype(np.float32)  # always a copy
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    x -= mean
    x /= std if std > 1e-8 else 1.0
    if mode == "zscore-invert" or (mode == "zscore-bright" and float(np.median(x)) > 0):
        np.negative(x, out=x)
    return x
