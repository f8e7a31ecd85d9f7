"""Checkpoints: one plain dict, saved atomically, loaded with ``weights_only=True``.

Keys: ``format_version``, ``preset`` (the full config as a dict: model, train and inference;
``Preset.from_dict`` reads files written before inference had a part of its own), ``model``
(state_dict), ``optimizer``, ``epoch`` (completed epochs), ``step``, ``best`` (best
selection score so far: a validation metric or the training loss, see ``select_by``),
``history`` (one dict per epoch, as in log.csv), ``rng`` (torch / generator / numpy
states) and, when training averages the weights, ``ema`` (the AveragedModel's state,
which validation and prediction use). Metadata never goes inside the state_dict.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import torch

from .config import Preset
from .errors import InputError
from .io import atomic_path
from .model import UNet

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file + rename). It is serialised
    in memory first, so that a full disk is an OSError naming ``path`` (torch.save
    writing to the disk itself fails with a RuntimeError) and the file it replaces stays
    whole."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **checkpoint}, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without executing pickled code; InputError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for damaged or foreign files
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives
            raise InputError(f"{path}: not a readable biounet checkpoint (not a PyTorch "
                             "file)") from None  # fmt: skip
        if "weights only load failed" in str(e).lower():  # torch's hint would be unsafe advice
            why = "it holds Python objects beside tensors, which are never loaded"
            raise InputError(f"{path}: not a readable biounet checkpoint ({why})") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable biounet checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "preset" not in ckpt:
        raise InputError(f"{path}: not a biounet checkpoint (no model and preset entries)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format {ckpt['format_version']} is newer than this biounet "
            f"understands ({FORMAT_VERSION}); upgrade biounet"
        )
    try:  # a stored configuration this biounet rejects: say which file holds it
        Preset.from_dict(ckpt["preset"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise InputError(f"{path}: invalid stored configuration: {e}") from None
    return ckpt


def shipped_model(name: str = "isbi2012.pt") -> Path | None:
    """A trained model shipped with biounet (``models/NAME`` of the repository, or of the
    working directory; default the ISBI 2012 one), or None if it is not there."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "models" / name
        if path.is_file():
            return path
    return None


ABOUT_KEYS = ("trained_on", "command", "hardware", "scores")  # what export --about stores


def check_about(about: dict, where: str) -> dict:
    """``about`` if it is a dict of text under ABOUT_KEYS (``scores``: a dict of names to
    numbers or text); InputError naming ``where`` otherwise."""
    if not isinstance(about, dict) or set(about) - set(ABOUT_KEYS):
        raise InputError(f"{where}: an about record is a JSON object with keys from "
                         f"{', '.join(ABOUT_KEYS)}")  # fmt: skip
    for key, value in about.items():
        ok = isinstance(value, dict) and all(isinstance(v, str | int | float)
                                             for v in value.values()) if key == "scores" \
            else isinstance(value, str)  # fmt: skip
        if not ok:
            kind = "an object of names to numbers or text" if key == "scores" else "text"
            raise InputError(f"{where}: {key!r} must be {kind}")
    return about


def export_model(source: str | Path, dest: str | Path, about: dict | None = None,
                 **inference) -> dict:  # fmt: skip
    """Write the model of checkpoint ``source`` to ``dest`` for shipping: configuration and
    weights only (no optimiser state, RNG states or per-epoch history), plus the training
    record a user needs to trust it (epoch, step, seconds trained, the chosen epoch's log
    row). ``inference`` (InferenceConfig fields, e.g. ``min_peak=0.9``; None values
    ignored) replace the stored inference configuration that ``predict`` and
    :func:`biounet.segment` use by default; a ``source`` that was itself exported keeps its
    training record. ``about`` (:data:`ABOUT_KEYS`: the data it was trained on, the command,
    the hardware, held-out scores) is stored for ``biounet info`` to show; a ``source``
    that has one keeps it unless ``about`` replaces it. Returns the dict written. Loads with
    ``load_checkpoint`` like any checkpoint."""
    ckpt = load_checkpoint(source)
    if any(v is not None for v in inference.values()):  # stored in today's layout
        ckpt["preset"] = Preset.from_dict(ckpt["preset"]).with_inference(**inference).to_dict()
    history = ckpt.get("history") or []
    chosen = next((h for h in history if h.get("epoch") == ckpt.get("epoch")), {})
    shipped = {
        "preset": ckpt["preset"],
        "model": {k: v.detach().clone() for k, v in inference_weights(ckpt).items()},
        "epoch": ckpt.get("epoch"),
        "step": ckpt.get("step"),
        "trained_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
        "log": {k: v for k, v in chosen.items() if v is not None},
    }
    if not history:  # an exported model exported again (new settings): keep its record
        for key in ("trained_seconds", "log"):
            if key in ckpt:
                shipped[key] = ckpt[key]
    about = check_about(about, str(dest)) if about is not None else ckpt.get("about")
    if about:
        shipped["about"] = about
    save_checkpoint(dest, shipped)
    return shipped


def model_record(path: str | Path) -> dict:
    """What a model file says of its own training: ``about`` (export --about), epoch, step,
    seconds trained; {} for files that hold none (ONNX, TorchScript)."""
    if Path(path).suffix != ".pt":
        return {}
    ckpt = load_checkpoint(path)
    record = {k: ckpt[k] for k in ("epoch", "step", "trained_seconds") if ckpt.get(k) is not None}
    if ckpt.get("about"):
        record["about"] = ckpt["about"]
    return record


def about_lines(record: dict, keys: tuple = ABOUT_KEYS) -> list[str]:
    """What :func:`model_record`'s ``about`` says under ``keys``, one line each, in the
    order of :data:`ABOUT_KEYS` (``biounet info`` shows them all, napari's Segment the data
    and the scores)."""
    about = record.get("about", {})
    lines = [f"{key.replace('_', ' ')}: {about[key]}"
             for key in ABOUT_KEYS[:3] if key in about and key in keys]  # fmt: skip
    if "scores" in about and "scores" in keys:
        lines.append("scores: " + ", ".join(f"{k} {v}" for k, v in about["scores"].items()))
    return lines


def model_from_checkpoint(
    checkpoint: dict | str | Path, device: str | torch.device = "cpu"
) -> tuple[UNet, Preset]:
    """Rebuild the network from a checkpoint (no flags needed) and load its weights."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    preset = Preset.from_dict(ckpt["preset"])
    model = UNet(preset.model)
    model.load_state_dict(inference_weights(ckpt))
    return model.to(device).eval(), preset


def inference_weights(ckpt: dict) -> dict:
    """The state_dict to predict with: the moving average of the weights where training
    kept one (``ema``, an AveragedModel state: ``module.`` prefixes, an update counter),
    else ``model``."""
    if "ema" not in ckpt:
        return ckpt["model"]
    prefix = "module."
    return {k[len(prefix) :]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)}
