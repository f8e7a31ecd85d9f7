"""ImageJ ROI sets of instance labels: read back with roifile and filled as ImageJ fills
polygons (a pixel is inside when its centre is), each outline gives its object's mask."""

import numpy as np
import pytest
import tifffile
from conftest import refusal
from matplotlib.path import Path as Polygon
from roifile import roiread

from biounet.cli import main
from biounet.rois import rois_of, write_roi_zip


def fill(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres (x + 0.5, y + 0.5) lie inside the polygon."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    return Polygon(points).contains_points(centres).reshape(shape)


@pytest.fixture
def nuclei():
    from conftest import DSB

    return tifffile.imread(DSB / "labels" / "0ea221716cf13710.tif")  # touching nuclei


@pytest.mark.slow
def test_outlines_read_back_fill_their_objects(nuclei, tmp_path):
    path = write_roi_zip(tmp_path / "n-rois.zip", rois_of(nuclei))
    rois = roiread(path)
    ids = [i for i in np.unique(nuclei) if i]
    assert [r.name for r in rois] == [str(i) for i in ids] and len(ids) > 20
    exact = 0
    for roi, i in zip(rois, ids, strict=True):
        got, want = fill(roi.coordinates(), nuclei.shape), nuclei == i
        iou = (got & want).sum() / (got | want).sum()
        assert iou >= 0.95, (i, iou)
        exact += np.array_equal(got, want)
    assert exact >= 0.9 * len(ids)  # only objects of several pieces or with holes differ


def test_shapes_that_outlines_must_get_right(tmp_path):
    labels = np.zeros((12, 14), np.uint16)
    labels[0, 0] = 1  # one pixel in a corner
    labels[2:9, 3:6] = 2  # a bar ...
    labels[4:6, 6:11] = 2  # ... with an arm: concave
    labels[9, 11], labels[10, 12], labels[11, 13] = 3, 3, 3  # a diagonal line, 8-connected
    labels[5, 12] = 5  # id 4 unused
    rois = roiread(write_roi_zip(tmp_path / "s.zip", rois_of(labels)))
    assert [r.name for r in rois] == ["1", "2", "3", "5"]
    for roi, i in zip(rois, (1, 2, 3, 5), strict=True):
        np.testing.assert_array_equal(fill(roi.coordinates(), labels.shape), labels == i)


def test_a_stack_names_and_positions_rois_by_page(tmp_path):
    a = np.zeros((8, 8), np.uint16)
    a[1:3, 1:3] = 1
    b = np.zeros((8, 8), np.uint16)
    b[4:7, 4:7] = 1
    b[0:2, 5:7] = 2
    rois = roiread(write_roi_zip(tmp_path / "st.zip", rois_of(a, 1) + rois_of(b, 2)))
    assert [(r.name, r.position) for r in rois] == [("1-1", 1), ("2-1", 2), ("2-2", 2)]


def test_predict_writes_a_roi_set_beside_the_instances(tmp_path, capsys):
    from conftest import DSB

    img = DSB / "images" / "0ea221716cf13710.png"
    out = tmp_path / "p.tif"
    code = main(["predict", "models/dsb2018-nuclei.pt", str(img), "--out", str(out),
                 "--instances", "--roi-zip", "--no-tta", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "p-instances.tif")
    rois = roiread(tmp_path / "p-rois.zip")
    assert len(rois) == labels.max() > 20
    assert refusal(["predict", "models/dsb2018-nuclei.pt", str(img), "--out",
                    str(tmp_path / "q.tif"), "--roi-zip"], capsys) == (
        "biounet: error: models/dsb2018-nuclei.pt: ImageJ ROIs outline instances: add --instances"
    )  # fmt: skip
    assert not (tmp_path / "q.tif").exists()
