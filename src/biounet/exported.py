"""Networks exported to ONNX and TorchScript: writing them, and running them through
biounet's own tiling, test-time averaging and post-processing.

Both files carry the model's biounet configuration (the preset: normalisation, channels,
training diameter and inference settings) beside the network: ONNX as the metadata entry
``biounet`` of the model, TorchScript as the extra file ``biounet.json`` of the archive.
The network maps (B, C, H, W) normalised float32 tiles to (B, K, H', W') logits (H' = H for
same padding, H - 2 x border for valid padding); batch, height and width are dynamic, each
edge any valid input size of the network (same padding: a multiple of 2**depth; valid:
2**depth k + 8 x 2**depth - 4, from the smallest that fits). ONNX uses opset
``ONNX_OPSET`` and runs with onnxruntime (its CUDA provider where present and asked for);
TorchScript is a traced module, run by torch. Either runs in fp32.

:func:`load_model` opens any of the three formats (a biounet checkpoint, ``.onnx``, a
TorchScript archive) as a ``(network, Preset)`` pair, the network a module with the
:class:`biounet.UNet` interface that :func:`biounet.tiling.predict` and
:func:`biounet.segment` use.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import export_model, load_checkpoint, model_from_checkpoint
from .config import ENGINES, Preset
from .device import resolve_precision
from .errors import InputError
from .io import atomic_path
from .model import UNet, is_valid_input_size, min_input_size
from .version import __version__

ONNX_OPSET = 18
FORMATS = ("biounet", "onnx", "torchscript", "bioimageio")
METADATA_KEY = "biounet"  # ONNX metadata_props key; TorchScript extra file "biounet.json"
EXTRA_FILE = "biounet.json"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _metadata(preset: Preset) -> str:
    return json.dumps({"format_version": 1, "preset": preset.to_dict()})


def _edge_dim(name: str, depth: int, padding: str):
    """A torch.export dimension that takes every valid input edge of the network."""
    step = 2**depth
    if padding == "same":
        return step * torch.export.Dim(name, min=1, max=2**20 // step)
    offset = 8 * step - 4  # valid edges: step * k + offset
    low = (min_input_size(depth, padding) - offset) // step
    assert all(is_valid_input_size(step * k + offset, depth, padding) for k in (low, low + 1))
    return step * torch.export.Dim(name, min=low, max=2**20 // step) + offset


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines and warnings (shape checks traced as constants: the
    sizes they check are valid by construction) kept off the user's terminal."""
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _example(model: UNet, preset: Preset) -> torch.Tensor:
    """Two tiles of the model's training size (a batch of 2: a batch of 1 would be taken
    for a constant)."""
    cfg = model.config
    edge = preset.train.tile
    if not is_valid_input_size(edge, cfg.depth, cfg.padding):
        edge = min_input_size(cfg.depth, cfg.padding)
    return torch.randn(2, cfg.in_channels, edge, edge, generator=torch.Generator().manual_seed(0))


def export_onnx(model: UNet, preset: Preset, dest: str | Path) -> Path:
    """Write ``model`` as ONNX (opset ONNX_OPSET, dynamic batch, height and width) with its
    configuration in the metadata; atomic."""
    import onnx  # the [onnx] extra

    model = model.float().eval()
    cfg = model.config
    x = _example(model, preset)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096),
               2: _edge_dim("height", cfg.depth, cfg.padding),
               3: _edge_dim("width", cfg.depth, cfg.padding)},)  # fmt: skip
    with torch.no_grad(), _quiet():
        program = torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False)
        onnx_program = torch.onnx.export(program, (x,), dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                         verbose=False)  # fmt: skip
    proto = onnx_program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, _metadata(preset)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        onnx.save_model(proto, str(tmp))
    return dest


def export_torchscript(model: UNet, preset: Preset, dest: str | Path) -> Path:
    """Write ``model`` as a traced TorchScript module with its configuration as the extra
    file biounet.json; atomic."""
    model = model.float().eval()
    x = _example(model, preset)
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(model, x, check_trace=False)
    dest = Path(dest)
    buffer = io.BytesIO()  # saved in memory first: torch.jit.save aborts on a full disk
    torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: _metadata(preset)})
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return dest


class ExportedUNet(nn.Module):
    """An exported network with the :class:`UNet` interface tiling uses: ``config``, a
    device (from its one empty parameter) and ``forward`` (B, C, H, W) -> logits."""

    fixed_precision = "fp32"  # tiling runs it in fp32 whatever it is asked

    def __init__(self, config, run, device: torch.device):
        super().__init__()
        self.config = config
        self._where = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)
        self._run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x.float().contiguous())


