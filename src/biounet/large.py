"""Images larger than memory: read lazily, normalised from streamed statistics, predicted
block by block and written to OME-Zarr as the blocks come.

- :func:`open_lazy`: a Zarr array, an OME-Zarr image (level 0 of its ``multiscales``) or a
  TIFF (tifffile's Zarr store: tiles or strips are read as needed) -> a :class:`LazyImage`,
  which reads any window, mirrored past the image's edges as :mod:`biounet.mirror` mirrors.
- :func:`streamed_normalization`: the image-wide statistics of ``normalization.normalize``
  (mean, standard deviation, the sign of the median) in passes over 2048 x 2048 windows;
  exact for 8- and 16-bit integers (a histogram), float64 sums of the float32 pixels
  otherwise, as the :class:`~biounet.normalization.Normalization` that the in-memory run
  applies.
- :class:`OmeZarrWriter`: a new OME-Zarr image (NGFF 0.5: Zarr v3, 1024 x 1024 chunks,
  axes and the input's pixel size), written window by window, renamed into place when
  complete.
- :func:`large_probabilities`: ``tiling.probabilities`` for a :class:`LazyImage`, through
  the one tiling engine, ``tiling.blockwise_probabilities``: the same tiles, so the same
  probabilities.

Peak memory is the network's activations (``memory_mb``) plus one block of about 2048 x 2048
pixels, whatever the image's size. Zarr is an optional dependency (``biounet[zarr]``),
imported where it is needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import PixelSize, channels_text, named, tiff_pixel_size
from .mirror import mirrored
from .normalization import Normalization
from .tiling import (
    TileOptions,
    activation_bytes,
    blockwise_probabilities,
    dihedral_predictor,
    evaluating,
    plan_tiles,
    run_precision,
    tile_options,
    unet_predictor,
)

ZARR_SUFFIX = ".zarr"
ZARR_HINT = "pip install 'biounet[zarr]'"
CHUNK = 1024  # output chunk edge, pixels
STATS_WINDOW = 2048  # window edge of the statistics passes, pixels
NGFF_VERSION = "0.5"
# io's pixel-size units <-> the UDUNITS names of OME-NGFF
NGFF_UNITS = {"µm": "micrometer", "micron": "micrometer", "microns": "micrometer",
              "um": "micrometer", "μm": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
              "mm": "millimeter", "millimeter": "millimeter", "cm": "centimeter",
              "centimeter": "centimeter", "m": "meter", "meter": "meter",
              "inch": "inch"}  # fmt: skip
UNITS_OF_NGFF = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm",
                 "meter": "m", "inch": "inch"}  # fmt: skip


def zarr_module():
    """The ``zarr`` package, or InputError telling how to install it."""
    try:
        import zarr
    except ImportError:
        raise InputError(f"Zarr images need the zarr package: {ZARR_HINT}") from None
    return zarr


def is_zarr_path(path: str | Path | None) -> bool:
    """Whether ``path`` names a Zarr store (ends in .zarr)."""
    return path is not None and str(path).rstrip("/\\").lower().endswith(ZARR_SUFFIX)


# ---------------------------------------------------------------------------------------
# Reading


@dataclass
class LazyImage:
    """One 2-D image of C channels that stays on disk: ``array`` is any array with numpy
    slicing (a zarr array), whose axes ``axes`` name ("y", "x", "c"; any other axis has
    size 1)."""

    array: object
    axes: tuple[str, ...]
    path: Path
    pixel_size: PixelSize | None = None
    keep: list = field(default_factory=list)  # open files the array reads from

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W), pixels."""
        return tuple(int(self.array.shape[self.axes.index(a)]) for a in "yx")

    @property
    def channels(self) -> int:
        return int(self.array.shape[self.axes.index("c")]) if "c" in self.axes else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(C, y1 - y0, x1 - x0) stored pixels of a window inside the image."""
        index = tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x"
                      else slice(None) if a == "c" else 0 for a in self.axes)  # fmt: skip
        data = np.asarray(self.array[index])
        kept = [a for a in self.axes if a in "cyx"]  # the axes left after indexing
        if "c" not in kept:
            return data[None]
        return np.transpose(data, [kept.index(a) for a in "cyx"])

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(C, y1 - y0, x1 - x0) stored pixels of any window: past the image's edges the
        image is mirrored without repeating the edge pixel (numpy "reflect"), and again
        where a window reaches farther than the image is long."""
        H, W = self.shape
        ry, rx = mirrored(np.arange(y0, y1), H), mirrored(np.arange(x0, x1), W)
        ya, xa = int(ry.min()), int(rx.min())
        data = self.region(ya, int(ry.max()) + 1, xa, int(rx.max()) + 1)
        if y0 < 0 or y1 > H:
            data = data[:, ry - ya]
        if x0 < 0 or x1 > W:
            data = data[:, :, rx - xa]
        return data

    def close(self) -> None:
        for f in self.keep:
            f.close()


