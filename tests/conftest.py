"""Shared fixtures: small real ISBI 2012 crops and tiny networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

DATA = Path(__file__).resolve().parents[1] / "data" / "isbi2012"


@pytest.fixture(scope="session")
def isbi():
    """(images, labels): the 30 ISBI 2012 training slices, (30, 512, 512) uint8 each."""
    return tifffile.imread(DATA / "train-volume.tif"), tifffile.imread(DATA / "train-labels.tif")


@pytest.fixture
def isbi_crops(isbi, tmp_path):
    """Paths of a 6-slice 96 x 96 crop of the ISBI stacks written as TIFF stacks."""
    images, labels = isbi
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    tifffile.imwrite(img, images[:6, 100:196, 200:296])
    tifffile.imwrite(lab, labels[:6, 100:196, 200:296])
    return img, lab


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
