"""Probabilities -> instance labels (H, W), 0 = background, 1..N objects.

- :func:`connected_components`: the 4-connected components of a thresholded map.
- :func:`binary_instances`: for the ``binary`` target (the paper's carved borders): the
  components, each grown back over the carved gap between touching objects, so the
  separation that training needed does not shrink the objects.
- :func:`contour_instances`: for the ``contour`` target: seeds from the interior class
  (optionally one per peak of P(interior), :func:`peak_seeds`, and a seed that is not
  convex enough split at its distance-transform peaks), a seeded watershed over the
  foreground.
- :func:`filter_objects`: the contour objects' size and peak filters alone.
- :func:`instances`: picks one of the last two from the array's shape.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops
from skimage.morphology import h_maxima, reconstruction
from skimage.segmentation import expand_labels, watershed

from .labels import EIGHT_CONNECTED, FOUR_CONNECTED, nearest_two_distances


def _compact(labels: np.ndarray, n: int) -> np.ndarray:
    return labels.astype(np.uint16 if n < 2**16 else np.uint32)


def _drop_small(
    labels: np.ndarray,
    min_size: int,
    peak: np.ndarray | None = None,
    min_peak: float = 0.0,
    min_fraction: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Objects of fewer than ``min_size`` pixels, and objects where ``peak`` (a probability
    map) never reaches ``min_peak``, removed; ids renumbered 1..N.

    With ``min_fraction`` > 0 the size limit follows the image's own scale: an object is
    kept from min(``min_size``, ``min_fraction`` x the median size of the image's objects
    that pass the peak filter and have at least ``min_size`` pixels, or of all of them if
    none is that large) pixels up. An image of small nuclei keeps its small nuclei; no
    image demands more than ``min_size``.
    """
    sizes = np.bincount(labels.ravel())
    keep = sizes >= 1
    if peak is not None and min_peak > 0 and sizes.size > 1:
        highest = ndimage.maximum(peak, labels, index=np.arange(sizes.size))
        keep &= np.asarray(highest) >= min_peak
    keep[0] = False
    limit = float(min_size)
    if min_fraction > 0 and keep.any():
        candidates = sizes[keep]
        large = candidates[candidates >= min_size]
        reference = float(np.median(large if large.size else candidates))
        limit = min(limit, min_fraction * reference)
    keep &= sizes >= max(1.0, limit)
    new_id = np.zeros(len(sizes), np.int64)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_id[labels], int(keep.sum())


