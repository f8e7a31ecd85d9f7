"""The paper's pixel weight map, eq. (2) of Ronneberger et al. 2015:

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

d1, d2: Euclidean distances (pixels) from a background pixel x to the nearest and the
second-nearest cell (instance). The border term is large in the narrow gaps between
touching cells and forces the network to learn them. It is applied to background pixels
only, as in the paper's Fig. 3d (inside a cell d1 would be 0 and the term would also light
up the cell's own edge, which is not a border to learn).

w_c balances the class frequencies of the mask: w_c = f_fg / f_k for a pixel of class k,
f_k the fraction of pixels of class k, so that foreground pixels weigh exactly 1 and
background pixels f_fg / f_bg (3.6 on average on ISBI 2012, where membranes are 22 %).
That is each image's own balance, as in the paper; ``background`` (and
``TrainConfig.class_balance``) fixes it instead: one ratio for the whole training set, or 1.

The instances, their carved borders and d1, d2 come from :mod:`biounet.labels`; this
module holds the weights alone (class balance, border term, a cache per training set).

Limiting cases (never NaN): fewer than two cells -> the border term is 0 (d2 is infinite);
no foreground or no background -> w_c = 1 everywhere.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from . import labels
from .io import InputError


def class_balance(foreground: np.ndarray, background: float | None = None) -> np.ndarray:
    """w_c: (H, W) float32; foreground pixels 1, background f_fg / f_bg of this image (1 if a
    class is absent), or ``background`` where given (a weight fixed for every image)."""
    if background is not None:
        return np.where(foreground, 1.0, background).astype(np.float32)
    n_fg = int(np.count_nonzero(foreground))
    n_bg = foreground.size - n_fg
    if n_fg == 0 or n_bg == 0:
        return np.ones(foreground.shape, np.float32)
    return np.where(foreground, 1.0, n_fg / n_bg).astype(np.float32)


def _cutoff(w0: float, sigma: float, tol: float = 1e-6) -> float:
    """Distance d beyond which w0 * exp(-d**2 / (2 sigma**2)) < tol."""
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    separate: bool = True,
    background: float | None = None,
) -> np.ndarray:
    """The paper's w(x) for a binary mask or an instance-label image.

    Args:
        mask: (H, W) binary (0/255, 0/1, bool) mask, or integer instance labels (0 = bg).
        w0: weight of the border term (paper: 10).
        sigma: its width in pixels (paper: 5).
        separate: carve a background border between touching instances first.
        background: w_c of background pixels; None (the paper): this image's f_fg / f_bg.

    Returns (H, W) float32, w >= w_c > 0 everywhere; w == w_c on cells.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"expected an (H, W) mask, got shape {mask.shape}")
    if sigma <= 0 or w0 < 0:
        raise InputError(f"need sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    inst = labels.instances_from_mask(mask)
    if separate:
        inst = labels.separate_touching(inst)
    wc = class_balance(inst != 0, background)
    if w0 == 0:
        return wc
    d1, d2 = labels.nearest_two_distances(inst, _cutoff(w0, sigma))
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))  # exp(-inf) = 0
    return (wc + np.where(inst == 0, border, 0.0)).astype(np.float32)


_MEMORY: dict[str, list[np.ndarray]] = {}


def background_weights(masks: list[np.ndarray], balance: str) -> list[float | None]:
    """w_c of background pixels for each mask under a ``class_balance`` setting: "image"
    (the paper) None, i.e. each image's own f_fg / f_bg; "dataset" one f_fg / f_bg over all
    the masks (a tile's weights then no longer depend on how crowded its image is); "none"
    1 (the border term alone). Frequencies are those of the carved foreground."""
    if balance == "image":
        return [None] * len(masks)
    if balance == "none":
        return [1.0] * len(masks)
    if balance != "dataset":
        raise ValueError(f"class_balance must be image, dataset or none, got {balance!r}")
    carved = (labels.separate_touching(labels.instances_from_mask(m)) for m in masks)
    fg = sum(int(np.count_nonzero(c)) for c in carved)
    total = sum(m.size for m in masks)
    return [fg / (total - fg) if 0 < fg < total else 1.0] * len(masks)


def cached_weight_maps(
    masks: list[np.ndarray],
    w0: float,
    sigma: float,
    folder: str | Path | None = None,
    balance: str = "image",
) -> list[np.ndarray]:
    """:func:`weight_map` of each mask, computed once per training set, with the
    ``balance`` of :func:`background_weights`.

    Cached in memory (per process) and, if ``folder`` is given, on disk as
    ``weight-maps-<digest>.npz``, the digest covering the masks, (w0, sigma) and the balance.
    """
    key = f"{w0!r},{sigma!r}" + ("" if balance == "image" else f",{balance}")
    h = hashlib.sha256(key.encode())
    for m in masks:
        h.update(f"{m.shape}{m.dtype}".encode())
        h.update(np.ascontiguousarray(m).tobytes())
    digest = h.hexdigest()[:16]
    path = Path(folder) / f"weight-maps-{digest}.npz" if folder is not None else None
    if digest in _MEMORY:
        maps = _MEMORY[digest]
    elif path is not None and path.is_file():
        with np.load(path) as f:
            maps = [f[f"w{i}"] for i in range(len(masks))]
    else:
        backgrounds = background_weights(masks, balance)
        maps = [
            weight_map(m, w0, sigma, background=b) for m, b in zip(masks, backgrounds, strict=True)
        ]
    if path is not None and not path.is_file():  # every run folder gets its copy
        from .io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"w{i}": m for i, m in enumerate(maps)})
    _MEMORY[digest] = maps
    return maps
