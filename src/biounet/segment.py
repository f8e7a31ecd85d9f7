"""Segmentation: a model's probabilities -> foreground probability, 0/255 mask, instances;
or, for a multi-class model, a class map.

- :func:`segment`: one (H, W) image array -> a :class:`Segmentation`.
- :func:`segment_files`: an image, a stack or a folder -> TIFF files (what ``biounet
  predict`` writes): ``NAME.tif`` (float32 P(foreground)), ``NAME-mask.tif`` (uint8 0/255)
  and ``NAME-instances.tif`` (uint16, uint32 past 65535). A multi-class model (a "mask"
  target with C > 2 outputs) writes its class map as ``NAME.tif`` (uint8 0..C-1, the argmax
  over the C class probabilities) and, if asked, ``NAME-probabilities.tif`` (float32, C
  pages per image: P(class 0) .. P(class C-1)); masks and instances are for binary and
  contour models.

How the probabilities become masks and instances is an :class:`InferenceConfig`; a
checkpoint carries its own (``preset.inference``), which is used unless one is given. The
instance method follows from it and from the model's training target (``"auto"``: mask ->
connected components, binary -> components grown over the carved borders, contour ->
seeded watershed). A bare :class:`UNet`, with no training configuration beside it, counts
as a contour model if it has 3 outputs and as a mask model otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from .config import CONTOUR_OPTIONS, InferenceConfig, Preset
from .device import select_device
from .errors import InputError
from .exported import load_model
from .instances import equivalent_diameters, instances, resize_labels
from .io import StackWriter, channels_text, read_images
from .labels import MAX_CLASSES
from .large import ZARR_SUFFIX, OmeZarrWriter, is_zarr_path, large_probabilities, open_lazy
from .model import INVERT, UNet
from .rois import rois_of, write_roi_zip
from .shards import parse_shard, shard_groups, shard_of_environment
from .slices import parse_slices
from .tiling import TileOptions, predict, tile_options

log = logging.getLogger("biounet")

OUTPUTS = ("probabilities", "mask", "instances", "classes")
BINARY_OUTPUTS = ("probabilities", "mask", "instances")  # what binary and contour models make
CLASS_OUTPUTS = ("probabilities", "classes")  # what multi-class models make
CLASSIC_TIFF_BYTES = 2**31  # past this, float32 pages go to a BigTIFF (classic: 4 GiB)


@dataclass(frozen=True)
class Segmentation:
    """What :func:`segment` made of one (H, W) image; None where not asked for."""

    # (H, W) float32 P(foreground), in [0, 1]; multi-class models: (C, H, W) float32, the
    # probability of each class (summing to 1 over C)
    probabilities: np.ndarray | None = None
    mask: np.ndarray | None = None  # (H, W) uint8: 255 where P(foreground) > threshold
    instances: np.ndarray | None = None  # (H, W) uint16 (uint32 past 65535), 0 = background
    # multi-class models: (H, W) uint8 class map 0..C-1, the most probable class (argmax;
    # the lowest class index where two are equally probable)
    classes: np.ndarray | None = None


MAX_RESCALE = 4.0  # --diameter rescales an image by at most this factor either way


def rescale_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) or (C, H, W) image or probabilities -> float32 of the same layout at ``shape``:
    bilinear, antialiased where it shrinks (pixel areas, not corners, aligned)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t = t[None] if t.ndim == 3 else t[None, None]
    out = torch.nn.functional.interpolate(t, size=tuple(shape), mode="bilinear",
                                          align_corners=False, antialias=True)  # fmt: skip
    return out[0].numpy() if image.ndim == 3 else out[0, 0].numpy()


def _foreground(probs: np.ndarray) -> np.ndarray:
    """(H, W) P(foreground) of a binary model's (H, W) or a contour model's (3, H, W)
    probabilities (1 - P(background))."""
    return 1.0 - probs[0] if probs.ndim == 3 else probs


@dataclass(frozen=True)
class _Segmenter:
    """A loaded model with its settled configuration and instance method."""

    model: UNet  # or an exported network with its interface (exported.ExportedUNet)
    config: InferenceConfig
    method: str  # one of config.INSTANCE_METHODS
    multiclass: bool = False  # a "mask" model of C > 2 classes: class maps, not masks
    channels: str | None = None  # the --channels it was trained with, if any
    normalization: str | None = None  # in place of the model's (predict --invert)

    def _probabilities(self, image: np.ndarray, options: TileOptions) -> np.ndarray:
        return predict(self.model, image, options, normalization=self.normalization)

    def _instances(self, probs: np.ndarray) -> np.ndarray:
        options = self.config.instance_options(self.method)
        return instances(probs if self.method == "contour" else _foreground(probs), **options)

    def measure(self, image: np.ndarray, options: TileOptions) -> float | None:
        """The objects' diameter in ``image`` as a first pass (without TTA) sees it: the
        median equivalent diameter of the foreground's connected components of at least
        config.min_size pixels (touching objects count as one; on the bundled nuclei this
        came closer to the labelled size than the first pass's instances, which split
        large nuclei); None where there are none."""
        prob = _foreground(self._probabilities(image, replace(options, tta=False)))
        labels, _ = ndimage.label(prob > self.config.threshold)
        found = equivalent_diameters(labels)
        found = found[found >= np.sqrt(4.0 * max(1, self.config.min_size) / np.pi)]
        return float(np.median(found)) if found.size else None

    def scale(self, image: np.ndarray, options: TileOptions) -> float:
        """The factor by which ``image`` is rescaled before the network: the model's
        training diameter over the image's objects' (config.diameter; "auto": measured on a
        first pass, :meth:`measure`), within [1 / MAX_RESCALE, MAX_RESCALE]; 1 without a
        diameter."""
        diameter = self.config.diameter
        if not diameter:
            return 1.0
        if diameter == "auto":
            diameter = self.measure(image, options)
            if diameter is None:  # nothing found: nothing to measure
                return 1.0
        factor = self.model.config.diameter / diameter
        return float(np.clip(factor, 1 / MAX_RESCALE, MAX_RESCALE))

    def __call__(
        self, image: np.ndarray, outputs: Iterable[str], options: TileOptions
    ) -> Segmentation:
        """The ``outputs`` of one (H, W) or (C, H, W) image, tiled as ``options`` say (TTA
        as config.tta says)."""
        shape = image.shape[-2:]
        factor = self.scale(image, options)
        if factor != 1.0:
            scaled = tuple(max(1, round(n * factor)) for n in shape)
            image = rescale_image(image, scaled)
        options = replace(options, tta=self.config.tta)
        probs = self._probabilities(image, options)  # (H, W) | (C, H, W)
        made = {}
        if "instances" in outputs and not self.multiclass:  # found at the model's scale
            labels = self._instances(probs)
            made["instances"] = labels if factor == 1.0 else resize_labels(labels, shape)
        if factor != 1.0:
            probs = rescale_image(probs, shape)
        return Segmentation(**made, **self.pixel_outputs(probs, outputs))

    def pixel_outputs(self, probs: np.ndarray, outputs: Iterable[str]) -> dict[str, np.ndarray]:
        """The per-pixel ``outputs`` of the model's (H, W) or (C, H, W) probabilities:
        "probabilities" (float32 P(foreground), or (C, H, W) class probabilities), "mask"
        (uint8 0/255), "classes" (uint8 argmax); instances are not per-pixel."""
        made = {}
        if self.multiclass:  # probs (C, H, W)
            if "probabilities" in outputs:
                made["probabilities"] = probs.astype(np.float32)
            if "classes" in outputs:
                made["classes"] = np.argmax(probs, axis=0).astype(np.uint8)
            return made
        prob = _foreground(probs)
        if "probabilities" in outputs:
            made["probabilities"] = prob.astype(np.float32)
        if "mask" in outputs:
            made["mask"] = ((prob > self.config.threshold) * 255).astype(np.uint8)
        return made


def _segmenter(
    model: str | Path | UNet | tuple[UNet, Preset],
    config: InferenceConfig | None,
    overrides: Mapping[str, object],
    device: str | torch.device,
    label: Callable[[str], str],
    invert: str | None = None,
    engine: str = "auto",
    precision: str = "auto",
) -> _Segmenter:
    """Load ``model`` (a checkpoint path, ``model_from_checkpoint``'s pair or a bare UNet),
    settle its configuration (``config``, else the model's own, with ``overrides`` applied;
    None values keep it), its instance method and, with ``invert`` (a key of INVERT), the
    normalisation in place of the model's."""
    name = str(model) if isinstance(model, str | Path) else "model"
    if isinstance(model, str | Path):  # a checkpoint, ONNX or TorchScript file
        model = load_model(model, device, engine, precision)
    unet, preset = model if isinstance(model, tuple) else (model, None)
    outputs = unet.config.out_channels
    if preset is not None:
        target = preset.train.target
    else:
        target = "contour" if outputs == 3 else "mask"
    if config is None:
        config = preset.inference if preset is not None else InferenceConfig()
    given = {k: v for k, v in overrides.items() if v is not None}
    config = replace(config, **given)
    for option in given:
        if option in CONTOUR_OPTIONS and target != "contour":
            raise InputError(f"{name}: {label(option)} applies to contour models; "
                             f"this is a {target} model")  # fmt: skip
    if outputs > 2 and target not in ("contour", "mask"):
        raise InputError(f"{name}: a {outputs}-class {target} model; predict handles binary, "
                         "contour and multi-class mask models")  # fmt: skip
    multiclass = outputs > 2 and target == "mask"
    if multiclass and outputs > MAX_CLASSES:
        raise InputError(f"{name}: a {outputs}-class model; class maps are uint8, at most "
                         f"{MAX_CLASSES} classes")  # fmt: skip
    method = "components" if multiclass else config.instance_method(target, outputs)
    channels = preset.train.channels if preset is not None else None
    if config.diameter:
        trained = unet.config.diameter
        if not trained:
            raise InputError(f"{name}: {label('diameter')} needs a model that knows the "
                             "diameter of the objects it was trained on; this one does not "
                             "(trained without instance labels, or before biounet stored "
                             "it)")  # fmt: skip
        if config.diameter != "auto" and not (
            1 / MAX_RESCALE <= trained / config.diameter <= MAX_RESCALE
        ):
            raise InputError(f"{name}: {label('diameter')} {config.diameter:g} would rescale "
                             f"the images by {trained / config.diameter:.3g}; the model was "
                             f"trained on objects of {trained:.3g} px and rescales by at most "
                             f"{MAX_RESCALE:g}x either way")  # fmt: skip
    if invert is not None and invert not in INVERT:
        raise ValueError(f"invert must be one of {tuple(INVERT)}, got {invert!r}")
    normalization = INVERT[invert] if invert is not None else None
    return _Segmenter(unet, config, method, multiclass, channels, normalization)


def _check_outputs(run: _Segmenter, outputs: tuple[str, ...], name: str) -> None:
    """InputError unless ``run``'s model makes every one of ``outputs``."""
    classes = run.model.config.out_channels
    if run.multiclass and set(outputs) - set(CLASS_OUTPUTS):
        raise InputError(f"{name}: a {classes}-class model gives a class map and class "
                         "probabilities; masks and instances need a binary or contour "
                         "model")  # fmt: skip
    if not run.multiclass and "classes" in outputs:
        raise InputError(f"{name}: a class map needs a multi-class model (a mask model of "
                         f"more than 2 classes); this one has {classes} outputs")  # fmt: skip


def segment(
    model: str | Path | UNet | tuple[UNet, Preset],
    image: np.ndarray,
    config: InferenceConfig | None = None,
    *,
    outputs: Iterable[str] | None = None,
    device: str | torch.device = "cpu",
    invert: str | None = None,
    engine: str = "auto",
    options: TileOptions | None = None,
    **tiling,
) -> Segmentation:
    """Segment one image: its foreground probability, 0/255 mask and instance labels; or,
    for a multi-class model, its class probabilities and class map.

    Args:
        model: a checkpoint path, the ``(UNet, Preset)`` pair of ``model_from_checkpoint``
            (its training target picks the instance method) or a bare :class:`UNet`
            (3 outputs: a contour model, else a mask model; past 3, a multi-class one).
        image: (H, W) array of any dtype and size, or (C, H, W) for a model of C input
            channels.
        config: threshold, TTA, instance method and options; default the checkpoint's own
            (``preset.inference``), or ``InferenceConfig()`` for a bare UNet.
        outputs: which of "probabilities", "mask", "instances" (binary and contour
            models) or "probabilities", "classes" (multi-class models) to make; default
            all the model makes. Asking a model for what it does not make is an InputError.
        device: where to run a checkpoint path's model (a loaded model runs where it is).
        invert: "auto" (negate images whose median exceeds their mean: dark objects on a
            bright background), "yes" (negate every image) or "no", in place of the
            model's own normalisation (``model.config.normalization``); default the model's.
        engine: how a checkpoint path runs: "torch", "onnxruntime" (its cached ONNX
            export) or "auto" (onnxruntime on a CPU without native bf16 where it is
            installed; :func:`biounet.exported.load_model`).
        options, **tiling: overlap-tile inference (:class:`biounet.tiling.TileOptions`:
            tile, overlap, memory_mb, precision, progress), as in :func:`biounet.predict`;
            TTA is ``config.tta``.

    Returns a :class:`Segmentation` with the asked-for arrays, the others None: the arrays
    ``biounet predict`` writes for the image. For many images load the checkpoint once
    (``model_from_checkpoint``) and pass the pair.
    """
    options = _tile_options(options, tiling)
    if outputs is not None:
        outputs = tuple(outputs)
        unknown = sorted(set(outputs) - set(OUTPUTS))
        if unknown:
            raise ValueError(f"outputs must be among {OUTPUTS}, got "
                             f"{', '.join(map(repr, unknown))}")  # fmt: skip
    name = str(model) if isinstance(model, str | Path) else "model"
    run = _segmenter(model, config, {}, device, str, invert, engine, options.precision)
    if outputs is None:
        outputs = CLASS_OUTPUTS if run.multiclass else BINARY_OUTPUTS
    _check_outputs(run, outputs, name)
    return run(image, outputs, options)


def _tile_options(options: TileOptions | None, tiling: dict) -> TileOptions:
    """``options`` with the keyword ``tiling`` changes; TypeError for TTA, which is the
    inference configuration's (config.tta, predict --tta)."""
    if "tta" in tiling:
        raise TypeError("segment takes TTA from its InferenceConfig (config.tta), not tta=")
    return tile_options(options, **tiling)


def segment_files(
    checkpoint: str | Path,
    source: str | Path,
    out: str | Path | None = None,
    *,
    slices: str | None = None,
    channels: str | None = None,
    overrides: Mapping[str, object] | None = None,
    write_mask: bool = False,
    write_instances: bool = False,
    write_probabilities: bool = False,
    write_rois: bool = False,
    device: str = "auto",
    label: Callable[[str], str] = str,
    report: Callable[[list[Path]], None] | None = None,
    invert: str | None = None,
    engine: str = "auto",
    shard: str | tuple[int, int] | None = None,
    skip_existing: bool = False,
    options: TileOptions | None = None,
    **tiling,
) -> list[list[Path]]:
    """Segment the images at ``source`` with the model of ``checkpoint`` and write TIFFs.

    A folder gives one output per input file, ``out/NAME.tif`` (default folder
    ``<source name>-prob`` in the working directory); an image or stack gives one stack,
    ``out`` (default ``<source stem>-prob.tif``). Beside each: ``-mask.tif`` with
    ``write_mask``, ``-instances.tif`` with ``write_instances`` and, with ``write_rois``
    too, ``-rois.zip``: the instances' outlines as an ImageJ ROI set (:mod:`biounet.rois`).
    ``slices`` (e.g. "25-29", "@names.txt") picks images, ``channels`` their channels
    (:func:`biounet.io.parse_channels`; default as stored or, where those are not the
    model's input channels, as the model was trained to pick them), which must be the
    model's input channels; ``overrides`` (InferenceConfig fields; None keeps the model's
    setting) change the checkpoint's inference configuration, and overriding a
    contour-only option (CONTOUR_OPTIONS) of another model is an InputError, named in
    messages by ``label(field)``; ``invert``, ``engine``, ``options`` and the keyword
    ``tiling`` changes to them (tile, overlap, memory_mb, precision, progress) are as in
    :func:`segment`.
    Pages past 2 GiB of float32 go to a BigTIFF. Outputs carry their input's pixel size
    (ImageJ resolution and unit), if it has one. Each output and its companions are
    complete or not written at all; ``report`` is called with them once they are.

    A multi-class model writes its uint8 class map in place of the probabilities (default
    names ``<source stem>-classes.tif`` / ``<source name>-classes``) and, with
    ``write_probabilities``, ``-probabilities.tif`` beside it: float32, the C class
    probabilities of each image as C pages (a stack: image i's class c at page i * C + c);
    ``write_mask`` and ``write_instances`` are InputErrors for it, ``write_probabilities``
    for any other model (its ``NAME.tif`` is P(foreground)).

    Zarr (``source`` or ``out`` ending in .zarr): the one image of a Zarr array, an OME-Zarr
    image or a TIFF is read, predicted and written (OME-Zarr, ``NAME.zarr`` and
    ``NAME-mask.zarr`` ...) block by block, never whole (:mod:`biounet.large`); per-pixel
    outputs only (instances, ``diameter``, ``slices`` and ``channels`` are InputErrors),
    and TTA averages the views of each tile.

    ``shard`` ("K/N" or (K, N)) predicts every N-th output from the K-th (0-based) in the
    order above; without it, a process that torchrun started (WORLD_SIZE > 1, RANK set)
    takes shard RANK/WORLD_SIZE. Together the N shards write what one run writes.
    ``skip_existing`` skips the images whose outputs all exist.

    Returns the files written, one list per output (probabilities or class map, then mask,
    instances or class probabilities).
    """
    options = _tile_options(options, tiling)
    plan = _plan_files(
        checkpoint, Path(source), out, slices=slices, channels=channels, overrides=overrides,
        write_mask=write_mask, write_instances=write_instances, write_rois=write_rois,
        write_probabilities=write_probabilities, device=device, label=label, invert=invert,
        engine=engine, precision=options.precision, skip_existing=skip_existing,
        shard=parse_shard(shard) if shard is not None else shard_of_environment(),
    )  # fmt: skip
    try:
        if plan.large:
            return [_write_zarr(plan, path, options, report) for path, _ in plan.groups]
        bar = tqdm(total=sum(len(m) for _, m in plan.groups), desc="predict", unit="image",
                   disable=not options.progress)  # fmt: skip
        with bar:
            return [_write_tiffs(plan, path, members, options, bar, report)
                    for path, members in plan.groups]  # fmt: skip
    finally:
        if plan.large:
            plan.images.close()


@dataclass(frozen=True)
class _FilePlan:
    """What :func:`segment_files` writes: for each of ``groups`` (output path, indices of
    its images), the outputs ``kinds`` in files named by ``suffix``."""

    run: _Segmenter
    images: object  # io.Images; a large.LazyImage for a Zarr run (``large``)
    kinds: tuple[str, ...]  # main output, then mask, instances, class probabilities
    suffix: dict[str, str]  # of each kind's file name, "" for the main output
    groups: list[tuple[Path, list[int]]]  # this shard's, less those skipped
    rois: bool = False  # ImageJ ROI sets of the instances beside them
    large: bool = False  # OME-Zarr outputs written block by block

    def outputs_of(self, path: Path) -> dict[str, Path]:
        """The output files of ``path`` by kind: ``path`` and its companions."""
        if self.large:
            base = path.name[: -len(ZARR_SUFFIX)]
            return {k: path.with_name(base + self.suffix[k] + ZARR_SUFFIX) for k in self.kinds}
        return {k: path.with_name(path.stem + self.suffix[k] + ".tif") if self.suffix[k]
                else path for k in self.kinds}  # fmt: skip


def _plan_files(checkpoint, source: Path, out, *, slices, channels, overrides, write_mask,
                write_instances, write_rois, write_probabilities, device, label, invert,
                engine, precision, skip_existing, shard) -> _FilePlan:  # fmt: skip
    """Read (or open) the images, load the model and settle what to write, with every
    input error of :func:`segment_files` raised before any prediction."""
    large = is_zarr_path(source) or is_zarr_path(out)
    # input errors first: reading is cheaper than loading the model
    if large:
        images = _open_large(source, slices, channels, write_instances or write_rois)
    else:
        images = read_images(source, channels=channels)
    run = _segmenter(checkpoint, None, overrides or {}, select_device(device), label, invert,
                     engine, precision)  # fmt: skip
    if not large and channels is None:
        images = _model_channels(images, run, source)
    takes = run.model.config.in_channels
    if images.channels != takes:
        trained = run.channels and f" (it was trained with --channels {run.channels})"
        raise InputError(f"{source}: {channels_text(images.channels)}; "
                         f"the model {checkpoint} takes {takes}{trained or ''}; pick them "
                         "with --channels")  # fmt: skip
    main = "classes" if run.multiclass else "probabilities"
    asked = (main, *(("mask",) if write_mask else ()),
             *(("instances",) if write_instances else ()))  # fmt: skip
    _check_outputs(run, asked, str(checkpoint))
    if write_probabilities and not run.multiclass:
        raise InputError(f"{checkpoint}: probabilities per class are written for multi-class "
                         "models; this model's NAME.tif is its P(foreground)")  # fmt: skip
    if write_rois and not write_instances:
        raise InputError(f"{checkpoint}: ImageJ ROIs outline instances: add --instances")
    suffix = {main: "", "mask": "-mask", "instances": "-instances",
              **({"probabilities": "-probabilities"} if run.multiclass else {})}  # fmt: skip
    kinds = (*asked, *(("probabilities",) if write_probabilities else ()))
    plan = _FilePlan(run, images, kinds, suffix, [], write_rois, large)
    groups = _groups(plan, source, out, slices, "classes" if run.multiclass else "prob")
    return replace(plan, groups=shard_groups(groups, shard, skip_existing, plan.outputs_of))


def _model_channels(images, run: _Segmenter, source: Path):
    """``images`` read again with the channels the model was trained to pick (its own
    --channels) where they are not the model's input channels as stored and can be."""
    if images.channels == run.model.config.in_channels or not run.channels:
        return images
    try:
        images = read_images(source, channels=run.channels)
        log.info("%s: --channels %s, as the model was trained", source, run.channels)
    except InputError:  # the images lack them: the mismatch check says so
        pass
    return images


def _groups(plan: _FilePlan, source: Path, out, slices, default: str) -> list:
    """(output path, indices of its images) of every output, before sharding: one per file
    of a folder, one for a stack, one for a Zarr run's image."""
    if plan.large:
        path = Path(out) if out else Path(f"{_stem(source)}-{default}{ZARR_SUFFIX}")
        if not is_zarr_path(path):
            raise InputError(f"{path}: a Zarr input is written as OME-Zarr; give --out "
                             f"NAME{ZARR_SUFFIX}")  # fmt: skip
        if plan.run.config.diameter:
            raise InputError(f"{plan.images.path}: --diameter rescales whole images; a Zarr "
                             "run predicts at the stored scale")  # fmt: skip
        return [(path, [0])]
    images = plan.images
    idx = list(range(len(images)))
    if slices:
        idx = parse_slices(slices, len(images), f"{source}: --slices", images.names)
    if source.is_dir():  # one output file per input file
        folder = Path(out) if out else Path(f"{source.resolve().name}-{default}")
        return [(folder / f"{images.names[i]}.tif", [i]) for i in idx]
    return [(Path(out) if out else Path(f"{source.stem}-{default}.tif"), idx)]


def _segmentations(plan: _FilePlan, members: list[int], options: TileOptions):
    """Yield the :class:`Segmentation` of each of the images ``members``, in order."""
    for i in members:
        yield plan.run(plan.images.arrays[i], plan.kinds, options)


def _write_tiffs(plan: _FilePlan, path: Path, members: list[int], options: TileOptions, bar,
                 report) -> list[Path]:  # fmt: skip
    """Segment the images ``members`` into the TIFF ``path`` and its companions (and the
    ROI set), each complete or not written at all; the files written."""
    run, images, paths = plan.run, plan.images, plan.outputs_of(path)
    classes = run.model.config.out_channels if run.multiclass else 1  # of the probabilities
    pages = classes if "probabilities" in plan.kinds else 1  # per image, at most
    big = sum(images.arrays[i].size for i in members) * 4 * pages > CLASSIC_TIFF_BYTES
    pixel_size = images.pixel_sizes[members[0]] if members else None  # the input's
    rois = []  # ImageJ ROIs of the group's instances
    with ExitStack() as stack:  # every file is complete, or none is written
        # ImageJ hyperstacks of known shape (instances: until one needs uint32)
        shapes = {k: (len(members), classes if k == "probabilities" else 1) for k in paths}
        writers = {k: stack.enter_context(StackWriter(p, big, pixel_size, shapes[k]))
                   for k, p in paths.items()}  # fmt: skip
        for n, result in enumerate(_segmentations(plan, members, options), 1):
            for k, writer in writers.items():
                data = getattr(result, k)  # (H, W), or (C, H, W) class probabilities
                for page in data if data.ndim == 3 else [data]:
                    writer.write(page)
            if plan.rois:
                rois += rois_of(result.instances, n if len(members) > 1 else None)
            bar.update(1)
        if plan.rois:  # inside the stack: should it fail, no TIFF is kept either
            roi_path = path.with_name(path.stem + "-rois.zip")
            write_roi_zip(roi_path, rois)
    written = list(paths.values()) + ([roi_path] if plan.rois else [])
    if report is not None:
        report(written)
    return written


# ---------------------------------------------------------------------------------------
# Images larger than memory


def _stem(source: Path) -> str:
    """``big`` of big.zarr, big.ome.zarr, big.tif."""
    name = source.name.rstrip("/\\")
    for suffix in (".ome.zarr", ZARR_SUFFIX, ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return source.stem


def _open_large(source: Path, slices, channels, instances: bool):
    """The :class:`biounet.large.LazyImage` at ``source``, or InputError for what a Zarr run
    does not do."""
    if instances:
        raise InputError(f"{source}: instances need the whole image in memory; a Zarr run "
                         "(a .zarr input or --out) writes probabilities and masks "
                         "(--threshold)")  # fmt: skip
    if slices or channels:
        flag = "--slices" if slices else "--channels"
        raise InputError(f"{source}: {flag} picks from images read whole; a Zarr run "
                         "predicts the one image as stored")  # fmt: skip
    if source.is_dir() and not is_zarr_path(source):
        raise InputError(f"{source}: a folder; a Zarr run predicts one .zarr or TIFF image")
    return open_lazy(source)


def _write_zarr(plan: _FilePlan, path: Path, options: TileOptions, report) -> list[Path]:
    """Predict the LazyImage of ``plan`` block by block into OME-Zarr ``path`` and its
    companions; the stores written."""
    run, image, paths = plan.run, plan.images, plan.outputs_of(path)
    H, W = image.shape
    classes = run.model.config.out_channels if run.multiclass else None
    log.info("%s: %d x %d, read and written block by block", image.path, H, W)
    with ExitStack() as stack:  # every store is complete, or none is written
        writers = {
            k: stack.enter_context(OmeZarrWriter(
                p, (H, W), np.float32 if k == "probabilities" else np.uint8,
                classes if k == "probabilities" else None, image.pixel_size))
            for k, p in paths.items()
        }  # fmt: skip

        def write(y: int, x: int, probs: np.ndarray) -> None:  # (K, h, w)
            made = run.pixel_outputs(probs[0] if probs.shape[0] == 1 else probs, plan.kinds)
            for k, writer in writers.items():
                writer.write(y, x, made[k])

        options = replace(options, tta=run.config.tta)
        large_probabilities(run.model, image, write, options, normalization=run.normalization)
    written = list(paths.values())
    if report is not None:
        report(written)
    return written
