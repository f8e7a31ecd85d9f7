"""Channel specs: how many channels an image has, and which ones ``--channels`` picks.

An image is (H, W) (one channel) or (C, H, W) (C channels). :func:`parse_channels` turns
``--channels`` text into a spec (None: as stored; ``"rgb"``: colour as 3 channels; or a
tuple of indices), which :func:`pick_channels` applies to one image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

Channels = str | tuple[int, ...] | None  # parse_channels' result: None, "rgb" or indices


def channels_of(image: np.ndarray) -> int:
    """Channels of an (H, W) (1) or (C, H, W) (C) image."""
    return 1 if image.ndim == 2 else int(image.shape[0])


def parse_channels(spec: str | None) -> Channels:
    """``--channels`` text -> None (as stored: gray, or a TIFF's C axis), ``"rgb"`` (colour
    kept as 3 channels, alpha dropped) or a tuple of channel indices in the order given
    (``"1"`` -> (1,), ``"0,2"`` -> (0, 2)). InputError for anything else."""
    if spec is None:
        return None
    text = str(spec).strip().lower()
    if text in ("", "all", "none"):
        return None
    if text == "rgb":
        return "rgb"
    try:
        picked = tuple(int(p) for p in text.split(","))
    except ValueError:
        picked = ()
    if not picked or min(picked) < 0:
        raise InputError(f"--channels {spec!r}: expected channel indices such as 1 or 0,2, "
                         "or rgb")  # fmt: skip
    if len(set(picked)) != len(picked):
        raise InputError(f"--channels {spec!r}: a channel is named twice")
    return picked


def channels_text(channels: int) -> str:
    """"1 channel", "3 channels"."""
    return f"{channels} channel" + ("s" if channels != 1 else "")


def pick_channels(image: np.ndarray, picked: Channels, path: Path) -> np.ndarray:
    """``image`` (H, W) or (C, H, W) with ``picked``'s channels (parse_channels), or
    InputError naming ``path``: a gray image given ``"rgb"``, an index it lacks."""
    n = channels_of(image)
    if picked == "rgb":
        if n != 3:
            raise InputError(f"{path}: --channels rgb needs a colour image; this one has "
                             f"{channels_text(n)}")  # fmt: skip
        return image
    if max(picked) >= n:
        raise InputError(f"{path}: --channels {','.join(map(str, picked))}: the image has "
                         f"{channels_text(n)} (0..{n - 1})")  # fmt: skip
    stack = image[None] if image.ndim == 2 else image
    out = stack[list(picked)]
    return out[0] if len(picked) == 1 else out
