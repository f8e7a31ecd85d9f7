"""Probabilities -> instance labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def connected_components(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) foreground probability -> (H, W) instance labels 1..N of the 4-connected
    components of ``prob > threshold`` (0 = background); uint16, or uint32 past 65535."""
    labels, n = ndimage.label(prob > threshold, structure=FOUR_CONNECTED)
    return labels.astype(np.uint16 if n < 2**16 else np.uint32)