def _preset_of(text: str, path: Path) -> Preset:
    try:
        return Preset.from_dict(json.loads(text)["preset"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise InputError(f"{path}: invalid stored biounet configuration: {e}") from None


def file_format(path: str | Path) -> str:
    """"biounet", "torchscript" or "onnx" from the file's content; InputError if none."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return "torchscript"
        return "biounet"  # torch.save's archive; load_checkpoint checks the rest
    with open(path, "rb") as f:
        head = f.read(64)
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":  # ModelProto field 1 (ir_version)
        return "onnx"
    raise InputError(f"{path}: not a biounet model (a biounet checkpoint, ONNX or "
                     "TorchScript file)")  # fmt: skip


def _load_onnx(path: Path, device: torch.device) -> tuple[ExportedUNet, Preset]:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise InputError(f"{path}: ONNX models need onnxruntime: pip install "
                         "'biounet[onnx]'") from None  # fmt: skip
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise InputError(f"{path}: not a readable ONNX model") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise InputError(f"{path}: an ONNX model without biounet's configuration (export it "
                         "with biounet export --format onnx)")  # fmt: skip
    preset = _preset_of(meta[METADATA_KEY], path)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    runtime = ort.InferenceSession(proto.SerializeToString(), providers=providers)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = runtime.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out))

    return ExportedUNet(preset.model, run, torch.device("cpu")), preset


def _load_torchscript(path: Path, device: torch.device) -> tuple[ExportedUNet, Preset]:
    extra = {EXTRA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception:
        raise InputError(f"{path}: not a readable TorchScript model") from None
    if not extra[EXTRA_FILE]:
        raise InputError(f"{path}: a TorchScript model without biounet's configuration "
                         "(export it with biounet export --format torchscript)")  # fmt: skip
    preset = _preset_of(extra[EXTRA_FILE], path)
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        return module(x.to(device))

    return ExportedUNet(preset.model, run, device), preset




def _onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def cached_onnx(checkpoint: Path) -> Path:
    """The ONNX export of a checkpoint, made once and kept in the cache folder
    (``$BIOUNET_CACHE``, else ``$XDG_CACHE_HOME/biounet``, else ``~/.cache/biounet``) under
    the hash of the checkpoint's bytes and this biounet's version."""
    import hashlib
    import os

    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:20]
    root = os.environ.get("BIOUNET_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "biounet"
    path = Path(root) / "onnx" / f"{digest}-{__version__}.onnx"
    if not path.is_file():
        model, preset = model_from_checkpoint(checkpoint, "cpu")
        export_onnx(model, preset, path)
    return path


def preset_of(path: str | Path) -> Preset:
    """The configuration of the model at ``path`` (checkpoint, ONNX or TorchScript), read
    without building a checkpoint's network."""
    if file_format(path) == "biounet":
        return Preset.from_dict(load_checkpoint(path)["preset"])
    return load_model(path)[1]


def check_checkpoint_file(source: str | Path) -> None:
    """InputError unless ``source`` is a biounet checkpoint (what every export reads)."""
    if file_format(source) != "biounet":
        raise InputError(f"{source}: not a biounet checkpoint; export reads those")


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    engine: str = "torch",
    precision: str = "auto",
) -> tuple[nn.Module, Preset]:
    """A model file of any format (:func:`file_format`) as ``(network, Preset)``.

    ``engine`` decides how a biounet checkpoint runs: "torch"; "onnxruntime" (its ONNX
    export, made once and cached: :func:`cached_onnx`); or "auto": onnxruntime on a CPU
    where ``precision`` "auto" means fp32 (no native bf16; there onnxruntime predicts
    about 3x faster than PyTorch in fp32, docs/usage.md) and onnxruntime is installed, else
    torch. ONNX and TorchScript files run as they are."""
    path, device = Path(path), torch.device(device)
    if engine not in ENGINES:
        raise InputError(f"{path}: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    kind = file_format(path)
    if kind == "onnx":
        return _load_onnx(path, device)
    if kind == "torchscript":
        return _load_torchscript(path, device)
    if engine == "auto":
        fp32_cpu = (device.type == "cpu" and precision == "auto"
                    and resolve_precision("auto", device) == "fp32")  # fmt: skip
        engine = "onnxruntime" if fp32_cpu and _onnxruntime_available() else "torch"
    if engine == "onnxruntime":
        load_checkpoint(path)  # its problems named for the checkpoint, not the export
        return _load_onnx(cached_onnx(path), device)
    return model_from_checkpoint(path, device)


def export(source: str | Path, dest: str | Path, fmt: str, **inference) -> Path:
    """Export the biounet checkpoint ``source`` to ``dest`` as ``fmt`` (one of FORMATS but
    "bioimageio", whose packages :func:`biounet.bioimageio.export_bioimageio` writes);
    ``inference`` (InferenceConfig fields, None ignored) replace its stored settings."""
    if fmt not in FORMATS:
        raise InputError(f"{dest}: unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "bioimageio":
        raise ValueError("bioimage.io packages are written by biounet.bioimageio."
                         "export_bioimageio, which builds on this module")  # fmt: skip
    check_checkpoint_file(source)
    if fmt == "biounet":
        export_model(source, dest, **inference)
        return Path(dest)
    ckpt = load_checkpoint(source)
    given = {k: v for k, v in inference.items() if v is not None}
    model, preset = model_from_checkpoint(ckpt, "cpu")
    if given:
        preset = preset.with_inference(**given)
    write = export_onnx if fmt == "onnx" else export_torchscript
    return write(model, preset, dest)
