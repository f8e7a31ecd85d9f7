"""bioimage.io model packages (format 0.5) of biounet checkpoints, for the model zoo and the
tools that run its packages without biounet: deepImageJ (Fiji), ilastik, napari, QuPath.

A package holds the network as TorchScript and ONNX weights, a test input (a crop of the
model's own training data, or of ``sample``) with the output it must give, the same pair
as TIFF samples, a cover image, documentation, and its description (rdf.yaml) written by
``bioimageio.spec``:

- input ``raw``: (batch, channel, y, x) float32. Pre-processing: zero mean and unit
  variance per image and channel over y and x (the spec's ``zero_mean_unit_variance``,
  eps 1e-6), then, for a model trained with ``--invert yes``, a gain of -1. A model
  trained with ``--invert auto`` negates only images whose median exceeds their mean; the
  spec cannot say that, so the package never negates and its documentation says to invert
  dark-object images first.
- output ``probabilities``: (batch, channel, y, x) float32 after the spec's softmax over
  channels (sigmoid for a 1-output network): P(background), P(cell) for a mask model;
  P(background), P(interior), P(boundary) for a contour model; P(class c) for C classes.
- sizes: same padding takes any multiple of 2**depth from 5 x 2**depth up and gives the
  same size, of which a halo of 2 x 2**depth pixels per side is to be cut when tiling;
  valid padding takes 2**depth k + 8 x 2**depth - 4 and gives 2 x border pixels less.

Instances (biounet's seeded watershed) and test-time averaging are biounet's own: the
package gives the probabilities they start from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import Preset
from .errors import InputError
from .exported import ONNX_OPSET, check_checkpoint_file, export_onnx, export_torchscript
from .io import find_data, named, read_images, resolve_data_path
from .mirror import mirror_pad
from .model import border, min_input_size

UNET_DOI = "10.1007/978-3-319-24574-4_28"
UNET_CITE = ("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical "
             "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.")  # fmt: skip
DATASETS = {  # the bundled training data: (citation, DOI)
    "isbi2012": ("Arganda-Carreras I, Turaga SC, Berger DR, et al. Crowdsourcing the creation "
                 "of image segmentation algorithms for connectomics. Front Neuroanat 2015;9:142.",
                 "10.3389/fnana.2015.00142"),
    "dsb2018-fluo": ("Caicedo JC, Goodman A, Karhohs KW, et al. Nucleus segmentation across "
                     "imaging experiments: the 2018 Data Science Bowl. Nat Methods "
                     "2019;16:1247-1253.", "10.1038/s41592-019-0612-7"),
}  # fmt: skip
EPS = 1e-6  # the spec's zero_mean_unit_variance default


def halo(depth: int) -> int:
    """Pixels per side of a same-padding network's output that tiling should discard."""
    return 2 * 2**depth


def _training_images(preset: Preset) -> Path | None:
    """The model's training images where they are at hand (the bundled data's path)."""
    if preset.train.images:
        try:
            path = resolve_data_path(preset.train.images.split(",")[0].strip())  # the first
        except InputError:
            return None
        return path if path.exists() else None
    try:
        return find_data("isbi2012") / "train-volume.tif"  # the default training data
    except (InputError, FileNotFoundError):
        return None


def _dataset_of(preset: Preset) -> str | None:
    images = preset.train.images or "isbi2012"
    return next((key for key in DATASETS if key in str(images)), None)


