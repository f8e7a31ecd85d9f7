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

Limiting cases (never NaN): fewer than two cells -> the border term is 0 (d2 is infinite);
no foreground or no background -> w_c = 1 everywhere.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import InputError

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def instances_from_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) int32 instance labels 1..N from a mask; 0 = background.

    A binary mask (0/255 or 0/1, or bool) gives the 4-connected components of its
    foreground; any other integer image is taken as instance labels and kept as is.
    """
    if mask.dtype.kind == "f":
        if not np.all(mask == np.round(mask)):
            raise InputError("label image is not integer: instance labels must be whole numbers")
        mask = mask.astype(np.int64)
    if mask.dtype.kind not in "biu":
        raise InputError(f"label image has dtype {mask.dtype}; expected integers")
    values = np.unique(mask)
    if values.min() < 0:
        raise InputError(f"label image has negative value {values.min()}")
    if np.isin(values, (0, 1)).all() or np.isin(values, (0, 255)).all():
        labels, _ = ndimage.label(mask != 0, structure=FOUR_CONNECTED)
        return labels.astype(np.int32)
    return mask.astype(np.int32)


def separate_touching(instances: np.ndarray) -> np.ndarray:
    """Instances with a background border carved between touching ones.

    A foreground pixel whose 4-neighbour belongs to a different instance becomes
    background (0), as in the paper. Returns (H, W) int32.
    """
    lab = instances
    touching = np.zeros(lab.shape, bool)
    for axis in (0, 1):
        a = lab.take(range(lab.shape[axis] - 1), axis=axis)
        b = lab.take(range(1, lab.shape[axis]), axis=axis)
        edge = (a != b) & (a != 0) & (b != 0)
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis] = slice(0, lab.shape[axis] - 1)
        hi[axis] = slice(1, lab.shape[axis])
        touching[tuple(lo)] |= edge
        touching[tuple(hi)] |= edge
    return np.where(touching, 0, lab).astype(np.int32)


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


def nearest_two_distances(
    instances: np.ndarray, max_distance: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2: (H, W) float64 distances to the nearest and second-nearest instance.

    Exact wherever the distance is below ``max_distance``; beyond it the value may be
    ``inf``. Each instance's distance transform is computed only in its bounding box grown
    by ``max_distance``, so the cost follows the cells' sizes, not their number times the
    image.
    """
    H, W = instances.shape
    d1 = np.full((H, W), np.inf)
    d2 = np.full((H, W), np.inf)
    reach = H + W if math.isinf(max_distance) else int(math.ceil(max_distance)) + 1
    for i, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        y0, y1 = max(0, box[0].start - reach), min(H, box[0].stop + reach)
        x0, x1 = max(0, box[1].start - reach), min(W, box[1].stop + reach)
        crop = instances[y0:y1, x0:x1]
        d = ndimage.distance_transform_edt(crop != i)
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]  # views: updated in place
        np.minimum(b, np.maximum(a, d), out=b)
        np.minimum(a, d, out=a)
    return d1, d2


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
    inst = instances_from_mask(mask)
    if separate:
        inst = separate_touching(inst)
    wc = class_balance(inst != 0, background)
    if w0 == 0:
        return wc
    d1, d2 = nearest_two_distances(inst, _cutoff(w0, sigma))
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
    fg = sum(int(np.count_nonzero(separate_touching(instances_from_mask(m)))) for m in masks)
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
