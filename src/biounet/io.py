"""Reading and writing images and masks, with validation that names the file and the problem.

Images cross module boundaries as lists of (H, W) numpy arrays, or (C, H, W) for images of
several channels (a TIFF stack is a list of its slices; a folder is a list of its files,
which may differ in size). A TIFF's axes come from its ImageJ, OME or tifffile metadata: a
C (channel) axis gives each slice C channels, never C slices; without axes metadata every
page is a slice. Colour inputs are converted to gray unless channels are asked for
(:func:`parse_channels`: ``"rgb"`` or indices); masks are checked to hold classes and
mapped to class indices, so a 0/255 mask can never be misread as "everything is class 0".

Reading never silently drops data: a TIFF whose pages or page data end before what the
file declares (ImageJ ``images=``, a tifffile shape, OME planes, the page chain, the page
data's offsets) is refused, and so is a NaN or infinite pixel. Each array's pixel size
(ImageJ, OME, TIFF or PNG resolution) is kept in :attr:`Images.pixel_sizes`, and
:class:`StackWriter` writes it into its TIFFs, ImageJ style, so outputs overlay their
inputs in Fiji and napari.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .labels import labels_to_instances, mask_to_classes

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

PixelSize = tuple[float, float, str]  # (x, y, unit): the width and height of one pixel
MICRONS = {"micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00B5m": 1.0,
           "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
           "centimeter": 1e4, "m": 1e6, "meter": 1e6, "inch": 25400.0}  # fmt: skip


@dataclass
class Images:
    """Images read from one path: ``arrays[i]`` is (H_i, W_i), or (C, H_i, W_i) for
    images of C > 1 channels (every image of a set has the same C); ``names[i]`` names it;
    ``pixel_sizes[i]`` is its pixel size ``(x, y, unit)`` from the file's metadata (unit
    "µm", "nm", ...; a stack's slices share one), or None where the file has none (default:
    None for every array)."""

    arrays: list[np.ndarray]
    names: list[str]
    source: Path
    pixel_sizes: list[PixelSize | None] | None = None

    def __post_init__(self) -> None:
        if self.pixel_sizes is None:
            self.pixel_sizes = [None] * len(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def channels(self) -> int:
        """The images' channels (1 for (H, W) arrays)."""
        return channels_of(self.arrays[0]) if self.arrays else 1


Channels = str | tuple[int, ...] | None  # parse_channels' result: None, "rgb" or indices


def channels_of(image: np.ndarray) -> int:
    """Channels of an (H, W) (1) or (C, H, W) (C) image."""
    return 1 if image.ndim == 2 else int(image.shape[0])


def parse_channels(spec: str | None) -> Channels:
    """``--channels`` text -> None (as stored: gray, or a TIFF's C axis), ``"rgb"`` (colour
    kept as 3 channels, alpha dropped) or a tuple of channel indices in the order given
    (``"1"`` -> (1,), ``"0,2"`` -> (0, 2)). InputError for anything else."""
    if spec is None:
        return None
    text = str(spec).strip().lower()
    if text in ("", "all", "none"):
        return None
    if text == "rgb":
        return "rgb"
    try:
        picked = tuple(int(p) for p in text.split(","))
    except ValueError:
        picked = ()
    if not picked or min(picked) < 0:
        raise InputError(f"--channels {spec!r}: expected channel indices such as 1 or 0,2, "
                         "or rgb")  # fmt: skip
    if len(set(picked)) != len(picked):
        raise InputError(f"--channels {spec!r}: a channel is named twice")
    return picked


# ---------------------------------------------------------------------------------------
# Reading


def find_data(name: str = "isbi2012") -> Path:
    """Folder of a bundled data set: ``$BIOUNET_DATA/name``, the repository's ``data/name``
    or ``./data/name``, the first that exists."""
    candidates = []
    if os.environ.get("BIOUNET_DATA"):
        candidates.append(Path(os.environ["BIOUNET_DATA"]) / name)
    candidates.append(Path(__file__).resolve().parents[2] / "data" / name)
    candidates.append(Path.cwd() / "data" / name)
    for c in candidates:
        if c.is_dir():
            return c
    raise InputError(
        f"bundled data set {name!r} not found (looked in {', '.join(map(str, candidates))}); "
        "set BIOUNET_DATA or pass --images/--labels"
    )


