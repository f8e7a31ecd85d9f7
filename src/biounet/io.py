"""Reading and writing images and masks, with validation that names the file and the problem.

Images cross module boundaries as lists of (H, W) numpy arrays (a TIFF stack is a list of
its slices; a folder is a list of its files, which may differ in size). Colour inputs are
converted to gray; masks are checked to hold classes and mapped to class indices, so a
0/255 mask can never be misread as "everything is class 0".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


class InputError(ValueError):
    """Bad user input. The message is one line that names the file and the problem."""


@dataclass
class Images:
    """Images read from one path: ``arrays[i]`` is (H_i, W_i); ``names[i]`` names it."""

    arrays: list[np.ndarray]
    names: list[str]
    source: Path

    def __len__(self) -> int:
        return len(self.arrays)


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


def read_images(path: str | Path, *, mask: bool = False) -> Images:
    """Read a TIFF (single image or stack), a PNG, or a folder of them.

    Returns gray (H, W) arrays in their stored dtype. Colour images are converted to gray
    (equal channels: taken as is; otherwise ITU-R 601 luma); an alpha channel is dropped.
    With ``mask=True`` palette PNGs keep their indices and colour masks must have equal
    channels (a colour-coded mask is an error, not a silently averaged one).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        arrays, names = [], []
        for f in list_image_files(path):
            img = read_images(f, mask=mask)
            arrays += img.arrays
            names += [f.stem] if len(img) == 1 else [f"{f.stem}[{i}]" for i in range(len(img))]
        return Images(arrays, names, path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        stack = _read_tiff(path, mask)
    elif suffix == ".png":
        stack = [_read_png(path, mask)]
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r} (use .tif, .tiff or .png)")
    for i, a in enumerate(stack):
        if a.size == 0:
            raise InputError(f"{path}: slice {i} is empty ({a.shape[0]} x {a.shape[1]})")
    names = [path.stem] if len(stack) == 1 else [f"{path.stem}[{i}]" for i in range(len(stack))]
    return Images(stack, names, path)


def _read_tiff(path: Path, mask: bool) -> list[np.ndarray]:
    import logging

    import tifffile

    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # damage is reported below, in one line
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) == 1:
                series = [(tif.series[0].axes, tif.series[0].asarray())]
            else:  # pages of different shapes: every page, in file order
                series = [(page.axes, page.asarray()) for page in tif.pages]
    except Exception as e:  # tifffile raises many types for damaged files
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: not a readable TIFF ({type(e).__name__}: {first})") from None
    finally:
        tiff_log.setLevel(level)
    pages: list[np.ndarray] = []
    for axes, data in series:
        if "S" in axes:  # colour samples, interleaved (..YXS) or planar (..SYX)
            data = _to_gray(np.moveaxis(data, axes.index("S"), -1), path, mask)
        elif data.ndim >= 3 and data.shape[-1] in (2, 3, 4) and data.shape[-3] > 4:
            data = _to_gray(data, path, mask)  # (.., H, W, C) without a samples tag
        if data.ndim < 2:
            raise InputError(f"{path}: expected a 2-D image or a stack, got shape {data.shape}")
        pages.extend(data.reshape(-1, *data.shape[-2:]))  # leading axes (pages, Z, T) -> N
    return pages


