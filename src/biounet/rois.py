"""Instance labels as an ImageJ / Fiji ROI set: one polygon per object, in a .zip of .roi
files that Fiji's ROI Manager opens (File > Open, or drag and drop).

Each object's outline is the 0.5 iso-line of its mask (skimage's marching squares, the
object 8-connected): it runs midway between the object's pixels and its neighbours', so a
pixel lies inside the polygon exactly when its centre does, as ImageJ fills polygons
(pixel (x, y) spans [x, x + 1) x [y, y + 1), its centre at (x + 0.5, y + 0.5)). An object of
several pieces keeps its largest outline; holes are not cut out. ROIs are named by label
(``"LABEL"``, or ``"PAGE-LABEL"`` within a stack, where they also carry the page as their
position); the .roi entries are written in label order.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

from .io import atomic_path


def outlines(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(label, (N, 2) float polygon of x, y in ImageJ pixel coordinates) per object of an
    (H, W) instance image, in label order."""
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None:  # an unused id
            continue
        mask = np.pad(labels[box] == i, 1).astype(np.uint8)
        contour = max(find_contours(mask, 0.5, fully_connected="high"), key=len)[:-1]
        y = contour[:, 0] - 1 + box[0].start + 0.5  # crop -> image rows -> ImageJ y
        x = contour[:, 1] - 1 + box[1].start + 0.5
        yield i, np.column_stack([x, y])


Roi = tuple[str, np.ndarray, int | None]  # name, (N, 2) x / y polygon, page (1-based) or None


def rois_of(labels: np.ndarray, page: int | None = None) -> list[Roi]:
    """The ROIs of an (H, W) instance image: named by label, or "PAGE-LABEL" and positioned
    on ``page`` (1-based) for a page of a stack."""
    return [(f"{page}-{label}" if page else str(label), points, page)
            for label, points in outlines(np.asarray(labels))]  # fmt: skip


def write_roi_zip(path: str | Path, rois: Sequence[Roi]) -> Path:
    """Write ``rois`` (:func:`rois_of`) as an ImageJ ROI set (.zip of .roi files),
    atomically."""
    from roifile import ImagejRoi  # the [fiji] extra

    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, points, page in rois:
            roi = ImagejRoi.frompoints(points.astype(np.float32), name=name,
                                       position=None if page is None else page - 1)  # 0-based
            z.writestr(f"{name}.roi", roi.tobytes())
    return path