def resolve_data_path(path: str | Path) -> Path:
    """``path`` as given if it exists; else a ``data/NAME/...`` path is looked up in the
    bundled data set NAME (see :func:`find_data`), so presets can name bundled files and
    still run from any working directory."""
    path = Path(path)
    if path.exists() or path.is_absolute() or len(path.parts) < 2 or path.parts[0] != "data":
        return path
    try:
        return find_data(path.parts[1]).joinpath(*path.parts[2:])
    except InputError:
        return path


def list_image_files(folder: Path) -> list[Path]:
    """Image files (TIFF, PNG) in ``folder``, sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no .tif/.tiff/.png images in this folder")
    return files


def read_images(
    path: str | Path, *, mask: bool = False, channels: Channels | str = None
) -> Images:
    """Read a TIFF (single image or stack), a PNG, or a folder of them.

    Returns (H, W) arrays in their stored dtype, or (C, H, W) for a TIFF whose axes
    metadata (ImageJ hyperstack, OME, tifffile) has a C axis of C > 1 channels; with each
    file's pixel size when its metadata has one. Pages without axes metadata are slices.
    Colour images are converted to gray (equal channels: taken as is; otherwise ITU-R 601
    luma), an alpha channel dropped, unless ``channels`` asks for channels
    (:func:`parse_channels`: ``"rgb"`` keeps colour as 3 channels; indices pick and order
    the channels of colour or C-axis images, one index giving (H, W)). With ``mask=True``
    channels are refused, palette PNGs keep their indices and colour masks must have equal
    channels (a colour-coded mask is an error, not a silently averaged one). InputError
    naming the file for a truncated or damaged TIFF (fewer pages or less page data than the
    file declares), NaN or infinite pixels, a channel index the file lacks and, in a
    folder, images of different channel counts.
    """
    path = Path(path)
    picked = parse_channels(channels) if isinstance(channels, str) else channels
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        arrays, names, sizes = [], [], []
        first = None
        for f in list_image_files(path):
            img = read_images(f, mask=mask, channels=picked)
            if first is None:
                first = (f, img.channels)
            elif img.channels != first[1]:
                raise InputError(f"{f}: {channels_text(img.channels)}, but {first[0].name} has "
                                 f"{first[1]}; every image of a set needs the same channels "
                                 "(pick them with --channels)")  # fmt: skip
            arrays += img.arrays
            names += [f.stem] if len(img) == 1 else [f"{f.stem}[{i}]" for i in range(len(img))]
            sizes += img.pixel_sizes
        return Images(arrays, names, path, sizes)
    suffix = path.suffix.lower()
    keep = picked is not None and not mask  # colour samples stay channels
    if suffix in (".tif", ".tiff"):
        stack, pixel_size = _read_tiff(path, mask, keep)
    elif suffix == ".png":
        image, pixel_size = _read_png(path, mask, keep)
        stack = [image]
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r} (use .tif, .tiff or .png)")
    if keep:
        stack = [_pick_channels(a, picked, path) for a in stack]
    for i, a in enumerate(stack):
        if a.size == 0:
            raise InputError(f"{path}: slice {i} is empty ({a.shape[-2]} x {a.shape[-1]})")
        _check_finite(a, f"{path}: slice {i}" if len(stack) > 1 else f"{path}: image")
    names = [path.stem] if len(stack) == 1 else [f"{path.stem}[{i}]" for i in range(len(stack))]
    return Images(stack, names, path, [pixel_size] * len(stack))


def channels_text(channels: int) -> str:
    """"1 channel", "3 channels"."""
    return f"{channels} channel" + ("s" if channels != 1 else "")


def _pick_channels(image: np.ndarray, picked: Channels, path: Path) -> np.ndarray:
    """``image`` (H, W) or (C, H, W) with ``picked``'s channels (parse_channels), or
    InputError naming ``path``: a gray image given ``"rgb"``, an index it lacks."""
    n = channels_of(image)
    if picked == "rgb":
        if n != 3:
            raise InputError(f"{path}: --channels rgb needs a colour image; this one has "
                             f"{channels_text(n)}")  # fmt: skip
        return image
    if max(picked) >= n:
        raise InputError(f"{path}: --channels {','.join(map(str, picked))}: the image has "
                         f"{channels_text(n)} (0..{n - 1})")  # fmt: skip
    stack = image[None] if image.ndim == 2 else image
    out = stack[list(picked)]
    return out[0] if len(picked) == 1 else out


def _check_finite(a: np.ndarray, where: str) -> None:
    """InputError ``"WHERE has NaN pixels (12 of them)"`` unless every pixel is finite."""
    if a.dtype.kind not in "fc" or np.isfinite(a).all():
        return
    nan = int(np.isnan(a).sum())
    inf = int(np.isinf(a).sum())
    what = [f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n]
    if len(what) == 1:
        kind = "NaN" if nan else "infinite"
        raise InputError(f"{where} has {kind} pixels ({nan or inf} of them)")
    raise InputError(f"{where} has NaN and infinite pixels ({what[0]}, {what[1]})")


def _read_tiff(
    path: Path, mask: bool, keep_colour: bool = False
) -> tuple[list[np.ndarray], PixelSize | None]:
    """The slices of a TIFF, (H, W) or (C, H, W) (a C axis in its metadata, or colour
    samples with ``keep_colour``), and its pixel size."""
    import logging

    import tifffile

    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # damage is reported below, in one line
    try:
        with tifffile.TiffFile(path) as tif:
            _check_complete(tif, path)
            pixel_size = _tiff_pixel_size(tif)
            if len(tif.series) == 1:
                series = [(tif.series[0].axes, tif.series[0].asarray())]
            else:  # pages of different shapes: every page, in file order
                series = [(page.axes, page.asarray()) for page in tif.pages]
    except InputError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        damage = _ifd_chain_damage(path)  # a truncated header or page chain, if that is it
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


def _size(nbytes: int, other: int | None = None) -> str:
    """Bytes as people read them ("812 bytes", "3.6 kB", "7.27 MB"); in bytes when
    ``other`` would otherwise read the same."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            text = f"{nbytes / scale:.3g} {unit}"
            if other is not None and other != nbytes and _size(other) == text:
                return f"{nbytes} bytes"
            return text
    return f"{nbytes} bytes"


# bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ...)
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                   13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip


def _walk_ifds(path: Path) -> tuple[int, int | None, int, tuple[int, int] | None]:
    """Walk the TIFF page chain (image file directories) of ``path`` byte by byte.

    Returns ``(complete, stop, size, cut_tag)``: the number of page directories that lie
    wholly inside the file; None if the chain then ends properly (next offset 0), the
    bytes the file would need to hold the next directory if it ends past the end of the
    file, or -1 if it loops back; the file size in bytes; and ``(tag code, bytes needed)``
    of the first tag whose value lies past the end of the file (None if none does).
    Classic TIFF and BigTIFF; ValueError when the file does not start like a TIFF.
    """
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            raise ValueError("not a TIFF header")
        order = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            count_fmt, offset_fmt, entry_fmt = "H", "I", "HHI4s"
            offset = struct.unpack(order + "I", head[4:8])[0]
        elif version == 43 and len(head) >= 16:
            count_fmt, offset_fmt, entry_fmt = "Q", "Q", "HHQ8s"
            offset = struct.unpack(order + "Q", head[8:16])[0]
        else:
            raise ValueError(f"TIFF version {version}")
        count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
        entry = struct.calcsize(order + entry_fmt)
        complete, seen, cut_tag = 0, set(), None
        while offset:
            if offset in seen:
                return complete, -1, size, cut_tag
            if offset + count_size > size:
                return complete, offset + count_size, size, cut_tag
            seen.add(offset)
            f.seek(offset)
            (n,) = struct.unpack(order + count_fmt, f.read(count_size))
            end = offset + count_size + n * entry + offset_size  # entries, then next offset
            if end > size:
                return complete, end, size, cut_tag
            entries = f.read(n * entry)
            for code, kind, count, value in struct.iter_unpack(order + entry_fmt, entries):
                nbytes = count * TIFF_TYPE_BYTES.get(kind, 0)
                if cut_tag is None and nbytes > offset_size:  # the value lies elsewhere
                    (at,) = struct.unpack(order + offset_fmt, value)
                    if at + nbytes > size:
                        cut_tag = (code, at + nbytes)
            (offset,) = struct.unpack(order + offset_fmt, f.read(offset_size))
            complete += 1
    return complete, None, size, cut_tag