def open_lazy(path: str | Path) -> LazyImage:
    """A Zarr array, an OME-Zarr image (level 0) or a TIFF as a :class:`LazyImage`.

    InputError naming ``path`` for a .zarr that is no Zarr store, a group without OME
    ``multiscales``, axes that do not name y and x, and axes other than y, x and c (channel)
    of more than one element (z, t: one 2-D plane per image), colour samples in a TIFF.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path)
    zarr = zarr_module()
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # zarr raises many types for foreign folders and files
        raise InputError(f"{path}: not a Zarr array or OME-Zarr image ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:120]})") from None  # fmt: skip
    if isinstance(node, zarr.Group):
        return _open_ome(node, path)
    names = _dimension_names(node)
    if names is None:
        if node.ndim < 2 or any(n != 1 for n in node.shape[:-2]):
            raise InputError(f"{path}: a {node.ndim}-D Zarr array of shape {tuple(node.shape)} "
                             "without axis names: which axes are y and x? Write it as OME-Zarr "
                             "or name its dimensions (zarr v3 dimension_names)")  # fmt: skip
        names = ["q"] * (node.ndim - 2) + ["y", "x"]
    return LazyImage(node, _axes(names, node.shape, path), path)


def _dimension_names(array) -> list[str] | None:
    """A zarr array's axis names (v3 dimension_names, or xarray's v2 _ARRAY_DIMENSIONS)."""
    names = getattr(array.metadata, "dimension_names", None)
    names = names or array.attrs.get("_ARRAY_DIMENSIONS")
    if not names or any(n is None for n in names):
        return None
    return [str(n) for n in names]


def _axes(names, shape, path: Path, kinds=None) -> tuple[str, ...]:
    """Axis names -> ("c" | "y" | "x" | "q" for a size-1 axis to drop), or InputError."""
    kinds = kinds or [None] * len(names)
    lower = [n.lower() for n in names]
    if lower.count("y") != 1 or lower.count("x") != 1:
        raise InputError(f"{path}: axes {', '.join(names)}: expected one y and one x axis")
    axes = []
    for name, kind, n in zip(names, kinds, shape, strict=True):
        a = name.lower()
        if a in ("y", "x"):
            axes.append(a)
        elif a in ("c", "channel") or kind == "channel":
            axes.append("c")
        elif n == 1:
            axes.append("q")
        else:
            raise InputError(f"{path}: axis {name!r} has {n} elements; predict reads one 2-D "
                             "(y, x) plane per image, with an optional channel axis c")  # fmt: skip
    if axes.count("c") > 1:
        raise InputError(f"{path}: axes {', '.join(names)}: more than one channel axis")
    return tuple(axes)


def _open_ome(group, path: Path) -> LazyImage:
    """Level 0 of an OME-Zarr image group (NGFF 0.4 or 0.5), with its pixel size."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    if not multiscales:
        raise InputError(f"{path}: a Zarr group without OME multiscales metadata; give the "
                         "path of the image array inside it")  # fmt: skip
    try:
        ms = multiscales[0]
        axes = [a if isinstance(a, str) else a["name"] for a in ms["axes"]]
        kinds = [None if isinstance(a, str) else a.get("type") for a in ms["axes"]]
        units = [None if isinstance(a, str) else a.get("unit") for a in ms["axes"]]
        level = ms["datasets"][0]
        array = group[level["path"]]
    except (KeyError, IndexError, TypeError) as e:
        raise InputError(f"{path}: damaged OME multiscales metadata ({type(e).__name__}: "
                         f"{e})") from None  # fmt: skip
    if len(axes) != array.ndim:
        raise InputError(f"{path}: OME multiscales name {len(axes)} axes ({', '.join(axes)}) "
                         f"for a {array.ndim}-D array")  # fmt: skip
    names = _axes(axes, array.shape, path, kinds)
    scale = np.ones(array.ndim)
    for transforms in (level.get("coordinateTransformations", []),
                       ms.get("coordinateTransformations", [])):  # fmt: skip
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", ())) == array.ndim:
                scale *= np.asarray(t["scale"], float)
    y, x = names.index("y"), names.index("x")
    pixel_size = None
    if units[x] or units[y] or scale[x] != 1 or scale[y] != 1:
        unit = units[x] or units[y] or "pixel"
        pixel_size = (float(scale[x]), float(scale[y]), UNITS_OF_NGFF.get(unit, unit))
    return LazyImage(array, names, path, pixel_size)


