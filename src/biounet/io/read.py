"""Reading images and masks from a file or a folder, with validation that names the file
and the problem.

Images cross module boundaries as lists of (H, W) numpy arrays, or (C, H, W) for images of
several channels (a TIFF stack is a list of its slices; a folder is a list of its files,
which may differ in size), held in :class:`Images` with their names and pixel sizes.
Masks are checked to hold classes and mapped to class indices
(:func:`biounet.labels.mask_to_classes`), so a 0/255 mask can never be misread as
"everything is class 0"; instance labels go through
:func:`biounet.labels.labels_to_instances`. Reading never silently drops data: a NaN or
infinite pixel is refused, and so is a truncated TIFF.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..labels import labels_to_instances, mask_to_classes
from .bundled import resolve_data_path
from .channels import Channels, channels_of, channels_text, parse_channels, pick_channels
from .formats import IMAGE_SUFFIXES, read_png, read_tiff
from .pixel_size import PixelSize


@dataclass
class Images:
    """Images read from one path (or several folders, :func:`read_sources`): ``arrays[i]``
    is (H_i, W_i), or (C, H_i, W_i) for images of C > 1 channels (every image of a set has
    the same C); ``names[i]`` names it; ``pixel_sizes[i]`` is its pixel size
    ``(x, y, unit)`` from the file's metadata (unit "µm", "nm", ...; a stack's slices share
    one), or None where the file has none (default: None for every array); ``folders[i]``
    is the folder it was read from, for a set read from several (None otherwise)."""

    arrays: list[np.ndarray]
    names: list[str]
    source: Path
    pixel_sizes: list[PixelSize | None] | None = None
    folders: list[Path] | None = None

    def __post_init__(self) -> None:
        if self.pixel_sizes is None:
            self.pixel_sizes = [None] * len(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def channels(self) -> int:
        """The images' channels (1 for (H, W) arrays)."""
        return channels_of(self.arrays[0]) if self.arrays else 1


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
        stack, pixel_size = read_tiff(path, mask, keep)
    elif suffix == ".png":
        image, pixel_size = read_png(path, mask, keep)
        stack = [image]
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r} (use .tif, .tiff or .png)")
    if keep:
        stack = [pick_channels(a, picked, path) for a in stack]
    for i, a in enumerate(stack):
        if a.size == 0:
            raise InputError(f"{path}: slice {i} is empty ({a.shape[-2]} x {a.shape[-1]})")
        _check_finite(a, f"{path}: slice {i}" if len(stack) > 1 else f"{path}: image")
    names = [path.stem] if len(stack) == 1 else [f"{path.stem}[{i}]" for i in range(len(stack))]
    return Images(stack, names, path, [pixel_size] * len(stack))


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


def read_sources(spec: str | Path, *, mask: bool = False,
                 channels: Channels | str = None) -> Images:  # fmt: skip
    """:func:`read_images` of ``spec``, or of several folders given as one text, their paths
    separated by commas (a path that exists as written is one path, commas and all), read
    in order into one set. ``data/NAME/...`` paths name bundled data
    (:func:`biounet.io.bundled.resolve_data_path`). InputError naming the path for a part
    that is not a folder, a name found in two folders, or folders of different channel
    counts."""
    text = str(spec)
    if "," not in text or resolve_data_path(text).exists():
        return read_images(resolve_data_path(text), mask=mask, channels=channels)
    sets = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        path = resolve_data_path(part)
        if not path.is_dir():
            raise InputError(f"{path}: not a folder; images read from several places (paths "
                             "separated by commas) must each be a folder")  # fmt: skip
        sets.append(read_images(path, mask=mask, channels=channels))
    seen: dict[str, Path] = {}
    for s in sets:
        if s.channels != sets[0].channels:
            raise InputError(f"{s.source}: {channels_text(s.channels)}, but {sets[0].source} "
                             f"has {sets[0].channels}; every image of a set needs the same "
                             "channels (pick them with --channels)")  # fmt: skip
        for n in s.names:
            if n in seen:
                raise InputError(f"{s.source / n}: {seen[n] / n} has the same name; images "
                                 "read from several folders need different names")  # fmt: skip
            seen[n] = s.source
    return Images([a for s in sets for a in s.arrays], [n for s in sets for n in s.names],
                  Path(text), [p for s in sets for p in s.pixel_sizes],
                  [s.source for s in sets for _ in s.arrays])  # fmt: skip


def _by_name(images: Images) -> bool:
    """Whether ``images`` came from folders (paired with masks by name)."""
    return images.folders is not None or images.source.is_dir()


def where_of(images: Images, i: int) -> str:
    if images.folders is not None:
        return str(images.folders[i] / images.names[i].split("[")[0])
    if len(images) == 1 or images.source.is_dir():
        name = images.names[i].split("[")[0]
        return str(images.source / name) if images.source.is_dir() else str(images.source)
    return f"{images.source} slice {i}"


def check_pairs(images: Images, masks: Images) -> None:
    """InputError unless ``masks`` pairs one to one with ``images`` in count and size."""
    if _by_name(images) and _by_name(masks):
        missing = sorted(set(images.names) - set(masks.names))
        if missing:
            raise InputError(
                f"{masks.source}: no mask for image {missing[0]!r}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        order = {n: i for i, n in enumerate(masks.names)}
        masks.arrays = [masks.arrays[order[n]] for n in images.names]
        masks.pixel_sizes = [masks.pixel_sizes[order[n]] for n in images.names]
        if masks.folders is not None:
            masks.folders = [masks.folders[order[n]] for n in images.names]
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
