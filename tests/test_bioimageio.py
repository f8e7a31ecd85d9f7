"""bioimage.io packages: bioimageio.core's own model test passes offline for valid and same
padding and for the shipped nuclei model; the test tensors reproduce through onnxruntime;
the description says what consumers need (halo, sizes, pre- and post-processing, citations);
bad requests get one line and write nothing."""

import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
from bioimageio.core import test_model as run_model_test
from conftest import refusal, tiny_checkpoint, tiny_unet
from ruyaml import YAML

from biounet import TrainConfig
from biounet.bioimageio import UNET_DOI, export_bioimageio, preprocess
from biounet.cli import main
from biounet.model import output_size


def _checkpoint(folder, padding: str, normalization: str = "zscore"):
    model = tiny_unet(padding, out_channels=3, normalization=normalization)
    train = TrainConfig(target="contour", tile=64 if padding == "same" else 60,
                        images="data/dsb2018-fluo/images")  # fmt: skip
    return tiny_checkpoint(folder / f"{padding}.pt", model, train,
                           description="a tiny test network")  # fmt: skip


def _passes(package) -> None:
    summary = run_model_test(str(package))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as z:
        return YAML(typ="safe").load(z.read("rdf.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_a_package_passes_the_model_test_and_reproduces_through_onnxruntime(tmp_path, padding):
    src = _checkpoint(tmp_path, padding, "zscore-invert" if padding == "valid" else "zscore")
    meta = {"authors": ["A. Tester"], "cite": ["A paper|10.1000/xyz"]}
    package = export_bioimageio(src, tmp_path / "p.zip", **meta)
    _passes(package)
    rdf = _rdf(package)
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    y_in, y_out = inp["axes"][2], out["axes"][2]
    if padding == "same":
        assert y_in["size"] == {"min": 20, "step": 4} and y_out["halo"] == 8
    else:
        lost = 60 - output_size(60, depth=2, padding="valid")  # what a real pass loses
        assert y_in["size"] == {"min": 44, "step": 4} and y_out["size"]["offset"] == -lost
    steps = [p["id"] for p in inp["preprocessing"] if p["id"] != "ensure_dtype"]
    assert steps[0] == "zero_mean_unit_variance"
    assert ("scale_linear" in steps) == (padding == "valid")  # --invert yes: a gain of -1
    assert [p["id"] for p in out["postprocessing"] if p["id"] != "ensure_dtype"] == ["softmax"]
    dois = [c.get("doi") for c in rdf["cite"]]
    assert dois == [UNET_DOI, "10.1038/s41592-019-0612-7", "10.1000/xyz"]
    assert [a["name"] for a in rdf["authors"]] == ["A. Tester"]
    with zipfile.ZipFile(package) as z:  # the test tensors, through onnxruntime
        z.extractall(tmp_path / "x")
    x = np.load(tmp_path / "x" / inp["test_tensor"]["source"])
    y = np.load(tmp_path / "x" / out["test_tensor"]["source"])
    onnx_file = tmp_path / "x" / rdf["weights"]["onnx"]["source"]
    logits = ort.InferenceSession(str(onnx_file)).run(None, {"input": preprocess(
        x, "zscore-invert" if padding == "valid" else "zscore")})[0]  # fmt: skip
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), y,
                               atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_the_shipped_nuclei_model_packages_and_passes(tmp_path, capsys):
    code = main(["export", "models/dsb2018-nuclei.pt", str(tmp_path / "n.zip"), "--format",
                 "bioimageio"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    _passes(tmp_path / "n.zip")
    rdf = _rdf(tmp_path / "n.zip")
    assert set(rdf["weights"]) == {"torchscript", "onnx"}
    assert "invert such images before running it" in zipfile.ZipFile(
        tmp_path / "n.zip").read("README.md").decode()  # fmt: skip


def test_bad_package_requests_get_one_line_and_write_nothing(tmp_path, capsys):
    src = _checkpoint(tmp_path, "same")

    out = str(tmp_path / "p.zip")
    refusal(["export", str(src), out, "--format", "bioimageio", "--cite", "no link"], capsys,
            "--cite 'no link': expected 'TEXT|DOI' or 'TEXT|URL'")  # fmt: skip
    refusal(["export", str(src), out, "--format", "onnx", "--author", "X"], capsys,
            "describe bioimageio packages: add --format bioimageio")  # fmt: skip
    refusal(["export", str(src), out, "--format", "bioimageio", "--sample",
             str(tmp_path / "missing.tif")], capsys, "missing.tif")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.pt"]