def _chain_damage(
    complete: int, stop: int, size: int, readable: int | None = None, declared: int = 0
) -> str:
    """The one-line reason for a page chain that stops early (``_walk_ifds``' result)."""
    readable = complete if readable is None else readable
    if stop == -1:
        return f"damaged: its page chain loops back after {complete} pages"
    total = declared if declared > complete else f"at least {complete + 1}"
    return (f"truncated: {readable} of {total} pages readable (file is {_size(size, stop)}, "
            f"its pages need at least {_size(stop, size)})")  # fmt: skip


def _tag_damage(cut_tag: tuple[int, int], size: int) -> str:
    """The one-line reason for a tag value past the end of the file."""
    import tifffile

    code, need = cut_tag
    name = tifffile.TIFF.TAGS.get(code, f"tag {code}")
    return (f"truncated: its {name} metadata ends past the end of the file (file is "
            f"{_size(size, need)}, it needs {_size(need, size)})")  # fmt: skip


def _ifd_chain_damage(path: Path) -> str | None:
    """Why ``path``'s page chain is cut short, or None if it is whole (or if the file is
    no TIFF at all): for files tifffile cannot open."""
    try:
        complete, stop, size, cut_tag = _walk_ifds(path)
    except (OSError, ValueError):
        return None
    if stop is not None:
        return _chain_damage(complete, stop, size, readable=0 if complete <= 1 else None)
    return _tag_damage(cut_tag, size) if cut_tag else None


