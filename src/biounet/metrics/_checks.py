"""Argument checks shared by the metric modules."""

from __future__ import annotations

import numpy as np


def same_shape(a: np.ndarray, b: np.ndarray) -> None:
    """ValueError showing both shapes unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