def _open_tiff(path: Path) -> LazyImage:
    """A TIFF's first series (level 0) through tifffile's Zarr store, with its pixel size."""
    import tifffile

    zarr = zarr_module()
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises many types for damaged files
        raise InputError(f"{path}: not a readable TIFF ({type(e).__name__})") from None
    try:
        series = tif.series[0]
        if "S" in series.axes:
            raise InputError(f"{path}: colour samples (axes {series.axes}); a large image is "
                             "read as gray or with a channel axis: save it as gray")  # fmt: skip
        names = [{"Y": "y", "X": "x", "C": "c"}.get(a, a.lower()) for a in series.axes]
        array = zarr.open(series.aszarr(level=0), mode="r")
        axes = _axes(names, array.shape, path)
        return LazyImage(array, axes, path, tiff_pixel_size(tif), keep=[tif])
    except Exception:
        tif.close()
        raise


# ---------------------------------------------------------------------------------------
# Normalisation from streamed statistics


def streamed_normalization(image: LazyImage, mode: str = "zscore") -> list[Normalization]:
    """One :class:`Normalization` per channel, as ``normalization.normalize(image, mode)``
    computes it on the whole image (mode: "zscore", "zscore-bright" or "zscore-invert").

    8- and 16-bit integers: one pass building a histogram; mean and median (the sign of the
    normalised median decides "zscore-bright") are those of the whole array, and the
    standard deviation differs from numpy's only in its summation order. Other dtypes:
    float64 sums over windows of the float32 pixels (mean, then squared deviations; a third
    pass for "zscore-bright" counts the positive normalised pixels and finds the two nearest
    zero, which settles the median's sign exactly); InputError for NaN or infinite pixels.
    """
    if mode not in ("zscore", "zscore-bright", "zscore-invert"):
        raise ValueError(f"normalization must be zscore, zscore-bright or zscore-invert, got "
                         f"{mode!r}")  # fmt: skip
    dt = image.dtype
    if dt.kind == "b" or (dt.kind in "ui" and dt.itemsize <= 2):
        stats = _histogram_stats(image)
    else:
        stats = _summed_stats(image)
    return [Normalization(mean, std, mode == "zscore-invert" or (mode == "zscore-bright"
                                                                 and bright))  # fmt: skip
            for mean, std, bright in stats]


def _windows(image: LazyImage):
    """(C, h, w) stored pixels of the image in STATS_WINDOW-square windows."""
    H, W = image.shape
    for y in range(0, H, STATS_WINDOW):
        for x in range(0, W, STATS_WINDOW):
            yield image.region(y, min(y + STATS_WINDOW, H), x, min(x + STATS_WINDOW, W))


