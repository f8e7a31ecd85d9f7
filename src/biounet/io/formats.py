"""File formats: a TIFF's or PNG's pixels as (H, W) or (C, H, W) arrays, and its pixel size.

A TIFF's axes come from its ImageJ, OME or tifffile metadata: a C (channel) axis gives each
slice C channels, never C slices; without axes metadata every page is a slice. Colour
samples become gray (equal channels taken as is, otherwise ITU-R 601 luma) unless they are
kept as channels; alpha is dropped. A TIFF that holds less than it declares is refused
(:mod:`biounet.io.tiff_integrity`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from .pixel_size import PixelSize, dpi_pixel_size, tiff_pixel_size
from .tiff_integrity import check_complete, ifd_chain_damage

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def read_tiff(
    path: Path, mask: bool, keep_colour: bool = False
) -> tuple[list[np.ndarray], PixelSize | None]:
    """The slices of a TIFF, (H, W) or (C, H, W) (a C axis in its metadata, or colour
    samples with ``keep_colour``), and its pixel size."""
    import tifffile

    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # damage is reported below, in one line
    try:
        with tifffile.TiffFile(path) as tif:
            check_complete(tif, path)
            pixel_size = tiff_pixel_size(tif)
            if len(tif.series) == 1:
                series = [(tif.series[0].axes, tif.series[0].asarray())]
            else:  # pages of different shapes: every page, in file order
                series = [(page.axes, page.asarray()) for page in tif.pages]
    except InputError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        damage = ifd_chain_damage(path)  # a truncated header or page chain, if that is it
        if damage:
            raise InputError(f"{path}: {damage}") from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: not a readable TIFF ({type(e).__name__}: {first})") from None
    finally:
        tiff_log.setLevel(level)
    pages: list[np.ndarray] = []
    for axes, data in series:
        if len(axes) != data.ndim:  # no usable axes: pages are slices
            axes = "Q" * (data.ndim - 2) + "YX"
        colour = "S" in axes  # colour samples, interleaved (..YXS) or planar (..SYX)
        if colour:
            data = np.moveaxis(data, axes.index("S"), -1)
            axes = axes.replace("S", "") + "S"
        elif data.ndim >= 3 and data.shape[-1] in (2, 3, 4) and data.shape[-3] > 4:
            colour = True  # (.., H, W, C) without a samples tag
            axes = axes[:-3] + "YXS"
        if colour and keep_colour:
            if "C" in axes:
                raise InputError(f"{path}: both a channel axis and colour samples "
                                 f"(axes {axes}); save one or the other")  # fmt: skip
            data = np.moveaxis(_drop_alpha(data, path), -1, -3)  # (.., C, H, W)
            axes = axes[:-3] + "CYX"
        elif colour:
            data = _to_gray(data, path, mask)
            axes = axes[:-1]
        if data.ndim < 2:
            raise InputError(f"{path}: expected a 2-D image or a stack, got shape {data.shape}")
        c = axes.find("C")
        if c >= 0 and data.shape[c] > 1:  # channels: each slice is (C, H, W)
            if mask:
                raise InputError(f"{path}: a label image of {data.shape[c]} channels (axes "
                                 f"{axes}); labels need one channel")  # fmt: skip
            data = np.moveaxis(data, c, -3)
            pages.extend(data.reshape(-1, *data.shape[-3:]))
        else:
            pages.extend(data.reshape(-1, *data.shape[-2:]))  # leading axes (pages, Z, T) -> N
    return pages, pixel_size


def read_png(
    path: Path, mask: bool, keep_colour: bool = False
) -> tuple[np.ndarray, PixelSize | None]:
    """The pixels of a PNG, (H, W) (colour made gray; a palette kept as indices for a
    ``mask``) or (C, H, W) colour with ``keep_colour``, and its pixel size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            dpi = im.info.get("dpi")  # from pHYs in pixels per metre
            if im.mode == "P" and not mask:
                im = im.convert("RGBA")
            data = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable PNG ({e})") from None
    if data.ndim == 3 and keep_colour:  # (H, W, C) -> (C, H, W) colour, or gray
        data = np.moveaxis(_drop_alpha(data, path), -1, 0)
        data = data[0] if data.shape[0] == 1 else data
    elif data.ndim == 3:
        data = _to_gray(data, path, mask)
    return data, dpi_pixel_size(dpi)


def _drop_alpha(data: np.ndarray, path: Path) -> np.ndarray:
    """(..., C) colour samples without alpha: gray + alpha -> (..., 1), RGBA -> RGB."""
    c = data.shape[-1]
    if c not in (1, 2, 3, 4):
        raise InputError(f"{path}: {c} colour samples per pixel; expected gray, gray+alpha, "
                         "RGB or RGBA")  # fmt: skip
    return data[..., :1] if c in (1, 2) else data[..., :3]


def _to_gray(data: np.ndarray, path: Path, mask: bool) -> np.ndarray:
    """(..., H, W, C) with C in 1..4 -> (..., H, W)."""
    c = data.shape[-1]
    if c not in (1, 2, 3, 4):
        raise InputError(f"{path}: {c} channels per pixel; expected gray, gray+alpha, RGB or RGBA")
    if c in (1, 2):  # gray or gray + alpha
        return data[..., 0]
    rgb = data[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    if mask:
        raise InputError(
            f"{path}: colour mask with unequal RGB channels; save masks as gray class indices"
        )
    gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return gray.astype(np.float32)
