"""Shared fixtures and helpers: small real ISBI 2012 and DSB 2018 crops; the command run
in process and its one-line refusals (``run``, ``one_line_error``, ``refusal``); the tiny
test network (``tiny_config``, ``tiny_unet``, ``tiny_checkpoint``). Test modules import the
helpers with ``from conftest import ...``."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import tifffile

DATA = Path(__file__).resolve().parents[1] / "data" / "isbi2012"


@functools.cache
def _read_isbi():
    return tifffile.imread(DATA / "train-volume.tif"), tifffile.imread(DATA / "train-labels.tif")


@pytest.fixture
def isbi():
    """(images, labels): the 30 ISBI 2012 training slices, (30, 512, 512) uint8 each, read
    once per test process."""
    return _read_isbi()


@pytest.fixture
def isbi_crops(isbi, tmp_path):
    """Paths of a 6-slice 96 x 96 crop of the ISBI stacks written as TIFF stacks."""
    images, labels = isbi
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    tifffile.imwrite(img, images[:6, 100:196, 200:296])
    tifffile.imwrite(lab, labels[:6, 100:196, 200:296])
    return img, lab


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


DSB = Path(__file__).resolve().parents[1] / "data" / "dsb2018-fluo"


@pytest.fixture
def dsb_crops(tmp_path):
    """(images folder, labels folder): crops of 5 DSB 2018 images with touching nuclei, of
    two sizes (96 x 96 and 80 x 112), PNG images and uint16 instance-label TIFFs."""
    from PIL import Image

    ids = ["2bf594e9d06f78b4", "0ea221716cf13710", "feffce59a1a3eb0a", "b560dba92fbf2af7",
           "88d5a03f8ecd459f"]  # fmt: skip
    img_dir, lab_dir = tmp_path / "dsb-images", tmp_path / "dsb-labels"
    img_dir.mkdir()
    lab_dir.mkdir()
    for k, i in enumerate(ids):
        img = np.asarray(Image.open(DSB / "images" / f"{i}.png"))
        lab = tifffile.imread(DSB / "labels" / f"{i}.tif")
        h, w = (96, 96) if k % 2 == 0 else (80, 112)
        Image.fromarray(img[:h, :w]).save(img_dir / f"{i}.png")
        tifffile.imwrite(lab_dir / f"{i}.tif", lab[:h, :w])
    return img_dir, lab_dir


@pytest.fixture(autouse=True)
def _torch_engine(monkeypatch):
    """Checkpoints run through PyTorch in every test, whatever the CPU: predict's "auto"
    engine would take onnxruntime on a CPU without native bf16, and outputs compared
    exactly against PyTorch would then differ in the last bits. The engine's own test
    undoes this."""
    import biounet.exported

    monkeypatch.setattr(biounet.exported, "_onnxruntime_available", lambda: False)


def _whole_image_probabilities(model, image: np.ndarray, precision: str) -> np.ndarray:
    """One pass of ``model`` over the whole mirror-padded (H, W) or (C, H, W) normalised
    image -> (K, H, W) float32; memory grows with the image."""
    import torch

    from biounet.mirror import mirror_pad
    from biounet.tiling import padding_for, unet_predictor

    cfg = model.config
    image = image[None] if image.ndim == 2 else image
    H, W = image.shape[-2:]
    (top, bottom), (left, right) = (padding_for(s, cfg.depth, cfg.padding) for s in (H, W))
    padded = mirror_pad(image, top, bottom, left, right)
    probs = unet_predictor(model, precision)(torch.from_numpy(padded[None]))[0]
    oy, ox = (0, 0) if cfg.padding == "valid" else (top, left)
    return probs[:, oy : oy + H, ox : ox + W].numpy()


@pytest.fixture
def whole_image_probabilities():
    """``(model, image, precision) -> (K, H, W)``: one pass over the whole padded image,
    the reference that tiled prediction is tested against."""
    return _whole_image_probabilities


# ---------------------------------------------------------------------------------------
# The command in process, and its one-line refusals


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``biounet argv`` run in this process -> (exit code, stdout, stderr)."""
    from biounet.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Checks a refusal: exit code 2 and a stderr of one line, ``biounet: error: ...``,
    holding each of ``needles``; returns that line."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("biounet: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def refusal(argv: list[str], capsys, *needles: str) -> str:
    """``biounet argv`` run in this process and checked by :func:`one_line_error`: its
    one error line."""
    code, _, err = run(argv, capsys)
    return one_line_error(code, err, *needles)


# ---------------------------------------------------------------------------------------
# Tiny networks


def tiny_config(padding: str = "same", **fields):
    """The tests' tiny network: depth 2, 4 feature channels at the top level (4, 8, 16),
    no dropout, ``padding``; ``fields`` set any other ModelConfig field or replace these."""
    from biounet.model import ModelConfig

    return ModelConfig(**{"depth": 2, "base_channels": 4, "padding": padding, "dropout": 0.0,
                          **fields})  # fmt: skip


def tiny_unet(padding: str = "same", *, seed: int = 0, **fields):
    """A :func:`tiny_config` UNet in eval mode, its weights drawn after
    ``torch.manual_seed(seed)``."""
    import torch

    from biounet.model import UNet

    torch.manual_seed(seed)
    return UNet(tiny_config(padding, **fields)).eval()


def tiny_checkpoint(path: Path, model, train=None, inference=None, *, description="test"):
    """``model`` saved at ``path`` as a biounet checkpoint of a preset named "tiny" with
    the ``train`` and ``inference`` configurations (default: the defaults); returns
    ``path``."""
    from biounet.checkpoint import save_checkpoint
    from biounet.config import InferenceConfig, Preset, TrainConfig

    preset = Preset("tiny", description, model.config, train or TrainConfig(),
                    inference or InferenceConfig())  # fmt: skip
    return save_checkpoint(path, {"preset": preset.to_dict(), "model": model.state_dict()})