def _histogram_stats(image: LazyImage) -> list[tuple[float, float, bool]]:
    """(mean, std, median > mean after normalising) per channel of an 8/16-bit image."""
    dt = image.dtype
    low = 0 if dt.kind in "ub" else int(np.iinfo(dt).min)
    bins = 2 if dt.kind == "b" else 2 ** (8 * dt.itemsize)
    hist = np.zeros((image.channels, bins), np.int64)
    for block in _windows(image):
        for c, plane in enumerate(block):
            hist[c] += np.bincount((plane.astype(np.int64) - low).ravel(), minlength=bins)
    values = np.arange(bins, dtype=np.float64) + low
    out = []
    for h in hist:
        n = int(h.sum())
        mean = float((values * h).sum() / n)  # integer sums below 2**53: exact, as numpy's
        std = float(np.sqrt((h * (values - mean) ** 2).sum() / n))
        seen = h > 0
        x = Normalization(mean, std)(values[seen])  # the normalised value of each level
        out.append((mean, std, _median_positive(n, int(h[seen][x > 0].sum()),
                                                x[x <= 0], x[x > 0])))  # fmt: skip
    return out


def _summed_stats(image: LazyImage) -> list[tuple[float, float, bool]]:
    """(mean, std, median > mean after normalising) per channel, from float64 sums."""
    C = image.channels
    total, n = np.zeros(C), 0
    for block in _windows(image):
        x = block.astype(np.float32)
        if not np.isfinite(x).all():
            raise InputError(f"{image.path}: has NaN or infinite pixels")
        total += x.sum(axis=(1, 2), dtype=np.float64)
        n += x[0].size
    means = total / n
    squares = np.zeros(C)
    for block in _windows(image):
        d = block.astype(np.float32) - means[:, None, None]  # float64
        squares += (d * d).sum(axis=(1, 2))
    stds = np.sqrt(squares / n)
    positives = np.zeros(C, np.int64)
    below = np.full(C, -np.inf, np.float32)  # the largest normalised value <= 0
    above = np.full(C, np.inf, np.float32)  # the smallest > 0
    for block in _windows(image):
        for c in range(C):
            x = Normalization(float(means[c]), float(stds[c]))(block[c])
            up = x > 0
            positives[c] += int(up.sum())
            if up.any():
                above[c] = min(above[c], x[up].min())
            if not up.all():
                below[c] = max(below[c], x[~up].max())
    return [(float(means[c]), float(stds[c]),
             _median_positive(n, int(positives[c]), below[c:c + 1], above[c:c + 1]))
            for c in range(C)]  # fmt: skip


def _median_positive(n: int, positives: int, below: np.ndarray, above: np.ndarray) -> bool:
    """Whether numpy's median of ``n`` float32 values is > 0, given how many are > 0 and
    (for the tie case) the values <= 0 (``below``) and > 0 (``above``) present."""
    half = n // 2
    if positives >= half + 1:  # the middle value(s) are positive
        return True
    if n % 2 or positives < half:  # the (upper) middle value is <= 0
        return False
    # n even and exactly half positive: numpy's median is the float32 mean of the largest
    # value <= 0 and the smallest > 0
    pair = np.array([below.max(), above.min()], np.float32)
    return bool(np.mean(pair) > 0)


# ---------------------------------------------------------------------------------------
# Writing


