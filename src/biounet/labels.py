"""Label geometry and mask conversion: stored masks -> class maps and instance ids; objects
in (H, W) label images, how they touch, how far apart they are.

A label image is (H, W) integer: 0 = background, each positive id one object (instance). A
class map is (H, W) uint8: class indices 0..C-1, :data:`IGNORE_INDEX` (255) where a pixel
is not labelled. Everything here is pure numpy / scipy on such arrays, shared by the weight
map (:mod:`biounet.weights`), the training targets (:mod:`biounet.targets`), prediction
post-processing (:mod:`biounet.instances`), the metrics and file reading (:mod:`biounet.io`,
which calls the conversions on the masks it reads).

- :data:`FOUR_CONNECTED`, :data:`EIGHT_CONNECTED`: (3, 3) bool neighbourhoods for
  ``scipy.ndimage.label``. Objects are 4-connected throughout the package (two pixels
  touching only at a corner are two objects), as in the paper's carved borders.
- :func:`mask_to_classes`: a stored mask (0/255, 0/1, class indices; soft masks with a
  threshold) -> (H, W) uint8 class map, or an InputError naming the mask.
- :func:`labels_to_instances`, :func:`instances_from_mask`: a stored mask or label image ->
  (H, W) int32 instance ids (a binary mask 0/255 or 0/1 gives its 4-connected components).
- :func:`separate_touching`: a background border carved between touching objects.
- :func:`nearest_two_distances`: d1, d2, the Euclidean distances (pixels) to the nearest
  and second-nearest object, as in the paper's w(x) (Ronneberger et al. 2015, eq. 2).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .errors import InputError

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)  # (3, 3) bool: the cross
EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)  # (3, 3) bool: all True
IGNORE_INDEX = 255  # class-map value of pixels to leave out (mask_to_classes' ``ignore``)
MAX_CLASSES = IGNORE_INDEX  # class maps are uint8 and IGNORE_INDEX is no class: 0..254
THRESHOLD_HINT = (
    "; for soft or anti-aliased masks add --label-threshold T (value > T is foreground)"
)


def labels_to_instances(labels: np.ndarray, where: str = "label image") -> tuple[np.ndarray, bool]:
    """Instance ids from a stored mask or label image, and whether it was a binary mask
    whose foreground had to be split into 4-connected components.

    Args:
        labels: (H, W) bool, integer, or float holding whole numbers.
        where: names the image in error messages (a file path, "x.tif slice 3").

    Returns ``(instances, split)``: instances (H, W) int32, 0 = background, 1..N objects.
    A binary mask (values within 0/255 or within 0/1, bool included) gives the 4-connected
    components of its nonzero pixels (touching objects stay merged); any other image is
    taken as instance ids and kept as is. ``split`` is True for a binary mask that was
    0/255 or had more than one component, i.e. where a caller that wanted instance ids
    should warn. InputError naming ``where`` for fractional, negative, non-numeric or
    too large (past int32) values.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        frac = labels[labels != np.round(labels)]  # NaN included
        if frac.size:
            raise InputError(f"{where}: label values are not integer instance ids: fractional "
                             f"value {frac.flat[0]:g}")  # fmt: skip
    elif labels.dtype.kind not in "biu":
        raise InputError(f"{where}: label image of dtype {labels.dtype}; expected integers")
    if labels.size and labels.min() < 0:
        raise InputError(f"{where}: label values are not instance ids: negative value "
                         f"{labels.min():g}")  # fmt: skip
    values = np.unique(labels)
    if np.isin(values, (0, 255)).all() or np.isin(values, (0, 1)).all():
        comps, n = ndimage.label(labels != 0, structure=FOUR_CONNECTED)
        return comps.astype(np.int32), n > 1 or 255 in values
    if values.max() > np.iinfo(np.int32).max:
        raise InputError(f"{where}: instance id {values.max():g} is too large")
    return labels.astype(np.int32), False


def instances_from_mask(mask: np.ndarray, where: str = "label image") -> np.ndarray:
    """(H, W) int32 instance ids 1..N, 0 = background: :func:`labels_to_instances` without
    the flag (a binary mask 0/255 or 0/1 gives its 4-connected components)."""
    return labels_to_instances(mask, where)[0]



