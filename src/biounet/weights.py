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

Multi-class masks (``class_map=True``): the cells are the 4-connected components of each
foreground class 1..C-1, so two touching objects of different classes are two cells with a
border between them. Pixels that are not labelled (``ignored``) are neither cells nor
background: they are no cell for d1, d2, do not count in the class frequencies and weigh 0.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import labels
from .errors import InputError
from .io import atomic_path


def class_balance(
    foreground: np.ndarray, background: float | None = None, ignored: np.ndarray | None = None
) -> np.ndarray:
    """w_c: (H, W) float32; foreground pixels 1, background f_fg / f_bg of this image (1 if a
    class is absent), or ``background`` where given (a weight fixed for every image).
    ``ignored``: (H, W) bool pixels left out of the frequencies (their weight is set by the
    caller)."""
    if background is not None:
        return np.where(foreground, 1.0, background).astype(np.float32)
    n_fg = int(np.count_nonzero(foreground))
    labelled = foreground.size if ignored is None else foreground.size - int(ignored.sum())
    n_bg = labelled - n_fg
    if n_fg == 0 or n_bg == 0:
        return np.ones(foreground.shape, np.float32)
    return np.where(foreground, 1.0, n_fg / n_bg).astype(np.float32)


def _cutoff(w0: float, sigma: float, tol: float = 1e-6) -> float:
    """Distance d beyond which w0 * exp(-d**2 / (2 sigma**2)) < tol."""
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def cells(
    mask: np.ndarray, *, class_map: bool = False, ignored: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) int32 cell ids 1..N, 0 = background, of a mask or label image
    (:func:`biounet.labels.instances_from_mask`), or with ``class_map`` of a class map
    0..C-1: the 4-connected components of each foreground class, numbered class by class.
    ``ignored`` (H, W) bool pixels are no cell (id 0)."""
    mask = np.asarray(mask)
    if ignored is not None:
        mask = np.where(ignored, 0, mask)
    if not class_map:
        return labels.instances_from_mask(mask)
    out = np.zeros(mask.shape, np.int32)
    n = 0
    for c in np.unique(mask[mask != 0]):
        comps, k = ndimage.label(mask == c, structure=labels.FOUR_CONNECTED)
        out[comps != 0] = comps[comps != 0] + n
        n += k
    return out


def weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    separate: bool = True,
    background: float | None = None,
    class_map: bool = False,
    ignored: np.ndarray | None = None,
) -> np.ndarray:
    """The paper's w(x) for a binary mask, an instance-label image or a class map.

    Args:
        mask: (H, W) binary (0/255, 0/1, bool) mask, or integer instance labels (0 = bg),
            or with ``class_map`` classes 0..C-1.
        w0: weight of the border term (paper: 10).
        sigma: its width in pixels (paper: 5).
        separate: carve a background border between touching instances first.
        background: w_c of background pixels; None (the paper): this image's f_fg / f_bg.
        class_map: the cells are the components of each foreground class (:func:`cells`).
        ignored: (H, W) bool pixels that are not labelled: neither cells nor background
            (no cell for d1, d2, left out of f_fg / f_bg); their weight is 0.

    Returns (H, W) float32, w >= w_c > 0 everywhere but on ignored pixels (0); w == w_c
    on cells.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"expected an (H, W) mask, got shape {mask.shape}")
    if sigma <= 0 or w0 < 0:
        raise InputError(f"need sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    inst = cells(mask, class_map=class_map, ignored=ignored)
    if separate:
        inst = labels.separate_touching(inst)
    wc = class_balance(inst != 0, background, ignored)
    if w0 > 0:
        d1, d2 = labels.nearest_two_distances(inst, _cutoff(w0, sigma))
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))  # exp(-inf) = 0
        wc = (wc + np.where(inst == 0, border, 0.0)).astype(np.float32)
    if ignored is not None:
        wc[ignored] = 0.0
    return wc


_MEMORY: dict[str, list[np.ndarray]] = {}


def background_weights(
    masks: list[np.ndarray],
    balance: str,
    *,
    class_map: bool = False,
    ignored: list[np.ndarray] | None = None,
) -> list[float | None]:
    """w_c of background pixels for each mask under a ``class_balance`` setting: "image"
    (the paper) None, i.e. each image's own f_fg / f_bg; "dataset" one f_fg / f_bg over all
    the masks (a tile's weights then no longer depend on how crowded its image is); "none"
    1 (the border term alone). Frequencies are those of the carved foreground, among the
    labelled pixels (``class_map``, ``ignored``: as in :func:`weight_map`)."""
    if balance == "image":
        return [None] * len(masks)
    if balance == "none":
        return [1.0] * len(masks)
    if balance != "dataset":
        raise ValueError(f"class_balance must be image, dataset or none, got {balance!r}")
    ignored = ignored or [None] * len(masks)
    carved = (labels.separate_touching(cells(m, class_map=class_map, ignored=ig))
              for m, ig in zip(masks, ignored, strict=True))  # fmt: skip
    fg = sum(int(np.count_nonzero(c)) for c in carved)
    pairs = zip(masks, ignored, strict=True)
    total = sum(m.size - (0 if ig is None else int(ig.sum())) for m, ig in pairs)
    return [fg / (total - fg) if 0 < fg < total else 1.0] * len(masks)


def cached_weight_maps(
    masks: list[np.ndarray],
    w0: float,
    sigma: float,
    folder: str | Path | None = None,
    balance: str = "image",
    *,
    class_map: bool = False,
    ignored: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """:func:`weight_map` of each mask, computed once per training set, with the
    ``balance`` of :func:`background_weights` (``class_map``, ``ignored``: one (H, W) bool
    array per mask, as in :func:`weight_map`).

    Cached in memory (per process) and, if ``folder`` is given, on disk as
    ``weight-maps-<digest>.npz``, the digest covering the masks, (w0, sigma), the balance,
    the class-map reading and the ignored pixels.
    """
    key = f"{w0!r},{sigma!r}" + ("" if balance == "image" else f",{balance}")
    key += ",classes" if class_map else ""
    h = hashlib.sha256(key.encode())
    for m in masks:
        h.update(f"{m.shape}{m.dtype}".encode())
        h.update(np.ascontiguousarray(m).tobytes())
    for ig in ignored or ():
        h.update(b"ignored" if ig is None else np.packbits(ig).tobytes())
    digest = h.hexdigest()[:16]
    path = Path(folder) / f"weight-maps-{digest}.npz" if folder is not None else None
    if digest in _MEMORY:
        maps = _MEMORY[digest]
    elif path is not None and path.is_file():
        with np.load(path) as f:
            maps = [f[f"w{i}"] for i in range(len(masks))]
    else:
        backgrounds = background_weights(masks, balance, class_map=class_map, ignored=ignored)
        maps = [
            weight_map(m, w0, sigma, background=b, class_map=class_map, ignored=ig)
            for m, b, ig in zip(masks, backgrounds, ignored or [None] * len(masks), strict=True)
        ]
    if path is not None and not path.is_file():  # every run folder gets its copy
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"w{i}": m for i, m in enumerate(maps)})
    _MEMORY[digest] = maps
    return maps