def _check_complete(tif, path: Path) -> None:
    """InputError naming ``path`` if the TIFF holds fewer pages, or less page data, than it
    declares: the page chain (a next page past the end of the file), each page's strip or
    tile offsets + byte counts against the file size, ImageJ ``images=``, a tifffile
    ``{"shape": ...}`` description and OME planes (pages its series lack)."""
    complete, stop, size, cut_tag = _walk_ifds(path)
    pages = list(tif.pages)[:complete]
    ends = [_data_end(p) for p in pages]
    readable = sum(e <= size for e in ends)
    need = max(ends, default=0)  # bytes the pages in the chain need
    first = pages[0] if pages else None
    images = int((tif.imagej_metadata or {}).get("images", 0) or 0)
    declared = [complete, images]
    if images > complete and first is not None and first.compression == 1 and first.is_contiguous:
        # ImageJ stores big stacks as one page directory and contiguous raw planes
        start = first.dataoffsets[0]
        need = start + images * first.nbytes
        readable = min(images, max(0, (size - start) // max(1, first.nbytes)))
        declared[0] = images
    if tif.is_shaped and first is not None:
        plane = max(1, int(np.prod(first.shape)))
        declared.append(sum(int(np.prod(m["shape"])) // plane for m in tif.shaped_metadata or ()
                            if isinstance(m, dict) and "shape" in m))  # fmt: skip
    if tif.is_ome:
        declared.append(complete + sum(sum(p is None for p in s.pages) for s in tif.series))
    total = max(declared)
    if stop is not None:
        raise InputError(f"{path}: {_chain_damage(complete, stop, size, readable, total)}")
    if readable >= total and need <= size:
        if cut_tag:
            raise InputError(f"{path}: {_tag_damage(cut_tag, size)}")
        return
    if total > declared[0]:  # pages declared but absent: what they need is unknown
        needs = f"its {total} pages need more than {_size(max(need, size))}"
    else:
        needs = f"its pages need {_size(need, size)}"
    raise InputError(f"{path}: truncated: {readable} of {total} pages readable "
                     f"(file is {_size(size, need)}, {needs})")  # fmt: skip


def _data_end(page) -> int:
    """Byte past a page's last strip or tile: the file length its data need."""
    spans = zip(page.dataoffsets, page.databytecounts, strict=True)
    return max((offset + count for offset, count in spans if count), default=0)


def _tiff_pixel_size(tif) -> PixelSize | None:
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


def _read_png(
    path: Path, mask: bool, keep_colour: bool = False
) -> tuple[np.ndarray, PixelSize | None]:
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
    pixel_size = None
    if dpi and float(dpi[0]) > 0 and float(dpi[1]) > 0:
        pixel_size = (25400.0 / float(dpi[0]), 25400.0 / float(dpi[1]), "µm")
    return data, pixel_size


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


def read_masks(
    path: str | Path,
    num_classes: int = 2,
    hint: str = "",
    *,
    threshold: float | None = None,
    ignore: int | None = None,
) -> Images:
    """Read masks like :func:`read_images` and map each to class indices (H, W) uint8 with
    :func:`biounet.labels.mask_to_classes` (``threshold`` binarises soft masks, ``ignore``
    marks unlabelled pixels as ``labels.IGNORE_INDEX``); ``hint`` ends the message of a mask
    whose values are not classes (default: ``labels.THRESHOLD_HINT``)."""
    masks = read_images(path, mask=True)
    masks.arrays = [
        mask_to_classes(
            m, num_classes, where_of(masks, i), hint, threshold=threshold, ignore=ignore
        )  # fmt: skip
        for i, m in enumerate(masks.arrays)
    ]
    return masks


def read_instances(path: str | Path) -> Images:
    """Read instance-label images like :func:`read_images`: (H, W) int32, 0 = background.

    A binary mask where instances are needed is split into its connected components, with
    one warning line for all such files (naming the first); fractional or negative values
    are an InputError naming the file.
    """
    return as_instances(read_images(path, mask=True))


def as_instances(labels: Images) -> Images:
    """:func:`read_instances` for images already read (``mask=True``): converted in place."""
    binary = []
    for i, arr in enumerate(labels.arrays):
        labels.arrays[i], was_binary = labels_to_instances(arr, where_of(labels, i))
        if was_binary:
            binary.append(where_of(labels, i))
    if binary:
        more = f" and {len(binary) - 1} more" if len(binary) > 1 else ""
        logging.getLogger("biounet").warning(
            "warning: %s%s: binary mask where instance labels are needed; using its connected "
            "components (touching objects stay merged)",
            binary[0],
            more,
        )
    return labels


def where_of(images: Images, i: int) -> str:
    if len(images) == 1 or images.source.is_dir():
        name = images.names[i].split("[")[0]
        return str(images.source / name) if images.source.is_dir() else str(images.source)
    return f"{images.source} slice {i}"


def check_pairs(images: Images, masks: Images) -> None:
    """InputError unless ``masks`` pairs one to one with ``images`` in count and size."""
    if images.source.is_dir() and masks.source.is_dir():
        missing = sorted(set(images.names) - set(masks.names))
        if missing:
            raise InputError(
                f"{masks.source}: no mask for image {missing[0]!r}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        order = {n: i for i, n in enumerate(masks.names)}
        masks.arrays = [masks.arrays[order[n]] for n in images.names]
        masks.pixel_sizes = [masks.pixel_sizes[order[n]] for n in images.names]
        masks.names = list(images.names)
    if len(masks) != len(images):
        raise InputError(
            f"{masks.source}: {len(masks)} slices, but {images.source} has {len(images)}"
        )
    for i, (img, m) in enumerate(zip(images.arrays, masks.arrays, strict=True)):
        if img.shape[-2:] != m.shape:
            raise InputError(
                f"{where_of(masks, i)}: mask is {m.shape[0]} x {m.shape[1]}, "
                f"but its image is {img.shape[-2]} x {img.shape[-1]}"
            )


def normalize(image: np.ndarray, mode: str = "zscore") -> np.ndarray:
    """(H, W) any dtype -> (H, W) float32 with zero mean and unit variance (per image);
    (C, H, W) -> (C, H, W), each channel on its own.

    ``mode`` "zscore-bright" also negates an image whose median exceeds its mean (a bright
    background dominating dark objects, as in inverted or stained images), so objects are
    bright in every image; "zscore-invert" negates every image (objects known to be dark).
    A constant image maps to zeros. Works in place on one float32
    copy (large images).
    """
    if image.ndim == 3:
        return np.stack([normalize(c, mode) for c in image])
    x = image.astype(np.float32)  # always a copy
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    x -= mean
    x /= std if std > 1e-8 else 1.0
    if mode == "zscore-invert" or (mode == "zscore-bright" and float(np.median(x)) > 0):
        np.negative(x, out=x)
    return x


# ---------------------------------------------------------------------------------------
# Writing (atomic: a temp file in the target folder, then rename)


def atomic_path(path: str | Path):
    """Context manager yielding a temp path next to ``path``; renamed onto it on success.

    The temp file is named ``.NAME.HOST~PID~XXXX.tmpSUFFIX``; entering also removes the
    temp files of ``path`` that a killed write of this host left (their process is gone).
    """
    return _Atomic(Path(path))


def _writer_tag() -> str:
    import socket

    return f"{socket.gethostname().replace('~', '-')}~{os.getpid()}~"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove (and return) the temp files of ``path`` left by killed writes on this host."""
    host = _writer_tag().split("~")[0]
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[^~]*)~(?P<pid>\d+)~.*\.tmp")
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        m = pattern.match(p.name)
        if m and m["host"] == host and not _pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class _Atomic:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.{_writer_tag()}",
                                   suffix=f".tmp{self.path.suffix}", dir=self.path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on ``DIR/.lock``, taken
    atomically by the kernel and released when the process ends in any way, so the lock of
    a killed run is free again at once. The file keeps the holder's host and pid for the
    message of the refused one. InputError ``"DIR: another run (pid P on H) writes here"``
    when it is held."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{self.path.parent}: another biounet run ({holder}) is writing "
                             "here; wait for it to end or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {_writer_tag().split('~')[0]}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def write_tiff(path: str | Path, data: np.ndarray | Sequence[np.ndarray]) -> Path:
    """Write (H, W) or (N, H, W) ``data`` as a zlib-compressed (multi-page) TIFF, atomically."""
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(data), compression="zlib", photometric="minisblack")
    return path


class StackWriter:
    """Write a multi-page TIFF one (H, W) page at a time, atomically (temp file + rename on
    success), so a stack never has to be held in memory and a failed run leaves nothing.

    ``hyperstack`` (images, channels): the stack's shape, known in advance. Such a stack of
    uint8, uint16 or float32 pages that fits a classic TIFF is written as an ImageJ
    hyperstack (axes ZCYX, ``images= channels= slices=`` in its description): Fiji opens it
    with its slices and channels apart. ImageJ reads such files as one contiguous block, so
    they are not compressed; the pages go into a memory map of the file one at a time.
    Other stacks (BigTIFFs past 4 GiB, which ImageJ cannot open; instance labels once a
    page needs uint32, when the pages so far are rewritten) are zlib-compressed pages, page
    i = image i // C, channel i % C.

    ``pixel_size`` (x, y, unit), e.g. from :attr:`Images.pixel_sizes`, is written ImageJ
    style (XResolution/YResolution in pixels per unit, ``unit=`` in an ImageJ description),
    which Fiji, napari and :func:`read_images` read back; None writes no calibration.
    """

    HYPERSTACK_TYPES = (np.uint8, np.uint16, np.float32)

    def __init__(
        self,
        path: str | Path,
        bigtiff: bool = False,
        pixel_size: PixelSize | None = None,
        hyperstack: tuple[int, int] | None = None,
    ):
        self.path = Path(path)
        self.bigtiff = bigtiff  # needed past 4 GiB
        self.pixel_size = pixel_size
        self.hyperstack = None if bigtiff else hyperstack
        self.pages = 0
        self._tif = self._map = None

    def __enter__(self) -> StackWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, page: np.ndarray) -> None:
        if self.pages == 0 and self.hyperstack and page.dtype in self.HYPERSTACK_TYPES:
            self._map = self._open_hyperstack(page)
        if self._map is not None and page.dtype == np.uint32 and self._map.dtype == np.uint16:
            self._to_pages()  # instance labels past 65535: ImageJ hyperstacks hold no uint32
        if self._map is not None:
            n = self._map.shape[0] * self._map.shape[1]
            fits = page.shape == self._map.shape[2:] and page.dtype == self._map.dtype
            if self.pages >= n or not fits:
                raise ValueError(f"{self.path}: page {self.pages} ({page.dtype}, {page.shape}) "
                                 f"does not fit the declared {self._map.dtype} stack "
                                 f"{self._map.shape}")  # fmt: skip
            self._map[divmod(self.pages, self._map.shape[1])] = page
        else:
            self._write_page(page)
        self.pages += 1

    def _to_pages(self) -> None:
        """Rewrite the pages written so far as compressed pages, and go on that way."""
        old, pages = self._atomic, self._map.reshape(-1, *self._map.shape[2:])[: self.pages]
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._map, self.pages = None, 0
        for page in pages:  # one page in memory at a time
            self._write_page(np.asarray(page))
            self.pages += 1
        del pages
        old.__exit__(ValueError, None, None)  # removes the hyperstack's temp file

    def _open_hyperstack(self, page: np.ndarray) -> np.ndarray:
        import tifffile

        images, channels = self.hyperstack
        metadata = {"axes": "ZCYX"}
        kw = {}
        if self.pixel_size is not None:
            x, y, unit = self.pixel_size
            metadata["unit"] = _imagej_unit(unit)
            kw = {"resolution": (1.0 / x, 1.0 / y)}
        return tifffile.memmap(self._tmp, shape=(images, channels, *page.shape),
                               dtype=page.dtype, imagej=True, metadata=metadata, **kw)

    def _write_page(self, page: np.ndarray) -> None:
        import tifffile

        if self._tif is None:
            self._tif = tifffile.TiffWriter(self._tmp, bigtiff=self.bigtiff)
        calibration = {}
        if self.pixel_size is not None:
            x, y, unit = self.pixel_size
            calibration = {"resolution": (1.0 / x, 1.0 / y), "resolutionunit": 1}  # NONE
            if self.pages == 0:  # ImageJ reads the unit from the first page's description
                calibration["description"] = f"ImageJ=1.11a\nunit={_imagej_unit(unit)}\n"
        self._tif.write(page, compression="zlib", photometric="minisblack", metadata=None,
                        **calibration)  # fmt: skip

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tif is not None:
            self._tif.close()
        if self._map is not None:
            declared = self._map.shape[0] * self._map.shape[1]
            self._map.flush()
            del self._map
            if exc_type is None and self.pages != declared:
                self._atomic.__exit__(ValueError, None, None)  # nothing half-written is kept
                raise ValueError(f"{self.path}: {self.pages} pages written of the declared "
                                 f"{declared}")  # fmt: skip
        self._atomic.__exit__(exc_type, exc, tb)


def _imagej_unit(unit: str) -> str:
    """A unit as ImageJ's description takes it (ASCII; "micron" for µm)."""
    return "micron" if unit == "µm" else unit.encode("ascii", "replace").decode()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