def sample_input(image: np.ndarray, edge: int) -> np.ndarray:
    """(1, C, edge, edge) float32: the centre of ``image`` cropped, or mirror-padded, to
    ``edge``."""
    x = image[None] if image.ndim == 2 else image
    H, W = x.shape[-2:]
    top, left = max(0, (H - edge) // 2), max(0, (W - edge) // 2)
    x = x[..., top : top + edge, left : left + edge]
    h, w = x.shape[-2:]
    x = mirror_pad(x, (edge - h) // 2, edge - h - (edge - h) // 2,
                   (edge - w) // 2, edge - w - (edge - w) // 2)  # fmt: skip
    return x[None].astype(np.float32)


def preprocess(x: np.ndarray, normalization: str) -> np.ndarray:
    """The package's pre-processing, as the spec defines it, of a (B, C, Y, X) tensor."""
    mean = x.mean(axis=(-2, -1), keepdims=True, dtype=np.float64)
    std = x.std(axis=(-2, -1), keepdims=True, dtype=np.float64)
    out = ((x - mean) / (std + EPS)).astype(np.float32)
    return -out if normalization == "zscore-invert" else out


def expected_output(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The package's output for the raw input ``x``: the network on the pre-processed
    tensor, in fp32, then softmax over channels (sigmoid for 1 output)."""
    with torch.no_grad():
        logits = model.float().eval()(torch.from_numpy(preprocess(x, model.config.normalization)))
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
    return probs.numpy()


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the input (its first channel, 1-99 % stretched) beside P(foreground)."""
    from PIL import Image

    image = x[0, 0]
    lo, hi = np.percentile(image, (1, 99))
    left = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    right = y[0, 1:].sum(axis=0) if y.shape[1] > 1 else y[0, 0]  # P(not background)
    h = min(left.shape[0], right.shape[0])
    left = left[(left.shape[0] - h) // 2 :][:h, (left.shape[1] - h) // 2 :][:, :h]
    panel = np.concatenate([left, right[:h, :h]], axis=1)
    Image.fromarray((panel * 255).astype(np.uint8)).save(path)


def _documentation(name: str, preset: Preset, edge: int, score: str) -> str:
    m = preset.model
    classes = {"contour": "background, interior, boundary", "binary": "background, cell"}
    outputs = classes.get(preset.train.target, ", ".join(f"class {c}" for c in
                                                         range(m.out_channels)))  # fmt: skip
    invert = {
        "zscore-bright": "biounet negates images whose median exceeds their mean (dark objects "
        "on a bright background); this package does not: invert such images before running "
        "it.",
        "zscore-invert": "the image is negated after normalisation (the model was trained on "
        "dark objects).",
        "zscore": "no inversion.",
    }[m.normalization]
    sizes = (f"any multiple of {2**m.depth} from {5 * 2**m.depth} pixels; the output has the "
             f"input's size, of which {halo(m.depth)} pixels per side should be discarded "
             "when tiling" if m.padding == "same" else
             f"{2**m.depth}k + {8 * 2**m.depth - 4} pixels (from {min_input_size(m.depth)}); "
             f"the output is {2 * border(m.depth)} pixels smaller")  # fmt: skip
    return f"""# {name}

A U-Net (Ronneberger, Fischer and Brox, MICCAI 2015) trained with biounet: {preset.description}

## Input and output

- Input `raw`: {m.in_channels} channel(s), float32. Pre-processing: zero mean and unit
  variance per image and channel; {invert}
- Tile sizes: {sizes}.
- Output `probabilities`: {m.out_channels} channel(s) after softmax ({outputs}).

biounet itself adds 8-view test-time averaging and turns the probabilities into masks and
separated objects (`biounet predict MODEL IMAGES --instances`).

## Opening it

- Fiji: deepImageJ, *Install model* from this zip, then *Run* on an open image.
- napari: the bioimage.io plugin, or biounet's own (`pip install biounet[napari]`).
- ilastik: the *Neural Network Classification* workflow, loading this zip.

# Validation

{score} The test tensors here are a {edge} x {edge} crop of the training data with the
output this package must give for it (weights in fp32).
"""


def export_bioimageio(
    source: str | Path,
    dest: str | Path,
    *,
    authors: list[str] | None = None,
    license: str = "MIT",
    cite: list[str] | None = None,
    sample: str | Path | None = None,
    **inference,
) -> Path:
    """Write the checkpoint ``source`` as a bioimage.io model package (a .zip) at ``dest``,
    checked by ``bioimageio.spec`` as it is saved; atomic. ``authors`` (names; default
    "biounet"), ``license`` (an SPDX id), ``cite`` (extra citations, "TEXT" or "TEXT|DOI";
    the U-Net paper and the bundled training data are always cited) and ``sample`` (an
    image for the test tensors; default the model's training data) fill what the
    checkpoint does not hold."""
    check_checkpoint_file(source)
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5 as bio
    except ImportError:
        raise InputError(f"{dest}: bioimage.io packages need bioimageio.spec: pip install "
                         "'biounet[bioimageio]'") from None  # fmt: skip
    ckpt = load_checkpoint(source)
    model, preset = model_from_checkpoint(ckpt, "cpu")
    given = {k: v for k, v in inference.items() if v is not None}
    if given:
        preset = preset.with_inference(**given)
    m = model.config
    path = Path(sample) if sample else _training_images(preset)
    if path is None:
        raise InputError(f"{source}: its training images are not at hand; give --sample IMAGE "
                         "for the package's test tensors")  # fmt: skip
    images = read_images(path, channels=preset.train.channels)
    if images.channels != m.in_channels:
        raise InputError(f"{path}: {images.channels} channel(s); the model takes "
                         f"{m.in_channels}")  # fmt: skip
    edge = preset.train.tile
    x = sample_input(images.arrays[0], edge)
    y = expected_output(model, x)
    name = f"biounet {Path(source).stem}"
    log = ckpt.get("log") or {}
    score = (f"Training record: epoch {ckpt.get('epoch')}, "
             + ", ".join(f"{k} {v:.4g}" for k, v in log.items()
                         if isinstance(v, float) and k.startswith(("val_", "v_")))
             + ".")  # fmt: skip
    citations = [bio.CiteEntry(text=UNET_CITE, doi=bio.Doi(UNET_DOI))]
    dataset = _dataset_of(preset)
    if dataset:
        text, doi = DATASETS[dataset]
        citations.append(bio.CiteEntry(text=text, doi=bio.Doi(doi)))
    for entry in cite or []:
        text, _, where = (part.strip() for part in entry.partition("|"))
        if not text or not where:
            raise InputError(f"--cite {entry!r}: expected 'TEXT|DOI' or 'TEXT|URL'")
        link = {"url": bio.HttpUrl(where)} if where.startswith("http") else {"doi": bio.Doi(where)}
        citations.append(bio.CiteEntry(text=text, **link))
    step = 2**m.depth
    if m.padding == "same":
        size = bio.ParameterizedSize(min=5 * step, step=step)
    else:
        size = bio.ParameterizedSize(min=min_input_size(m.depth, "valid"), step=step)
    space_in = [bio.SpaceInputAxis(id=bio.AxisId(a), size=size) for a in ("y", "x")]
    raw = bio.TensorId("raw")
    if m.padding == "same":
        space_out = [bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), halo=halo(m.depth),
                                                 size=bio.SizeReference(tensor_id=raw,
                                                                        axis_id=bio.AxisId(a)))
                     for a in ("y", "x")]  # fmt: skip
    else:
        space_out = [bio.SpaceOutputAxis(id=bio.AxisId(a), size=bio.SizeReference(
            tensor_id=raw, axis_id=bio.AxisId(a), offset=-2 * border(m.depth)))
            for a in ("y", "x")]  # fmt: skip
    pre = [bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(
        axes=[bio.AxisId("y"), bio.AxisId("x")], eps=EPS))]  # fmt: skip
    if m.normalization == "zscore-invert":
        pre.append(bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=-1.0)))
    post = ([bio.SigmoidDescr()] if m.out_channels == 1 else
            [bio.SoftmaxDescr(kwargs=bio.SoftmaxKwargs(axis=bio.AxisId("channel")))])  # fmt: skip
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "test-input.npy", x)
        np.save(tmp / "test-output.npy", y)
        import tifffile

        for fname, arr in (("sample-input.tif", x[0]), ("sample-output.tif", y[0])):
            # (C, H, W) channels, never RGB (a 3-class output is not a colour image)
            tifffile.imwrite(tmp / fname, arr, photometric="minisblack",
                             metadata={"axes": "CYX"})  # fmt: skip
        _cover(x, y, tmp / "cover.png")
        (tmp / "README.md").write_text(_documentation(name, preset, edge, score))
        export_torchscript(model, preset, tmp / "weights.pt")
        export_onnx(model, preset, tmp / "weights.onnx")
        channel_names = [bio.Identifier(f"channel{c}") for c in range(m.in_channels)]
        descr = bio.ModelDescr(
            name=name,
            description=preset.description[:1000],
            authors=[bio.Author(name=a) for a in (authors or ["biounet"])],
            cite=citations,
            license=bio.LicenseId(license),
            documentation=bio.FileDescr(source=tmp / "README.md"),
            covers=[bio.FileDescr(source=tmp / "cover.png")],
            tags=["u-net", "segmentation", "biounet", "2d",
                  *(["instance-segmentation", "nuclei"] if preset.train.target == "contour"
                    else ["semantic-segmentation"])],  # fmt: skip
            inputs=[bio.InputTensorDescr(
                id=raw, axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=channel_names),
                              *space_in],
                test_tensor=bio.FileDescr(source=tmp / "test-input.npy"),
                sample_tensor=bio.FileDescr(source=tmp / "sample-input.tif"),
                data=bio.IntervalOrRatioDataDescr(type="float32"), preprocessing=pre)],
            outputs=[bio.OutputTensorDescr(
                id=bio.TensorId("probabilities"),
                axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[
                    bio.Identifier(f"p{c}") for c in range(m.out_channels)]), *space_out],
                test_tensor=bio.FileDescr(source=tmp / "test-output.npy"),
                sample_tensor=bio.FileDescr(source=tmp / "sample-output.tif"),
                data=bio.IntervalOrRatioDataDescr(type="float32"), postprocessing=post)],
            weights=bio.WeightsDescr(
                torchscript=bio.TorchscriptWeightsDescr(
                    source=tmp / "weights.pt", pytorch_version=bio.Version(torch.__version__)),
                onnx=bio.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=ONNX_OPSET,
                                          parent="torchscript")),  # fmt: skip
        )  # fmt: skip
        part = dest.with_name(f".{dest.name}.part.zip")
        try:
            save_bioimageio_package(descr, output_path=part)
            os.replace(part, dest)
        except OSError as e:  # e.g. a full disk: say which package
            raise (named(e, dest) if e.filename is None and e.errno else e) from None
        finally:
            part.unlink(missing_ok=True)
    return dest

