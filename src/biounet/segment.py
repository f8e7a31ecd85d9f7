"""Segmentation: a model's probabilities -> foreground probability, 0/255 mask, instances.

- :func:`segment`: one (H, W) image array -> a :class:`Segmentation`.
- :func:`segment_files`: an image, a stack or a folder -> TIFF files (what ``biounet
  predict`` writes): ``NAME.tif`` (float32 P(foreground)), ``NAME-mask.tif`` (uint8 0/255)
  and ``NAME-instances.tif`` (uint16, uint32 past 65535).

How the probabilities become masks and instances is an :class:`InferenceConfig`; a
checkpoint carries its own (``preset.inference``), which is used unless one is given. The
instance method follows from it and from the model's training target (``"auto"``: mask ->
connected components, binary -> components grown over the carved borders, contour ->
seeded watershed). A bare :class:`UNet`, with no training configuration beside it, counts
as a contour model if it has 3 outputs and as a mask model otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import model_from_checkpoint
from .config import CONTOUR_OPTIONS, InferenceConfig, Preset
from .dataset import parse_slices
from .device import select_device
from .instances import instances
from .io import InputError, StackWriter, read_images
from .model import UNet
from .tiling import DEFAULT_MEMORY_MB, predict

OUTPUTS = ("probabilities", "mask", "instances")
CLASSIC_TIFF_BYTES = 2**31  # past this, float32 pages go to a BigTIFF (classic: 4 GiB)


@dataclass(frozen=True)
class Segmentation:
    """What :func:`segment` made of one (H, W) image; None where not asked for."""

    probabilities: np.ndarray | None = None  # (H, W) float32 P(foreground), in [0, 1]
    mask: np.ndarray | None = None  # (H, W) uint8: 255 where P(foreground) > threshold
    instances: np.ndarray | None = None  # (H, W) uint16 (uint32 past 65535), 0 = background


@dataclass(frozen=True)
class _Segmenter:
    """A loaded model with its settled configuration and instance method."""

    model: UNet
    config: InferenceConfig
    method: str  # one of config.INSTANCE_METHODS

    def __call__(self, image: np.ndarray, outputs: Iterable[str], **tiling) -> Segmentation:
        probs = predict(self.model, image, tta=self.config.tta, **tiling)  # (H, W) | (C, H, W)
        prob = 1.0 - probs[0] if probs.ndim == 3 else probs  # (H, W) P(foreground)
        made = {}
        if "probabilities" in outputs:
            made["probabilities"] = prob.astype(np.float32)
        if "mask" in outputs:
            made["mask"] = ((prob > self.config.threshold) * 255).astype(np.uint8)
        if "instances" in outputs:
            options = self.config.instance_options(self.method)
            made["instances"] = instances(probs if self.method == "contour" else prob, **options)
        return Segmentation(**made)


def _segmenter(
    model: str | Path | UNet | tuple[UNet, Preset],
    config: InferenceConfig | None,
    overrides: Mapping[str, object],
    device: str | torch.device,
    label: Callable[[str], str],
) -> _Segmenter:
    """Load ``model`` (a checkpoint path, ``model_from_checkpoint``'s pair or a bare UNet),
    settle its configuration (``config``, else the model's own, with ``overrides`` applied;
    None values keep it) and its instance method."""
    name = str(model) if isinstance(model, str | Path) else "model"
    if isinstance(model, str | Path):
        model = model_from_checkpoint(model, device)
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
    if outputs > 2 and target != "contour":
        raise InputError(f"{name}: a {outputs}-class model; predict handles binary and "
                         "contour models only")  # fmt: skip
    return _Segmenter(unet, config, config.instance_method(target, outputs))


def segment(
    model: str | Path | UNet | tuple[UNet, Preset],
    image: np.ndarray,
    config: InferenceConfig | None = None,
    *,
    outputs: Iterable[str] = OUTPUTS,
    tile: int | None = None,
    precision: str = "auto",
    device: str | torch.device = "cpu",
    memory_mb: int = DEFAULT_MEMORY_MB,
    overlap: float = 0.25,
    progress: bool = False,
) -> Segmentation:
    """Segment one image: its foreground probability, 0/255 mask and instance labels.

    Args:
        model: a checkpoint path, the ``(UNet, Preset)`` pair of ``model_from_checkpoint``
            (its training target picks the instance method) or a bare :class:`UNet`
            (3 outputs: a contour model, else a mask model).
        image: (H, W) array of any dtype and size.
        config: threshold, TTA, instance method and options; default the checkpoint's own
            (``preset.inference``), or ``InferenceConfig()`` for a bare UNet.
        outputs: which of "probabilities", "mask", "instances" to make.
        tile, precision, memory_mb, overlap, progress: overlap-tile inference, as in
            :func:`biounet.predict`.
        device: where to run a checkpoint path's model (a loaded model runs where it is).

    Returns a :class:`Segmentation` with the asked-for arrays, the others None: the arrays
    ``biounet predict`` writes for the image. For many images load the checkpoint once
    (``model_from_checkpoint``) and pass the pair.
    """
    outputs = tuple(outputs)
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"outputs must be among {OUTPUTS}, got {', '.join(map(repr, unknown))}")
    run = _segmenter(model, config, {}, device, str)
    return run(image, outputs, tile=tile, precision=precision, memory_mb=memory_mb,
               overlap=overlap, progress=progress)  # fmt: skip


def segment_files(
    checkpoint: str | Path,
    source: str | Path,
    out: str | Path | None = None,
    *,
    slices: str | None = None,
    overrides: Mapping[str, object] | None = None,
    write_mask: bool = False,
    write_instances: bool = False,
    tile: int | None = None,
    precision: str = "auto",
    device: str = "auto",
    memory_mb: int = DEFAULT_MEMORY_MB,
    overlap: float = 0.25,
    progress: bool = False,
    label: Callable[[str], str] = str,
    report: Callable[[list[Path]], None] | None = None,
) -> list[list[Path]]:
    """Segment the images at ``source`` with the model of ``checkpoint`` and write TIFFs.

    A folder gives one output per input file, ``out/NAME.tif`` (default folder
    ``<source name>-prob`` in the working directory); an image or stack gives one stack,
    ``out`` (default ``<source stem>-prob.tif``). Beside each: ``-mask.tif`` with
    ``write_mask``, ``-instances.tif`` with ``write_instances``. ``slices`` (e.g. "25-29",
    "@names.txt") picks images; ``overrides`` (InferenceConfig fields; None keeps the
    model's setting) change the checkpoint's inference configuration, and overriding a
    contour-only option (CONTOUR_OPTIONS) of another model is an InputError, named in
    messages by ``label(field)``. Pages past 2 GiB of float32 go to a BigTIFF. Outputs
    carry their input's pixel size (ImageJ resolution and unit), if it has one. Each output
    and its companions are complete or not written at all; ``report`` is called with them
    once they are.

    Returns the files written, one list per output (probabilities, then mask, instances).
    """
    source = Path(source)
    images = read_images(source)  # input errors first: cheaper than loading the model
    run = _segmenter(checkpoint, None, overrides or {}, select_device(device), label)
    idx = list(range(len(images)))
    if slices:
        idx = parse_slices(slices, len(images), f"{source}: --slices", images.names)
    if source.is_dir():  # one output file per input file
        folder = Path(out) if out else Path(f"{source.resolve().name}-prob")
        groups = [(folder / f"{images.names[i]}.tif", [i]) for i in idx]
    else:  # one output stack for the input stack
        groups = [(Path(out) if out else Path(f"{source.stem}-prob.tif"), idx)]
    kinds = ("probabilities", *(("mask",) if write_mask else ()),
             *(("instances",) if write_instances else ()))  # fmt: skip
    suffix = {"probabilities": "", "mask": "-mask", "instances": "-instances"}
    written = []
    bar = tqdm(total=len(idx), desc="predict", unit="image", disable=not progress)
    for path, members in groups:
        paths = {k: path.with_name(path.stem + suffix[k] + ".tif") if suffix[k] else path
                 for k in kinds}  # fmt: skip
        big = sum(images.arrays[i].size for i in members) * 4 > CLASSIC_TIFF_BYTES
        pixel_size = images.pixel_sizes[members[0]] if members else None  # the input's
        with ExitStack() as stack:  # every file is complete, or none is written
            writers = {k: stack.enter_context(StackWriter(p, big, pixel_size))
                       for k, p in paths.items()}  # fmt: skip
            for i in members:
                result = run(images.arrays[i], kinds, tile=tile, precision=precision,
                             memory_mb=memory_mb, overlap=overlap, progress=progress)  # fmt: skip
                for k, writer in writers.items():
                    writer.write(getattr(result, k))
                bar.update(1)
        written.append(list(paths.values()))
        if report is not None:
            report(written[-1])
    bar.close()
    return written