def _read_png(path: Path, mask: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" and not mask:
                im = im.convert("RGBA")
            data = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable PNG ({e})") from None
    if data.ndim == 3:
        data = _to_gray(data, path, mask)
    return data


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


# ---------------------------------------------------------------------------------------
# Masks


def mask_to_classes(mask: np.ndarray, num_classes: int, where: str, hint: str = "") -> np.ndarray:
    """Class-index map (H, W) uint8 from a stored mask, or InputError naming ``where``.

    Accepted: binary 0/255 (255 -> 1) or 0/1, or integer class maps with values in
    0..num_classes-1 (for a 1-output sigmoid network, ``num_classes`` is 2).
    Anything else (anti-aliased or JPEG-compressed masks, instance labels given to a
    binary model, float masks with fractions) is an error, never a silent guess.
    """
    values = np.unique(mask)
    if mask.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise InputError(
            f"{where}: mask values are not classes: fractional values such as "
            f"{values[values != np.round(values)][0]:g}"
        )
    if values.min() < 0:
        raise InputError(f"{where}: mask values are not classes: negative value {values.min():g}")
    if np.isin(values, (0, 255)).all() and not np.isin(values, (0, 1)).all():
        return (mask == 255).astype(np.uint8)  # binary 0/255 -> 0/1
    if values.max() < num_classes:
        return mask.astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    expected = "0/255 or 0/1" if num_classes == 2 else f"0/255, 0/1 or 0..{num_classes - 1}"
    raise InputError(
        f"{where}: mask values are not classes: {len(values)} distinct values ({shown}); "
        f"expected {expected}{hint}"
    )


def read_masks(path: str | Path, num_classes: int = 2, hint: str = "") -> Images:
    """Read masks like :func:`read_images` and map each to class indices (H, W) uint8;
    ``hint`` ends the message of a mask with too many distinct values."""
    masks = read_images(path, mask=True)
    masks.arrays = [
        mask_to_classes(m, num_classes, where_of(masks, i), hint)
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
    import logging

    from .labels import labels_to_instances  # labels imports this module (InputError)

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
        masks.names = list(images.names)
    if len(masks) != len(images):
        raise InputError(
            f"{masks.source}: {len(masks)} slices, but {images.source} has {len(images)}"
        )
    for i, (img, m) in enumerate(zip(images.arrays, masks.arrays, strict=True)):
        if img.shape != m.shape:
            raise InputError(
                f"{where_of(masks, i)}: mask is {m.shape[0]} x {m.shape[1]}, "
                f"but its image is {img.shape[0]} x {img.shape[1]}"
            )


def read_pairs(
    images: str | Path, masks: str | Path, num_classes: int = 2
) -> tuple[Images, Images]:
    """Images and their class-index masks, checked to pair one to one."""
    imgs = read_images(images)
    ms = read_masks(masks, num_classes)
    check_pairs(imgs, ms)
    return imgs, ms


def normalize(image: np.ndarray, mode: str = "zscore") -> np.ndarray:
    """(H, W) any dtype -> (H, W) float32 with zero mean and unit variance (per image).

    ``mode`` "zscore-bright" also negates an image whose median exceeds its mean (a bright
    background dominating dark objects, as in inverted or stained images), so objects are
    bright in every image. A constant image maps to zeros. Works in place on one float32
    copy (large images).
    """
    x = image.astype(np.float32)  # always a copy
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    x -= mean
    x /= std if std > 1e-8 else 1.0
    if mode == "zscore-bright" and float(np.median(x)) > 0:
        np.negative(x, out=x)
    return x


# ---------------------------------------------------------------------------------------
# Writing (atomic: a temp file in the target folder, then rename)


def atomic_path(path: str | Path):
    """Context manager yielding a temp path next to ``path``; renamed onto it on success."""
    return _Atomic(Path(path))


class _Atomic:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=f".tmp{self.path.suffix}", dir=self.path.parent
        )
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


def write_tiff(path: str | Path, data: np.ndarray | Sequence[np.ndarray]) -> Path:
    """Write (H, W) or (N, H, W) ``data`` as a zlib-compressed (multi-page) TIFF, atomically."""
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(data), compression="zlib", photometric="minisblack")
    return path


class StackWriter:
    """Write a multi-page TIFF one (H, W) page at a time, atomically (temp file + rename on
    success), so a stack never has to be held in memory and a failed run leaves nothing."""

    def __init__(self, path: str | Path, bigtiff: bool = False):
        self.path = Path(path)
        self.bigtiff = bigtiff  # needed past 4 GiB
        self.pages = 0

    def __enter__(self) -> StackWriter:
        import tifffile

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._tif = tifffile.TiffWriter(tmp, bigtiff=self.bigtiff)
        return self

    def write(self, page: np.ndarray) -> None:
        self._tif.write(page, compression="zlib", photometric="minisblack", metadata=None)
        self.pages += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._tif.close()
        self._atomic.__exit__(exc_type, exc, tb)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