class OmeZarrWriter:
    """A new OME-Zarr image (NGFF 0.5, Zarr v3) of (H, W) or, with ``channels``, (C, H, W)
    ``dtype`` pixels in CHUNK-square chunks, written window by window (:meth:`write`), with
    ``pixel_size`` (x, y, unit) as its scale when given. Built in a temporary folder beside
    ``path`` and renamed onto it when complete; a failed run leaves nothing."""

    def __init__(self, path: str | Path, shape: tuple[int, int], dtype, channels: int | None = None,
                 pixel_size: PixelSize | None = None):  # fmt: skip
        self.path = Path(path)
        self.shape, self.dtype, self.channels = tuple(shape), np.dtype(dtype), channels
        self.pixel_size = pixel_size

    def __enter__(self) -> OmeZarrWriter:
        zarr = zarr_module()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                         dir=self.path.parent))  # fmt: skip
        try:
            self._create(zarr)
        except BaseException as e:
            self.__exit__(type(e), e, None)  # removes the folder, names the path
            raise
        return self

    def _create(self, zarr) -> None:
        lead = () if self.channels is None else (self.channels,)
        group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        group.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": [self.multiscales()]}
        self.array = group.create_array(
            "0", shape=(*lead, *self.shape), dtype=self.dtype,
            chunks=(*(1,) * len(lead), *(min(CHUNK, n) for n in self.shape)), fill_value=0,
            dimension_names=(*("c",) * len(lead), "y", "x"),
        )  # fmt: skip

    def multiscales(self) -> dict:
        """The image's OME-NGFF ``multiscales`` entry: axes, one level "0", its scale."""
        unit = None
        sy = sx = 1.0
        if self.pixel_size is not None:
            sx, sy, u = self.pixel_size
            unit = NGFF_UNITS.get(u)
        space = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "yx"]
        axes = ([{"name": "c", "type": "channel"}] if self.channels is not None else []) + space
        scale = [1.0] * (len(axes) - 2) + [float(sy), float(sx)]
        return {"name": self.path.name.removesuffix(ZARR_SUFFIX), "axes": axes,
                "datasets": [{"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": scale}]}]}  # fmt: skip

    def write(self, y: int, x: int, data: np.ndarray) -> None:
        """Store (h, w) or (C, h, w) ``data`` at rows y.., columns x.."""
        h, w = data.shape[-2:]
        self.array[..., y : y + h, x : x + w] = data

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
                raise named(exc, self.path) from exc  # e.g. a full disk: say which output
            return
        if self.path.is_dir() and not self.path.is_symlink():  # replace a previous result
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old",
                                        dir=self.path.parent))  # fmt: skip
            os.replace(self.path, old / "old")
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if self.path.exists() or self.path.is_symlink():
                self.path.unlink()
            os.replace(self.tmp, self.path)


# ---------------------------------------------------------------------------------------
# Prediction


def large_probabilities(
    model,
    image: LazyImage,
    write: Callable[[int, int, np.ndarray], None],
    options: TileOptions | None = None,
    *,
    normalization: str | None = None,
    **tiling,
) -> None:
    """``tiling.probabilities`` of a :class:`LazyImage`: ``write(y, x, probs)`` receives the
    (K, h, w) float32 probabilities of image rows y..y+h, columns x..x+w, block by block
    (``options.block`` pixels a side), covering the image once; ``options`` with the
    keyword ``tiling`` changes (TileOptions fields) say how. Without ``tta`` they equal the
    in-memory run's (the same engine, tile plan and tiles, see
    ``tiling.blockwise_probabilities``; batches of at most half of ``memory_mb``, which
    change the outputs only by float rounding); ``tta`` averages the 8 views of each tile
    (``tiling.dihedral_predictor``) rather than of the whole image."""
    options = tile_options(options, **tiling)
    takes = model.config.in_channels
    if image.channels != takes:
        raise InputError(f"{image.path}: {channels_text(image.channels)}; the model takes "
                         f"{takes}")  # fmt: skip
    precision = run_precision(model, options.precision)
    norms = streamed_normalization(image, normalization or model.config.normalization)
    plan = plan_tiles(model.config, image.shape, options, precision=precision)
    # the in-memory run's tiles (the same outputs) in batches within half the budget, one
    # tile at least: the plan fills the budget with tiles of a size that depends on the
    # image's, and the block and the Python runtime live beside them
    per_tile = activation_bytes(model.config, plan.tile, precision)
    half = options.memory_mb * 2**20 // 2 // per_tile
    plan = replace(plan, batch=max(1, min(plan.batch, half)))

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raw = image.window(y0, y1, x0, x1)  # (C, h, w) stored dtype
        return np.stack([norm(c) for norm, c in zip(norms, raw, strict=True)])

    with evaluating(model):
        predictor = unet_predictor(model, precision, options.compile)
        if options.tta:
            predictor = dihedral_predictor(predictor)
        blockwise_probabilities(predictor, read, image.shape, plan, write, block=options.block,
                                progress=options.progress)  # fmt: skip