def connected_components(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) foreground probability -> (H, W) instance labels 1..N of the 4-connected
    components of ``prob > threshold`` (0 = background); uint16, or uint32 past 65535."""
    labels, n = ndimage.label(prob > threshold, structure=FOUR_CONNECTED)
    return _compact(labels, n)


def binary_instances(
    prob: np.ndarray,
    threshold: float = 0.5,
    *,
    gap: float = 2.0,
    min_size: int = 0,
    min_peak: float = 0.0,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """Instances from a ``binary``-target foreground probability (H, W).

    The 4-connected components of ``prob > threshold`` are the objects. A background pixel
    lying in a gap of at most ``gap`` pixels between two objects (distances to the nearest
    and second-nearest object d1 + d2 <= gap + 1) joins the nearest object: this undoes the
    one-pixel border carved on each side of a touching edge for training (gap 2). Objects
    under ``min_size`` pixels (with ``min_fraction`` > 0, under that fraction of the image's
    median object if that is smaller: see :func:`_drop_small`), and objects whose highest
    probability is below ``min_peak`` (faint debris), are dropped. Returns uint16 (uint32
    past 65535 objects).
    """
    labels, n = ndimage.label(prob > threshold, structure=FOUR_CONNECTED)
    if min_size > 1 or min_peak > 0:
        labels, n = _drop_small(labels, min_size, prob, min_peak, min_fraction)
    if gap > 0 and n > 1:
        d1, d2 = nearest_two_distances(labels, max_distance=gap + 1)
        in_gap = (labels == 0) & (d1 + d2 <= gap + 1)
        grown = expand_labels(labels, distance=gap)
        labels = np.where(in_gap, grown, labels)
    return _compact(labels, n)


def split_seeds(
    seeds: np.ndarray, n: int, solidity: float, depth: float = 3.0, min_area: int = 30
) -> tuple[np.ndarray, int]:
    """Split seeds that look like two touching blobs: a seed (label 1..n in ``seeds``) of at
    least ``min_area`` pixels whose solidity (area / convex hull area) is below
    ``solidity`` is cut at its distance-transform peaks, the regional maxima of its
    Euclidean distance to the outside that stand at least ``depth`` pixels above the
    saddle to the next one (h-maxima), by a watershed of the negated distance. A seed with
    one such peak stays whole. New pieces get ids n+1, n+2, ...; returns (seeds, count).
    ``solidity`` 0 splits nothing."""
    if solidity <= 0 or n == 0:
        return seeds, n
    seeds = seeds.copy()
    eight = EIGHT_CONNECTED
    for region in regionprops(seeds):
        if region.area < min_area or region.solidity >= solidity:
            continue
        window = seeds[region.slice]
        inside = window == region.label
        # the distance to the outside of this seed alone (the window edge counts as outside)
        dist = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        peaks, k = ndimage.label(h_maxima(dist, depth).astype(bool) & inside, structure=eight)
        if k < 2:
            continue
        pieces = watershed(-dist, peaks, mask=inside)
        for piece in range(2, k + 1):
            n += 1
            window[pieces == piece] = n
    return seeds, n


# P(interior) is smoothed by a Gaussian of this many pixels before its peaks are found
PEAK_SMOOTHING = 1.0
# peaks are found on P(interior) in steps of 1 / PEAK_LEVELS (integer h-maxima are exact)
PEAK_LEVELS = 1000


def peak_seeds(
    interior: np.ndarray, threshold: float, dynamics: float, within: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """One seed per peak of the interior probability ``interior`` (H, W), smoothed by a
    Gaussian of ``PEAK_SMOOTHING`` px, in the region where it exceeds ``threshold`` (and
    ``within``, if given): a peak counts when it stands at least ``dynamics`` above the
    saddle that joins it to a higher one in its 8-connected component of the region (its
    dynamics, in steps of 1 / ``PEAK_LEVELS``). Two nuclei whose interiors meet at a ridge
    that dips ``dynamics`` below both peaks get a seed each, where the thresholded region
    gives them one; peaks as high as each other joined by a shallower ridge share one seed.
    Each seed is its peak's dome (the h-dome transform: the part of the map above the
    level ``dynamics`` under the peak, up to its saddles); a component whose top is under
    ``dynamics`` is one seed. Returns (seeds labelled 1..n, n)."""
    smooth = ndimage.gaussian_filter(np.asarray(interior, np.float32), PEAK_SMOOTHING)
    region = smooth > threshold
    if within is not None:
        region &= np.asarray(within, bool)
    levels = np.rint(np.where(region, smooth, 0.0) * PEAK_LEVELS).astype(np.int32)
    h = max(1, round(dynamics * PEAK_LEVELS))
    eight = EIGHT_CONNECTED
    parts, m = ndimage.label(region, structure=eight)
    if m == 0:
        return parts, 0
    top = np.zeros(m + 1, np.int64)
    np.maximum.at(top, parts[region], levels[region])
    # components with one plateau of local maxima have one peak, and their dome is one
    # superlevel set; only those with several need the h-dome transform
    flat = (levels == ndimage.maximum_filter(levels, footprint=eight)) & region
    plateaus, q = ndimage.label(flat, structure=eight)
    owner = np.zeros(q + 1, np.int64)
    owner[plateaus[flat]] = parts[flat]  # a plateau lies in one component
    several = np.bincount(owner[1:], minlength=m + 1) > 1
    low = top < h  # no peak stands dynamics high: the whole component is one seed
    seeds = np.where(low[parts], True, levels > top[parts] - h) & region
    for k, box in enumerate(ndimage.find_objects(parts), start=1):
        if not several[k] or low[k]:
            continue
        inside = parts[box] == k
        crop = np.pad(np.where(inside, levels[box], 0), 1)
        dome = crop - reconstruction(crop - h, crop, method="dilation", footprint=eight)
        domes, j = ndimage.label(dome > 0, structure=eight)
        tall = np.zeros(j + 1, bool)
        tall[domes[dome >= h]] = True  # a dome is at most h high: tall ones reach it
        tall[0] = False
        seeds[box][inside] = tall[domes[1:-1, 1:-1]][inside]
    return ndimage.label(seeds, structure=eight)


def contour_instances(
    probs: np.ndarray,
    *,
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_size: int = 0,
    min_peak: float = 0.0,
    min_fraction: float = 0.0,
    split_solidity: float = 0.0,
    split_depth: float = 3.0,
    seed_dynamics: float = 0.0,
) -> np.ndarray:
    """Instances from ``contour``-target class probabilities (3, H, W): background,
    interior, boundary.

    Foreground: P(background) < 1 - ``foreground_threshold``. Seeds: the 4-connected
    components of P(interior) > ``seed_threshold`` inside it; with ``seed_dynamics`` > 0,
    the region P(interior) > ``seed_threshold`` (P(interior) smoothed by a Gaussian of 1 px)
    is seeded once per peak of P(interior) standing that far above its saddle to a higher
    one instead (:func:`peak_seeds`); with ``split_solidity`` > 0,
    a seed less solid than that is split at its distance-transform peaks (``split_depth``:
    see :func:`split_seeds`), which separates two nuclei whose interiors meet at a neck.
    A watershed of 1 - P(interior)
    from the seeds fills the foreground; foreground regions no seed reaches become objects
    of their own. Objects under ``min_size`` pixels (with ``min_fraction`` > 0, under that
    fraction of the image's median object if that is smaller: see :func:`_drop_small`), and
    objects whose highest P(interior) is below ``min_peak`` (faint debris; with ``min_peak
    >= seed_threshold`` the unseeded regions too), are dropped. uint16 (uint32 past 65535).
    """
    if probs.ndim != 3 or probs.shape[0] != 3:
        raise ValueError(f"expected (3, H, W) class probabilities, got shape {probs.shape}")
    foreground = probs[0] < 1.0 - foreground_threshold
    if seed_dynamics > 0:
        seeds, n = peak_seeds(probs[1], seed_threshold, seed_dynamics, within=foreground)
    else:
        seeds, n = ndimage.label((probs[1] > seed_threshold) & foreground, structure=FOUR_CONNECTED)
    seeds, n = split_seeds(seeds, n, split_solidity, split_depth)
    labels = watershed(1.0 - probs[1], seeds, mask=foreground) if n else seeds
    orphans, m = ndimage.label(foreground & (labels == 0), structure=FOUR_CONNECTED)
    labels = np.where(orphans > 0, orphans + n, labels)
    n += m
    return filter_objects(labels, probs[1], min_size, min_peak, min_fraction)


def filter_objects(
    labels: np.ndarray,
    peak: np.ndarray,
    min_size: int = 0,
    min_peak: float = 0.0,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """Instance labels (H, W) without the objects that :func:`contour_instances`' filters
    drop (``min_size``, ``min_fraction`` and, against the probability map ``peak``,
    ``min_peak``: see :func:`_drop_small`), the rest renumbered 1..N (with no filter on, the
    labels as they are); uint16 (uint32 past 65535). ``contour_instances(probs,
    **filters)`` equals ``filter_objects(contour_instances(probs), probs[1], **filters)``:
    a sweep of the filters needs one watershed per seed setting."""
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    if min_size > 1 or min_peak > 0:
        labels, n = _drop_small(labels.astype(np.int64, copy=False), min_size, peak, min_peak,
                                min_fraction)  # fmt: skip
    return _compact(labels, n)


def instances(probs: np.ndarray, threshold: float = 0.5, **options) -> np.ndarray:
    """Instance labels (H, W) from a network's probabilities.

    ``probs`` (H, W) is a ``binary`` model's foreground probability:
    :func:`binary_instances` (options ``gap``, ``min_size``, ``min_peak``,
    ``min_fraction``; ``gap=0`` gives
    the plain connected components, right for a ``mask`` model such as the ISBI one).
    (3, H, W) are a ``contour`` model's class probabilities: :func:`contour_instances`
    (``threshold`` is its foreground threshold; options ``seed_threshold``, ``min_size``,
    ``min_peak``, ``min_fraction``, ``split_solidity``, ``split_depth``, ``seed_dynamics``). A
    model's own settings: ``preset.inference.instance_options(method)``
    (:class:`biounet.InferenceConfig`); :func:`biounet.segment` applies them.
    """
    probs = np.asarray(probs)
    if probs.ndim == 2:
        return binary_instances(probs, threshold, **options)
    if probs.ndim == 3 and probs.shape[0] == 3:
        return contour_instances(probs, foreground_threshold=threshold, **options)
    raise ValueError(
        f"expected (H, W) foreground or (3, H, W) contour probabilities, got {probs.shape}"
    )


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """The equivalent diameter sqrt(4 area / pi), in pixels, of each object of an instance
    image (0 = background), in id order; ids with no pixels are left out."""
    sizes = np.bincount(np.asarray(labels).ravel())[1:]
    return np.sqrt(4.0 * sizes[sizes > 0] / np.pi)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) instance labels -> ``shape`` by nearest neighbour (the pixel whose centre is
    nearest), renumbered 1..N where objects vanished; the dtype is kept."""
    H, W = labels.shape
    h, w = shape
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.intp), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.intp), W - 1)
    out = labels[rows[:, None], cols[None, :]]
    had = np.bincount(labels.ravel()) > 0
    present = np.bincount(out.ravel(), minlength=had.size) > 0
    had[0] = present[0] = False
    if present.sum() < had.sum():  # some vanished
        new_id = np.zeros(present.size, labels.dtype)
        new_id[present] = np.arange(1, int(present.sum()) + 1)
        out = new_id[out]
    return out