def mask_to_classes(
    mask: np.ndarray,
    num_classes: int,
    where: str,
    hint: str = "",
    *,
    threshold: float | None = None,
    ignore: int | None = None,
) -> np.ndarray:
    """Class-index map (H, W) uint8 from a stored mask, or InputError naming ``where``.

    Accepted: binary 0/255 (255 -> 1), 0/65535 (the 16-bit binary mask; 65535 -> 1) or
    0/1, or integer class maps with values in 0..num_classes-1 (for a 1-output sigmoid
    network, ``num_classes`` is 2), of any integer dtype or float holding whole numbers.
    Anything else (anti-aliased or JPEG-compressed masks, instance labels given to a
    binary model, float masks with fractions) is an error, never a silent guess; the
    error for many values names ``--label-threshold`` as the way on.

    Args:
        mask: (H, W) any numeric dtype.
        num_classes: classes the model predicts (2 for a binary model).
        where: names the mask in messages (a path, "x.tif slice 3").
        hint: ends the message of a mask whose values are not classes; default
            :data:`THRESHOLD_HINT`, the way on for soft masks.
        threshold: binarise instead: value > threshold is foreground (1), else 0, for soft
            or anti-aliased masks. InputError if the mask has two or more values and all of
            them lie on one side (the threshold is outside the mask's value range); a
            constant mask (an empty image) passes.
        ignore: pixels of this stored value become :data:`IGNORE_INDEX` (255), "not
            labelled", in the class map; the other pixels map as above. InputError if the
            value is also a class (below ``num_classes`` without a threshold).
    """
    if ignore is not None:
        if threshold is None and 0 <= ignore < num_classes:
            raise InputError(f"--ignore-label {ignore:g} is also a class of {where} "
                             f"(classes 0..{num_classes - 1})")  # fmt: skip
        ignored = mask == ignore
        if ignored.any():
            rest = mask[~ignored]
            classes = np.full(mask.shape, IGNORE_INDEX, np.uint8)
            if rest.size:
                classes[~ignored] = mask_to_classes(rest, num_classes, where, hint,
                                                    threshold=threshold)  # fmt: skip
            return classes
    if threshold is not None:
        return _threshold_mask(mask, threshold, where)
    values = np.unique(mask)
    if mask.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise InputError(
            f"{where}: mask values are not classes: fractional values such as "
            f"{values[values != np.round(values)][0]:g}{hint or THRESHOLD_HINT}"
        )
    if values.min() < 0:
        raise InputError(f"{where}: mask values are not classes: negative value {values.min():g}")
    for top in (255, 65535):  # the 8- and 16-bit binary masks
        if np.isin(values, (0, top)).all() and not np.isin(values, (0, 1)).all():
            return (mask == top).astype(np.uint8)  # binary 0/top -> 0/1
    if values.max() < num_classes:
        return mask.astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    expected = "0/255 or 0/1" if num_classes == 2 else f"0/255, 0/1 or 0..{num_classes - 1}"
    raise InputError(
        f"{where}: mask values are not classes: {len(values)} distinct values ({shown}); "
        f"expected {expected}{hint or THRESHOLD_HINT}"
    )


def _threshold_mask(mask: np.ndarray, threshold: float, where: str) -> np.ndarray:
    """(H, W) uint8: 1 where ``mask > threshold``, else 0; InputError if the threshold is
    outside the range of a mask with two or more values."""
    if not np.isfinite(threshold):
        raise InputError(f"--label-threshold must be a finite number, got {threshold}")
    low, high = mask.min(), mask.max()
    if low != high and not (low <= threshold < high):
        side = "foreground" if threshold < low else "background"
        raise InputError(f"{where}: --label-threshold {threshold:g} is outside the mask's values "
                         f"{low:g}..{high:g}: every pixel would be {side}")  # fmt: skip
    return (mask > threshold).astype(np.uint8)


def separate_touching(instances: np.ndarray) -> np.ndarray:
    """Instances with a background border carved between touching ones.

    ``instances``: (H, W) integer ids, 0 = background. A foreground pixel whose 4-neighbour
    belongs to a different instance becomes background (0), as in the paper; a touching
    edge thus becomes a gap two pixels wide. Returns (H, W) int32.
    """
    lab = instances
    touching = np.zeros(lab.shape, bool)
    for axis in (0, 1):
        a = lab.take(range(lab.shape[axis] - 1), axis=axis)
        b = lab.take(range(1, lab.shape[axis]), axis=axis)
        edge = (a != b) & (a != 0) & (b != 0)  # pixel and its next neighbour along axis
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis] = slice(0, lab.shape[axis] - 1)
        hi[axis] = slice(1, lab.shape[axis])
        touching[tuple(lo)] |= edge
        touching[tuple(hi)] |= edge
    return np.where(touching, 0, lab).astype(np.int32)


def nearest_two_distances(
    instances: np.ndarray, max_distance: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2: (H, W) float64 Euclidean distances (pixels) from each pixel to the nearest
    and the second-nearest instance of ``instances`` ((H, W) integer ids, 0 = background).

    Inside an instance d1 is 0. Fewer than two instances: d2 is ``inf`` (and d1 too when
    there are none). Exact wherever the distance is below ``max_distance``; beyond it the
    value may be ``inf``. Each instance's distance transform is computed only in its
    bounding box grown by ``max_distance``, so the cost follows the cells' sizes, not their
    number times the image.
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
