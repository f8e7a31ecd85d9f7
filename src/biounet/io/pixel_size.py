"""Pixel sizes from image metadata: ImageJ, OME, TIFF and PNG resolution, and units.

A pixel size is ``(x, y, unit)``: the width and height of one pixel in ``unit`` ("µm",
"nm", ...). :func:`tiff_pixel_size` reads it from an open TIFF, :func:`dpi_pixel_size`
from a PNG's resolution; :func:`imagej_unit` spells a unit the way an ImageJ description
takes it, for writing.
"""

from __future__ import annotations

PixelSize = tuple[float, float, str]  # (x, y, unit): the width and height of one pixel
MICRONS = {"micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00B5m": 1.0,
           "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
           "centimeter": 1e4, "m": 1e6, "meter": 1e6, "inch": 25400.0}  # fmt: skip


def tiff_pixel_size(tif) -> PixelSize | None:
    """(x, y, unit) of a TIFF's first page: ImageJ (XResolution/YResolution in pixels per
    ``unit=`` of its description), OME (PhysicalSizeX/Y and their units) or the TIFF
    resolution in pixels per inch or centimetre (as µm); None without a calibration."""
    page = tif.pages[0]
    if tif.is_ome:
        return _ome_pixel_size(tif.ome_metadata)
    x_res, y_res = page.resolution
    if not (x_res > 0 and y_res > 0):
        return None
    if tif.is_imagej:
        unit = _unit((tif.imagej_metadata or {}).get("unit", ""))
        return (1.0 / x_res, 1.0 / y_res, unit) if unit else None
    per_unit = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(int(page.resolutionunit))  # in µm
    if per_unit is None:
        return None
    return (per_unit / x_res, per_unit / y_res, "µm")


def dpi_pixel_size(dpi: tuple[float, float] | None) -> PixelSize | None:
    """(x, y, "µm") of a resolution in dots per inch (a PNG's pHYs as Pillow gives it);
    None without one."""
    if dpi and float(dpi[0]) > 0 and float(dpi[1]) > 0:
        return (25400.0 / float(dpi[0]), 25400.0 / float(dpi[1]), "µm")
    return None


def _unit(name: str) -> str | None:
    """A length unit as written in metadata -> its usual spelling ("micron" -> "µm");
    None for none ("", "pixel")."""
    name = str(name).strip()
    if name.lower() in ("", "pixel", "pixels", "none"):
        return None
    if MICRONS.get(name) == 1.0 or name.lower() in ("micron", "microns", "um"):
        return "µm"
    return name


def _ome_pixel_size(xml: str | None) -> PixelSize | None:
    """(x, y, unit) of the first image in OME-XML (PhysicalSizeX/Y, unit default µm)."""
    import xml.etree.ElementTree as ET

    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.split("}")[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    x = float(pixels.attrib["PhysicalSizeX"])
    y = float(pixels.attrib.get("PhysicalSizeY", x))
    x_unit = _unit(pixels.attrib.get("PhysicalSizeXUnit", "µm"))
    y_unit = _unit(pixels.attrib.get("PhysicalSizeYUnit", "µm"))
    if not (x > 0 and y > 0) or x_unit is None:
        return None
    if y_unit != x_unit and x_unit in MICRONS and y_unit in MICRONS:
        y *= MICRONS[y_unit] / MICRONS[x_unit]
    return (x, y, x_unit)


def imagej_unit(unit: str) -> str:
    """A unit as ImageJ's description takes it (ASCII; "micron" for µm)."""
    return "micron" if unit == "µm" else unit.encode("ascii", "replace").decode()
