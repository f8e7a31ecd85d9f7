"""End-to-end tests of the ``biounet`` command on small ISBI crops."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch
from conftest import one_line_error, refusal, run, tiny_checkpoint, tiny_unet
from PIL import Image
from skimage.measure import label as measure_label
from skimage.measure import regionprops

from biounet.checkpoint import load_checkpoint
from biounet.cli import main

TAIL = ["--steps-per-epoch", "2", "--tile", "32", "--batch-size", "2", "--no-progress",
        "--precision", "fp32"]  # fmt: skip
SMALL = ["--val-slices", "4-5", "--epochs", "2", *TAIL]


def test_info_json_has_the_paper_numbers(capsys):
    code, out, _ = run(["info", "--preset", "paper", "--json"], capsys)
    info = json.loads(out)
    assert code == 0
    assert (info["preset"], info["parameters"], info["input_size"], info["output_size"]) == (
        "paper",
        31_030_658,
        572,
        388,
    )
    code, out, _ = run(["info", "--preset", "blog"], capsys)
    assert "512 -> 512 (same padding" in out
    flat = " ".join(out.split())  # the listing wraps at 100 columns
    assert "sample_by image," in flat and "time_limit 0.0," in flat  # no time limit
    code, out, _ = run(["info", "--preset", "nuclei"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "sample_by area," in flat and "time_limit 15.0," in flat
    assert ("inference threshold 0.6, tta True, method auto, min_size 25, min_peak 0.9, "
            "min_fraction 0.3, seed_threshold 0.4, seed_dynamics 0.25, split_solidity 0.0, "
            "split_depth 4.0, diameter 0.0") in flat  # fmt: skip
    assert "best.pt      the last epoch" in out
    assert "dice 0.5," in flat and "weight_map True," in flat


@pytest.mark.slow
def test_train_then_predict_end_to_end(isbi_crops, tmp_path, capsys):
    img, lab = isbi_crops
    out = tmp_path / "run"
    code, text, _ = run(
        ["train", "--images", str(img), "--labels", str(lab), "--out", str(out), *SMALL], capsys
    )
    assert code == 0 and "best epoch" in text and "pixel error" in text
    for name in ("config.json", "log.csv", "last.pt", "best.pt", "curves.png", "val.png"):
        assert (out / name).stat().st_size > 0
    pred = tmp_path / "pred.tif"
    code, _, _ = run(
        [
            "predict",
            str(out / "best.pt"),
            str(img),
            "--out",
            str(pred),
            "--slices",
            "4-5",
            "--no-progress",
        ],
        capsys,
    )
    p = tifffile.imread(pred)
    assert code == 0 and p.shape == (2, 96, 96) and p.dtype == np.float32
    assert p.min() >= 0 and p.max() <= 1 and p.std() > 0

    code, text, _ = run(["predict", str(out / "best.pt"), str(img), "--out", str(pred),
                         "--threshold", "0.4", "--instances", "--tta", "--tile", "40",
                         "--no-progress"], capsys)  # fmt: skip
    assert code == 0
    mask = tifffile.imread(tmp_path / "pred-mask.tif")
    inst = tifffile.imread(tmp_path / "pred-instances.tif")
    prob = tifffile.imread(pred)
    assert mask.shape == inst.shape == prob.shape == (6, 96, 96)
    np.testing.assert_array_equal(mask, np.where(prob > 0.4, 255, 0))
    assert inst.dtype == np.uint16 and ((inst > 0) == (mask > 0)).all()
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--threshold", "2"], capsys)
    one_line_error(code, err, "--threshold must be in [0, 1]")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--seed-threshold", "0.7"], capsys)  # fmt: skip
    one_line_error(code, err, "best.pt", "--seed-threshold applies to contour models", "mask")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--split-solidity", "0.9"], capsys)  # fmt: skip
    one_line_error(code, err, "best.pt", "--split-solidity applies to contour models", "mask")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--split-depth", "2"], capsys)  # fmt: skip
    one_line_error(code, err, "best.pt", "--split-depth applies to contour models", "mask")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--seed-dynamics", "0.2"], capsys)  # fmt: skip
    one_line_error(code, err, "best.pt", "--seed-dynamics applies to contour models", "mask")

    folder = tmp_path / "pngs"
    folder.mkdir()
    stack = tifffile.imread(img)
    Image.fromarray(stack[0, :50, :70]).save(folder / "a.png")
    Image.fromarray(np.stack([stack[1]] * 3, -1)).save(folder / "b.png")  # RGB input
    code, _, _ = run(
        [
            "predict",
            str(out / "best.pt"),
            str(folder),
            "--out",
            str(tmp_path / "probs"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0
    assert tifffile.imread(tmp_path / "probs" / "a.tif").shape == (50, 70)
    assert tifffile.imread(tmp_path / "probs" / "b.tif").shape == (96, 96)


def test_bad_inputs_give_one_line_errors(isbi_crops, tmp_path, capsys):
    img, lab = isbi_crops
    base = ["train", "--out", str(tmp_path / "r"), *SMALL]
    code, _, err = run(
        [*base, "--images", str(tmp_path / "missing.tif"), "--labels", str(lab)], capsys
    )
    one_line_error(code, err, "missing.tif", "no such file")

    short = tmp_path / "short.tif"
    tifffile.imwrite(short, tifffile.imread(lab)[:5])
    code, _, err = run([*base, "--images", str(img), "--labels", str(short)], capsys)
    one_line_error(code, err, "short.tif", "5 slices", "has 6")

    small = tmp_path / "small.tif"
    tifffile.imwrite(small, tifffile.imread(lab)[:, :90])
    code, _, err = run([*base, "--images", str(img), "--labels", str(small)], capsys)
    one_line_error(code, err, "small.tif", "90 x 96", "96 x 96")

    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, (tifffile.imread(lab) // 2 + 3).astype(np.uint8))  # 3 and 130
    code, _, err = run([*base, "--images", str(img), "--labels", str(grey)], capsys)
    one_line_error(code, err, "grey.tif", "not classes")

    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(img.read_bytes()[:300])  # a cut stack: refused, naming what is left
    code, _, err = run([*base, "--images", str(corrupt), "--labels", str(lab)], capsys)
    one_line_error(code, err, "corrupt.tif", "truncated: 0 of 6 pages readable")

    code, _, err = run(
        [
            "train",
            "--preset",
            "paper",
            "--tile",
            "100",
            "--out",
            str(tmp_path / "p"),
            "--images",
            str(img),
            "--labels",
            str(lab),
        ],
        capsys,
    )
    one_line_error(
        code, err, "--tile 100", "smaller than the network's minimum 188", "nearest valid: 188"
    )

    code, _, err = run(["train", "--images", str(img), "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, "--images given alone")

    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run(["weight-map", str(lab), "--out", str(afile / "w.tif")], capsys)
    one_line_error(code, err, "afile")  # an OSError from the file system, in one line

    code, _, err = run(["train", "--resume", str(tmp_path / "r"), "--lr", "0.1"], capsys)
    one_line_error(code, err, "--resume keeps the run's settings; drop --lr")
    code, _, err = run(["train", "--resume", str(tmp_path / "r"), "--out", "x"], capsys)
    one_line_error(code, err, "drop --out")

    code, _, err = run(["predict", str(img), str(img)], capsys)
    one_line_error(code, err, "img.tif", "not a biounet model (a biounet checkpoint, ONNX or "
                    "TorchScript file)")  # fmt: skip

    five = tmp_path / "five.tif"
    tifffile.imwrite(five, np.zeros((16, 16, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig", extrasamples=[0, 0, 0, 0])  # fmt: skip
    code, _, err = run(["predict", str(img), str(five)], capsys)
    one_line_error(code, err, "five.tif")


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(isbi_crops, tmp_path):
    img, lab = isbi_crops
    out = tmp_path / "run"
    args = [
        "train",
        "--images",
        str(img),
        "--labels",
        str(lab),
        "--out",
        str(out),
        "--val-slices",
        "4-5",
        "--epochs",
        "1000",
        *TAIL,
    ]
    cmd = [sys.executable, "-m", "biounet.cli"]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.csv").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: mid-epoch or mid-write
    proc.wait()
    import torch

    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 1000
    first = (out / "log.csv").read_text().splitlines()[1]
    res = subprocess.run(
        [*cmd, "train", "--resume", str(out), "--epochs", str(done + 2), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    rows = (out / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, done + 3))
    assert rows[1] == first  # history before the kill is kept as it was


def test_weight_map_command_writes_float32_maps_and_a_figure(isbi_crops, tmp_path, capsys):
    img, lab = isbi_crops
    out = tmp_path / "w.tif"
    code, text, _ = run(["weight-map", str(lab), "--out", str(out), "--png", "--images",
                         str(img), "--w0", "5"], capsys)  # fmt: skip
    assert code == 0
    w = tifffile.imread(out)
    assert w.shape == (6, 96, 96) and w.dtype == np.float32
    from biounet import weight_map

    np.testing.assert_allclose(w[2], weight_map(tifffile.imread(lab)[2], w0=5))
    assert out.with_suffix(".png").stat().st_size > 10_000
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, np.array([[0.0, 1.5], [2.0, 0.0]], np.float32))
    code, _, err = run(["weight-map", str(bad), "--out", str(tmp_path / "x.tif")], capsys)
    one_line_error(code, err, "bad.tif", "not integer")


def test_augment_preview_draws_the_presets_tiles(isbi_crops, tmp_path, capsys):
    img, lab = isbi_crops
    out = tmp_path / "grid.png"
    code, _, _ = run(["augment-preview", "--images", str(img), "--labels", str(lab), "--out",
                      str(out), "-n", "3"], capsys)  # fmt: skip
    assert code == 0 and out.stat().st_size > 10_000


def test_evaluate_json_on_a_perfect_and_a_noisy_prediction(isbi_crops, tmp_path, capsys):
    _, lab = isbi_crops
    labels = tifffile.imread(lab)
    perfect = tmp_path / "perfect.tif"
    tifffile.imwrite(perfect, (labels == 255).astype(np.float32), photometric="minisblack")
    code, out, _ = run(["evaluate", str(perfect), str(lab), "--json"], capsys)
    r = json.loads(out)
    assert code == 0
    assert {"v_rand", "v_info", "pixel_error", "rand_error", "warping_error", "iou", "dice",
            "seg", "thresholds"} <= set(r)  # fmt: skip
    assert r["v_rand"] == r["v_info"] == 1.0 and r["pixel_error"] == r["warping_error"] == 0
    noisy = tmp_path / "noisy.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(noisy, np.clip((labels == 255) + rng.normal(0, 0.4, labels.shape), 0, 1)
                     .astype(np.float32), photometric="minisblack")  # fmt: skip
    code, out, _ = run(["evaluate", str(noisy), str(lab), "--json", "--metrics", "v_rand,iou"],
                       capsys)  # fmt: skip
    r = json.loads(out)
    assert set(r) == {"v_rand", "v_rand_split", "v_rand_merge", "v_rand_threshold", "iou",
                      "thresholds", "per_image"}  # fmt: skip
    assert [p["name"] for p in r["per_image"]] == [f"noisy[{i}]" for i in range(len(labels))]
    for key in ("v_rand", "iou"):  # the overall scores are the means of the images'
        assert r[key] == pytest.approx(np.mean([p[key] for p in r["per_image"]]), abs=1e-12)
    assert 0 < r["v_rand"] < 1
    code, out, _ = run(["evaluate", str(noisy), str(lab), "--slices", "1-2"], capsys)
    assert code == 0 and "v_rand" in out and "2 slice(s)" in out
    two = tmp_path / "two.tif"  # a prediction of slices 4-5 only, scored against the stack
    tifffile.imwrite(two, (labels[4:6] == 255).astype(np.float32), photometric="minisblack")
    code, out, _ = run(["evaluate", str(two), str(lab), "--slices", "4-5", "--json"], capsys)
    assert code == 0 and json.loads(out)["v_rand"] == 1.0

    code, _, err = run(["evaluate", str(lab), str(lab)], capsys)
    one_line_error(code, err, "lab.tif", "8-bit values; expected float probabilities")
    code, _, err = run(["evaluate", str(noisy), str(lab), "--metrics", "vrand"], capsys)
    one_line_error(code, err, "--metrics: unknown vrand")
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, labels[:2], photometric="minisblack")
    code, _, err = run(["evaluate", str(noisy), str(short)], capsys)
    one_line_error(code, err, "short.tif", "2 slices")


@pytest.mark.slow
def test_bench_reports_speeds_and_ratios(isbi_crops, tmp_path, capsys):
    img, lab = isbi_crops
    out = tmp_path / "run"
    assert main(["train", "--images", str(img), "--labels", str(lab), "--out", str(out),
                 *SMALL]) == 0  # fmt: skip
    capsys.readouterr()
    code, text, _ = run(["bench", "--checkpoint", str(out / "best.pt"), "--image-size", "64",
                         "--repeat", "1", "--json"], capsys)  # fmt: skip
    r = json.loads(text)
    assert code == 0
    for key in ("train_steps_per_s", "baseline_steps_per_s", "speedup_vs_baseline",
                "train_gflops", "conv_peak_fp32_gflops", "conv_peak_bf16_gflops",
                "share_of_peak", "predict_mpx_per_s", "predict_tta_mpx_per_s"):  # fmt: skip
        assert r[key] > 0, key
    # with one round the median of the per-round ratios is that round's ratio
    assert r["rounds"] == 1
    assert r["speedup_vs_baseline"] == pytest.approx(
        r["train_steps_per_s"] / r["baseline_steps_per_s"])  # fmt: skip


@pytest.mark.slow
def test_train_flags_reach_the_config_and_export_ships_a_usable_model(isbi_crops, tmp_path, capsys):
    img, lab = isbi_crops
    out = tmp_path / "run"
    code, _, _ = run(["train", "--images", str(img), "--labels", str(lab), "--out", str(out),
                      "--select-by", "train_loss", "--weight-map", "--isbi-every", "0",
                      "--dice", "0.5", "--w0", "5", "--class-balance", "dataset",
                      "--zoom", "0.2", "--invert-tiles", "0.25", *SMALL], capsys)  # fmt: skip
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert (cfg["select_by"], cfg["weight_map"], cfg["isbi_every"], cfg["dice"]) == (
        "train_loss", True, 0, 0.5)  # fmt: skip
    assert (cfg["w0"], cfg["class_balance"]) == (5, "dataset")
    assert (cfg["augment"]["scale"], cfg["augment"]["scale_range"]) == (True, 0.2)
    assert cfg["augment"]["invert"] == 0.25
    assert cfg["augment"]["elastic"]  # the preset's other transforms stay
    code, text, _ = run(["info", str(out / "best.pt")], capsys)
    flat = " ".join(text.split())
    assert code == 0 and "scale True, zoom 0.2," in flat and "contrast inversion 0.25," in flat
    code, _, err = run(["train", "--images", str(img), "--labels", str(lab), "--dice", "-1",
                        "--out", str(tmp_path / "neg"), *SMALL], capsys)  # fmt: skip
    one_line_error(code, err, "dice must be >= 0, got -1")
    for flag, value, message in (
        ("--w0", "-1", "w0 must be >= 0, got -1.0"),
        ("--touch-width", "-2", "touch_width must be >= 0, got -2"),
        # a mask target has no boundary class: the flag would do nothing
        ("--touch-width", "2", "target 'mask' has none (got 1, 2)"),
        ("--zoom", "-0.5", "scale_range must be >= 0, got -0.5"),
        ("--w0", "nan", "w0 must be >= 0, got nan"),
        ("--zoom", "nan", "scale_range must be >= 0, got nan"),
        ("--invert-tiles", "2", "invert must be a probability in [0, 1], got 2.0"),
    ):
        code, _, err = run(["train", "--images", str(img), "--labels", str(lab), flag, value,
                            "--out", str(tmp_path / "bad"), *SMALL], capsys)  # fmt: skip
        one_line_error(code, err, message)
    code, text, _ = run(["export", str(out / "best.pt"), str(tmp_path / "m.pt")], capsys)
    assert code == 0 and "weights and configuration only" in text
    code, _, _ = run(["predict", str(tmp_path / "m.pt"), str(img), "--out",
                      str(tmp_path / "p.tif"), "--no-progress"], capsys)  # fmt: skip
    assert code == 0 and tifffile.imread(tmp_path / "p.tif").shape == (6, 96, 96)
    code, _, err = run(["export", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")], capsys)
    one_line_error(code, err, "missing.pt", "no such checkpoint")
    assert not (tmp_path / "x.pt").exists()
    # a stored configuration this version rejects names the checkpoint that holds it
    bad = torch.load(tmp_path / "m.pt", weights_only=True)
    bad["preset"]["train"]["class_balance"] = "global"
    torch.save(bad, tmp_path / "bad.pt")
    code, _, err = run(["predict", str(tmp_path / "bad.pt"), str(img)], capsys)
    one_line_error(code, err, "bad.pt", "invalid stored configuration", "class_balance must be")


@pytest.mark.slow
def test_touching_nuclei_train_predict_instances_and_evaluate(dsb_crops, tmp_path, capsys):
    img, lab = dsb_crops
    out = tmp_path / "nuc"
    code, text, _ = run(["train", "--images", str(img), "--labels", str(lab), "--target",
                         "contour", "--out", str(out), "--val-slices", "4", "--epochs", "2",
                         "--touch-width", "2", "--invert", "yes", *TAIL], capsys)  # fmt: skip
    assert code == 0, text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["target"] == "contour" and cfg["model"]["out_channels"] == 3
    assert cfg["train"]["touch_width"] == 2 and cfg["model"]["normalization"] == "zscore-invert"
    # the model knows the size of the nuclei it was trained on: their median equivalent
    # diameter over the 4 training images (index 4 of the sorted names is held out)
    names = sorted(p.stem for p in img.iterdir())
    trained = [r.equivalent_diameter_area for n in names[:4]
               for r in regionprops(tifffile.imread(lab / f"{n}.tif"))]  # fmt: skip
    assert cfg["model"]["diameter"] == round(float(np.median(trained)), 2) > 5
    code, text, _ = run(["info", str(out / "best.pt")], capsys)
    assert f"1 channel, --invert yes, objects of {cfg['model']['diameter']:.3g} px" in text
    code, _, _ = run(["predict", str(out / "best.pt"), str(img), "--out", str(tmp_path / "p"),
                      "--instances", "--no-progress"], capsys)  # fmt: skip
    assert code == 0
    inst = tifffile.imread(tmp_path / "p" / f"{names[0]}-instances.tif")
    prob = tifffile.imread(tmp_path / "p" / f"{names[0]}.tif")
    assert inst.dtype == np.uint16 and inst.shape == prob.shape == (80, 112)
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1

    # the model's post-processing: overridden per call, or stored in it by export
    code, _, _ = run(["predict", str(out / "best.pt"), str(img), "--out", str(tmp_path / "ms"),
                      "--instances", "--min-size", "100000", "--no-progress"], capsys)  # fmt: skip
    assert code == 0 and tifffile.imread(tmp_path / "ms" / f"{names[0]}-instances.tif").max() == 0
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--out", str(tmp_path / "ms"),
                        "--instances", "--min-peak", "2", "--no-progress"], capsys)  # fmt: skip
    one_line_error(code, err, "--min-peak must be in [0, 1], got 2")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--min-size", "9"], capsys)
    one_line_error(code, err, "add --instances")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--min-fraction", "nan"], capsys)  # fmt: skip
    one_line_error(code, err, "--min-fraction must be in [0, 1], got nan")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--seed-threshold", "1"], capsys)  # fmt: skip
    one_line_error(code, err, "--seed-threshold must be in (0, 1), got 1")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--split-solidity", "-0.5"], capsys)  # fmt: skip
    one_line_error(code, err, "--split-solidity must be in [0, 1], got -0.5")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--split-depth", "0"], capsys)  # fmt: skip
    one_line_error(code, err, "--split-depth must be > 0 pixels, got 0.0")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--instances",
                        "--seed-dynamics", "1"], capsys)  # fmt: skip
    one_line_error(code, err, "--seed-dynamics must be in [0, 1), got 1.0")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--split-depth", "2"], capsys)
    one_line_error(code, err, "add --instances")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--seed-dynamics", "0.2"],
                       capsys)  # fmt: skip
    one_line_error(code, err, "add --instances")
    # --diameter: images rescaled to the trained size, outputs at the input's
    d = cfg["model"]["diameter"]
    for diameter in (str(2 * d), "auto"):
        code, _, err = run(["predict", str(out / "best.pt"), str(img), "--out",
                            str(tmp_path / "d"), "--instances", "--diameter", diameter,
                            "--invert", "no", "--no-progress"], capsys)  # fmt: skip
        assert code == 0, err
        assert tifffile.imread(tmp_path / "d" / f"{names[0]}-instances.tif").shape == (80, 112)
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--diameter", str(5 * d)],
                       capsys)  # fmt: skip
    one_line_error(code, err, f"--diameter {5 * d:g} would rescale the images by 0.2;")
    code, _, err = run(["predict", str(out / "best.pt"), str(img), "--diameter", "-3"], capsys)
    one_line_error(code, err, "--diameter must be auto or >= 0 pixels, got -3.0")
    code, _, err = run(["export", str(out / "best.pt"), str(tmp_path / "m.pt"),
                        "--threshold", "1.5"], capsys)  # fmt: skip
    one_line_error(code, err, "--threshold must be in [0, 1], got 1.5")
    stored = ["--min-peak", "0.9", "--min-size", "7", "--min-fraction", "0.25",
              "--seed-threshold", "0.3", "--split-solidity", "0.85", "--split-depth", "2.5",
              "--seed-dynamics", "0.15", "--threshold", "0.8"]  # fmt: skip
    code, _, _ = run(["export", str(out / "best.pt"), str(tmp_path / "m.pt"), *stored], capsys)
    shipped = load_checkpoint(tmp_path / "m.pt")["preset"]["inference"]
    assert code == 0 and (shipped["min_peak"], shipped["min_size"]) == (0.9, 7)
    assert shipped["min_fraction"] == 0.25
    assert shipped["tta"] is False  # not asked for: predict's default stays plain
    assert (shipped["seed_threshold"], shipped["threshold"]) == (0.3, 0.8)
    assert (shipped["split_solidity"], shipped["split_depth"]) == (0.85, 2.5)
    assert shipped["seed_dynamics"] == 0.15
    # what export stores is what the flags give for one call
    for model, flags, dest in (
        (out / "best.pt", stored, "flags"),
        (tmp_path / "m.pt", [], "stored"),
        (out / "best.pt", stored[:-2], "fg-default"),
    ):
        code, _, _ = run(["predict", str(model), str(img), "--out", str(tmp_path / dest),
                          "--instances", "--no-progress", *flags], capsys)  # fmt: skip
        assert code == 0
    changed = 0
    for name in names:
        a = tifffile.imread(tmp_path / "flags" / f"{name}-instances.tif")
        np.testing.assert_array_equal(
            a, tifffile.imread(tmp_path / "stored" / f"{name}-instances.tif")
        )
        default = tifffile.imread(tmp_path / "fg-default" / f"{name}-instances.tif")
        changed += (a > 0).sum() < (default > 0).sum()
    assert changed  # the foreground threshold took effect
    # a stored TTA default: predict averages the 8 views unless --no-tta
    code, _, _ = run(["export", str(out / "best.pt"), str(tmp_path / "t.pt"), "--tta"], capsys)
    assert code == 0 and load_checkpoint(tmp_path / "t.pt")["preset"]["inference"]["tta"] is True
    for model, flags, dest in (
        (tmp_path / "t.pt", [], "t-default"),
        (out / "best.pt", ["--tta"], "t-flag"),
        (tmp_path / "t.pt", ["--no-tta"], "t-off"),
        (out / "best.pt", [], "t-plain"),
    ):
        code, _, _ = run(["predict", str(model), str(img), "--out", str(tmp_path / dest),
                          "--no-progress", *flags], capsys)  # fmt: skip
        assert code == 0
    for name in names:
        tta, plain = (
            tifffile.imread(tmp_path / d / f"{name}.tif") for d in ("t-default", "t-plain")
        )
        np.testing.assert_array_equal(tta, tifffile.imread(tmp_path / "t-flag" / f"{name}.tif"))
        np.testing.assert_array_equal(plain, tifffile.imread(tmp_path / "t-off" / f"{name}.tif"))
        assert not np.array_equal(tta, plain)

    # evaluate: the reference against itself is perfect; our predictions pair by name
    code, text, _ = run(["evaluate", str(lab), str(lab), "--instances", "--json"], capsys)
    r = json.loads(text)
    assert code == 0 and (r["ap50"], r["dsb_score"], r["seg"], r["merges"]) == (1, 1, 1, 0)
    # predict's own output folder (probabilities + NAME-instances.tif): instance mode by itself
    code, text, _ = run(["evaluate", str(tmp_path / "p"), str(lab), "--json"], capsys)
    r = json.loads(text)
    assert code == 0 and r["images"] == 5 and r["n_gt"] > 40
    assert set(r) >= {"ap50", "dsb_score", "f1", "seg", "merges", "splits"}
    preds = tmp_path / "p"

    # a named list picks the images to predict
    lst = tmp_path / "two.txt"
    lst.write_text(f"{names[3]}\n{names[1]}\n")
    code, _, _ = run(["predict", str(out / "best.pt"), str(img), "--out", str(tmp_path / "q"),
                      "--slices", f"@{lst}", "--no-progress"], capsys)  # fmt: skip
    assert code == 0 and sorted(p.stem for p in (tmp_path / "q").iterdir()) == sorted(
        [names[1], names[3]]
    )

    # a 16-bit image that is not instance labels is never scored as instances silently
    u16 = tmp_path / "u16.tif"
    tifffile.imwrite(u16, (tifffile.imread(preds / f"{names[0]}.tif") * 1000).astype(np.uint16))
    code, _, err = run(["evaluate", str(u16), str(lab / f"{names[0]}.tif")], capsys)
    one_line_error(code, err, f"{names[0]}.tif", "not classes", "add --instances")

    # bad instance input, one line each
    bad = tmp_path / "bad"
    bad.mkdir()
    for n in names:
        tifffile.imwrite(bad / f"{n}.tif", tifffile.imread(lab / f"{n}.tif").astype(np.int32))
    tifffile.imwrite(bad / f"{names[0]}.tif", -np.ones((96, 96), np.int32))
    code, _, err = run(["evaluate", str(preds), str(bad), "--instances"], capsys)
    one_line_error(code, err, names[0], "negative value -1")
    (bad / f"{names[2]}.tif").unlink()
    tifffile.imwrite(bad / f"{names[0]}.tif", np.zeros((50, 50), np.uint16))
    code, _, err = run(["train", "--images", str(img), "--labels", str(lab), "--target", "contour",
                        "--select-by", "v_rand", "--isbi-every", "0", "--out",
                        str(tmp_path / "v"), "--val-slices", "4", *TAIL], capsys)  # fmt: skip
    one_line_error(code, err, "select_by v_rand needs the ISBI metrics")
    assert not (tmp_path / "v").exists()
    base = ["train", "--target", "binary", "--out", str(tmp_path / "b"), *SMALL]
    code, _, err = run([*base, "--images", str(img), "--labels", str(bad)], capsys)
    one_line_error(code, err, "no mask for image", names[2])
    tifffile.imwrite(bad / f"{names[2]}.tif", np.zeros((96, 96), np.uint16))
    code, _, err = run([*base, "--images", str(img), "--labels", str(bad)], capsys)
    one_line_error(code, err, names[0], "50 x 50", "80 x 112")


def test_instance_label_problems_through_the_command(dsb_crops, tmp_path, capsys, caplog):
    """Each bad instance-label input gives one line naming the file (exit code 2), a binary
    mask one warning line and connected components; --json carries TP / FP / FN per IoU
    threshold."""
    img, lab = dsb_crops
    names = sorted(p.stem for p in lab.iterdir())
    ref = tifffile.imread(lab / f"{names[0]}.tif")

    # the reference against itself: every object a TP at every threshold
    code, text, _ = run(["evaluate", str(lab), str(lab), "--instances", "--json"], capsys)
    r = json.loads(text)
    n = sum(len(np.unique(tifffile.imread(f))) - 1 for f in lab.iterdir())
    assert code == 0 and r["n_gt"] == n
    assert r["thresholds"][0] == 0.5 and r["thresholds"][-1] == 0.95 and len(r["thresholds"]) == 10
    assert r["tp"] == [n] * 10 and r["fp"] == r["fn"] == [0] * 10
    code, text, _ = run(["evaluate", str(lab), str(lab), "--instances"], capsys)
    assert code == 0 and f"at IoU > 0.5: {n} / 0 / 0" in text

    # a binary mask where instances are needed: one warning, its connected components
    binary = tmp_path / "binary"
    binary.mkdir()
    mask = (ref > 0).astype(np.uint8) * 255
    tifffile.imwrite(binary / f"{names[0]}.tif", mask)
    with caplog.at_level(logging.WARNING, logger="biounet"):
        code, text, _ = run(["evaluate", str(binary), str(lab / f"{names[0]}.tif"),
                             "--instances", "--json"], capsys)  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert code == 0 and len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"binary/{names[0]}: binary mask where instance labels are needed" in warnings[0]
    components = len(np.unique(measure_label(mask > 0, connectivity=1))) - 1
    assert json.loads(text)["n_pred"] == components < len(np.unique(ref)) - 1

    # a fractional label value stops training before it starts
    frac = tmp_path / "frac"
    frac.mkdir()
    for f in lab.iterdir():
        tifffile.imwrite(frac / f.name, tifffile.imread(f).astype(np.float32))
    tifffile.imwrite(
        frac / f"{names[1]}.tif", tifffile.imread(lab / f"{names[1]}.tif").astype(np.float32) + 0.5
    )
    code, _, err = run(["train", "--images", str(img), "--labels", str(frac), "--target",
                        "contour", "--out", str(tmp_path / "f"), "--val-slices", "4",
                        *TAIL], capsys)  # fmt: skip
    one_line_error(code, err, names[1], "fractional")
    assert not (tmp_path / "f").exists()

    # a reference image no prediction pairs with is reported; a prediction with no reference
    # is an error naming it
    extra = tmp_path / "extra"
    extra.mkdir()
    tifffile.imwrite(extra / "nobody.tif", ref)
    code, _, err = run(["evaluate", str(extra), str(lab), "--instances"], capsys)
    one_line_error(code, err, "nobody")


def test_predict_and_export_take_the_same_inference_flags():
    from biounet.cli import build_parser, inference_overrides

    flags = ["--threshold", "0.7", "--no-tta", "--min-size", "9", "--min-peak", "0.5",
             "--min-fraction", "0.2", "--seed-threshold", "0.3", "--seed-dynamics", "0.1",
             "--split-solidity", "0.8", "--split-depth", "2.5"]  # fmt: skip
    expected = {"threshold": 0.7, "tta": False, "min_size": 9, "min_peak": 0.5,
                "min_fraction": 0.2, "seed_threshold": 0.3, "seed_dynamics": 0.1,
                "split_solidity": 0.8, "split_depth": 2.5}  # fmt: skip
    parser = build_parser()
    predict = parser.parse_args(["predict", "m.pt", "in.tif", "--instances", *flags])
    export = parser.parse_args(["export", "m.pt", "out.pt", *flags])
    assert inference_overrides(predict) == inference_overrides(export) == expected
    # none given: nothing overrides the model's settings
    assert inference_overrides(parser.parse_args(["export", "m.pt", "out.pt"])) == {}
    assert inference_overrides(parser.parse_args(["predict", "m.pt", "x", "--tta"])) == {
        "tta": True}  # fmt: skip
    with pytest.raises(ValueError, match=r"^--min-size must be >= 0 pixels, got -3$"):
        inference_overrides(parser.parse_args(["export", "m.pt", "o.pt", "--min-size", "-3"]))


def _three_class_stack(tmp_path):
    """A 4-image 64 x 64 stack whose labels are classes 0/1/2 (a bright disk of class 1, a
    dimmer square of class 2, per image at its own place), as image and label TIFFs."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    images, labels = [], []
    for i in range(4):
        lab = np.zeros((64, 64), np.uint8)
        lab[(yy - 20 - 4 * i) ** 2 + (xx - 22) ** 2 < 100] = 1
        lab[36 + 2 * i : 54 + 2 * i, 34:56] = 2
        img = np.choose(lab, [30, 200, 110]) + rng.normal(0, 8, lab.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(lab)
    tifffile.imwrite(tmp_path / "img3.tif", np.stack(images), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab3.tif", np.stack(labels), photometric="minisblack")
    return tmp_path / "img3.tif", tmp_path / "lab3.tif"


def _by_hand(pred, gt, c):
    """IoU and Dice of class c over the pixels whose reference is not 255."""
    keep = gt != 255
    p, g = (pred == c) & keep, (gt == c) & keep
    both, either = np.sum(p & g), np.sum(p | g)
    return both / either, 2 * both / (p.sum() + g.sum())


def test_a_three_class_model_predicts_a_class_map_that_evaluate_scores_per_class(
    tmp_path, capsys
):

    img, lab = _three_class_stack(tmp_path)
    torch.manual_seed(0)
    ckpt = _three_class_checkpoint(tmp_path)
    pred = tmp_path / "pred.tif"
    code, out, err = run(["predict", str(ckpt), str(img), "--out", str(pred), "--probabilities",
                          "--precision", "fp32", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert f"wrote {pred}, {tmp_path / 'pred-probabilities.tif'}" in out
    classes = tifffile.imread(pred)
    probs = tifffile.imread(tmp_path / "pred-probabilities.tif")
    assert classes.dtype == np.uint8 and classes.shape == (4, 64, 64)
    assert probs.dtype == np.float32 and probs.shape == (4, 3, 64, 64)  # ImageJ ZCYX
    np.testing.assert_array_equal(classes, probs.argmax(axis=1))
    assert set(np.unique(classes)) <= {0, 1, 2}

    labels = tifffile.imread(lab)
    code, out, err = run(["evaluate", str(pred), str(lab), "--classes", "3", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert {"iou_per_class", "dice_per_class", "mean_iou", "mean_dice"} <= set(r)
    expected = [_by_hand(classes, labels, c) for c in (1, 2)]
    assert r["iou_per_class"] == pytest.approx([e[0] for e in expected], abs=1e-6)
    assert r["dice_per_class"] == pytest.approx([e[1] for e in expected], abs=1e-6)
    assert r["mean_iou"] == pytest.approx((expected[0][0] + expected[1][0]) / 2, abs=1e-6)
    assert (r["classes"], r["images"], r["pixels"], r["ignored"]) == (3, 4, 4 * 64 * 64, 0)

    # the reference labels scored against themselves, with an unlabelled (255) band that
    # hides a wrong prediction: perfect
    holes = labels.copy()
    holes[:, :, :8] = 255
    wrong = labels.copy()
    wrong[:, :, :8] = 2
    tifffile.imwrite(tmp_path / "holes.tif", holes, photometric="minisblack")
    tifffile.imwrite(tmp_path / "wrong.tif", wrong, photometric="minisblack")
    code, out, _ = run(["evaluate", str(tmp_path / "wrong.tif"), str(tmp_path / "holes.tif"),
                        "--classes", "3", "--json"], capsys)  # fmt: skip
    r = json.loads(out)
    assert r["iou_per_class"] == r["dice_per_class"] == [1.0, 1.0] and r["mean_iou"] == 1.0
    assert r["ignored"] == 4 * 64 * 8
    # a class in neither map: null, left out of the means; the text names every class
    code, out, _ = run(["evaluate", str(lab), str(lab), "--classes", "4"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == f"{lab} against {lab}: 4 image(s), 4 classes, {4 * 64 * 64} pixels " \
                       "scored (0 not labelled)"
    assert lines[1:] == ["  IoU   class 1 1.0000  class 2 1.0000  class 3 n/a  mean 1.0000",
                         "  Dice  class 1 1.0000  class 2 1.0000  class 3 n/a  mean 1.0000"]
    code, out, _ = run(["evaluate", str(lab), str(lab), "--classes", "4", "--json"], capsys)
    assert json.loads(out)["iou_per_class"] == [1.0, 1.0, None]


def test_a_three_class_model_in_folders_and_its_one_line_refusals(tmp_path, capsys):

    img, lab = _three_class_stack(tmp_path)
    images, labels = tifffile.imread(img), tifffile.imread(lab)
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    for i, name in enumerate(("a", "b")):
        tifffile.imwrite(tmp_path / "im" / f"{name}.tif", images[i])
        tifffile.imwrite(tmp_path / "gt" / f"{name}.tif", labels[i])
    ckpt = _three_class_checkpoint(tmp_path)
    out = tmp_path / "pred"
    code, _, err = run(["predict", str(ckpt), str(tmp_path / "im"), "--out", str(out),
                        "--probabilities", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a-probabilities.tif", "a.tif",
                                                     "b-probabilities.tif", "b.tif"]  # fmt: skip
    assert tifffile.imread(out / "a-probabilities.tif").shape == (3, 64, 64)
    # a predict folder: its class maps are scored, not the probabilities beside them
    code, res, err = run(["evaluate", str(out), str(tmp_path / "gt"), "--classes", "3",
                          "--json"], capsys)  # fmt: skip
    assert code == 0, err
    both = np.stack([tifffile.imread(out / "a.tif"), tifffile.imread(out / "b.tif")])
    assert json.loads(res)["iou_per_class"] == pytest.approx(
        [_by_hand(both, labels[:2], c)[0] for c in (1, 2)], abs=1e-6)

    for extra, needle in ((["--instances"], "three.pt: a 3-class model gives a class map"),
                          (["--threshold", "0.5"], "masks and instances need a binary or "
                                                   "contour model")):  # fmt: skip
        code, _, err = run(["predict", str(ckpt), str(img), "--out", str(tmp_path / "x.tif"),
                            *extra], capsys)  # fmt: skip
        one_line_error(code, err, needle)
    assert not (tmp_path / "x.tif").exists()
    code, _, err = run(["evaluate", str(img), str(lab), "--classes", "3"], capsys)
    one_line_error(code, err, "img3.tif slice 0: mask values are not classes",
                    "expected a class map 0..2 (predict's NAME.tif of a 3-class model)")
    code, _, err = run(["evaluate", str(lab), str(lab), "--classes", "1"], capsys)
    one_line_error(code, err, "--classes must be in 2..255, got 1")
    code, _, err = run(["evaluate", str(lab), str(lab), "--classes", "3", "--instances"], capsys)
    one_line_error(code, err, "--classes scores class maps, --instances instance labels")
    code, _, err = run(["evaluate", str(lab), str(lab)], capsys)
    one_line_error(code, err, "lab3.tif slice 0: mask values are not classes",
                    "(instance labels? add --instances; classes 0..C-1? add --classes C; "
                    "soft masks? add --label-threshold T)")
    binary = tmp_path / "binary.tif"
    tifffile.imwrite(binary, (labels > 0).astype(np.uint8) * 255, photometric="minisblack")
    code, _, err = run(["evaluate", str(lab), str(binary)], capsys)
    one_line_error(code, err, "8-bit values", "(a class map: add --classes C)")


def test_predict_refuses_a_truncated_stack_in_one_line(tmp_path, capsys):
    from conftest import DATA

    src = DATA.parent / "isbi2012" / "test-volume.tif"  # 30 pages
    data = src.read_bytes()
    cut = tmp_path / "third.tif"
    cut.write_bytes(data[: len(data) // 3])  # the first third: it once gave one page, exit 0
    model = DATA.parents[1] / "models" / "isbi2012.pt"
    out = tmp_path / "p.tif"
    code, _, err = run(["predict", str(model), str(cut), "--out", str(out), "--no-progress"],
                       capsys)  # fmt: skip
    one_line_error(code, err, "third.tif: truncated: ", " of 30 pages readable (file is ")
    assert not out.exists()


def _soft_mask_folder(folder, sizes, seed=0):
    """PNG images and anti-aliased PNG masks (blurred discs, 0..255) of the given (H, W)
    sizes, paired by name: (images dir, masks dir)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img_dir, lab_dir = folder / "images", folder / "masks"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir()
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[:h, :w]
        disc = np.zeros((h, w), bool)
        for _ in range(4):
            y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, 12)
            disc |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        soft = ndimage.gaussian_filter(disc * 255.0, 1.0).round().astype(np.uint8)
        image = (disc * 120 + rng.normal(60, 20, (h, w))).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(img_dir / f"cells{i}.png")
        Image.fromarray(soft).save(lab_dir / f"cells{i}.png")
    return img_dir, lab_dir


def test_a_folder_of_odd_sizes_and_soft_masks_trains_with_a_threshold_alone(tmp_path, capsys,
                                                                          caplog):
    sizes = [(61, 70), (89, 117), (75, 75), (97, 64), (66, 101), (80, 93), (71, 88)]
    img, lab = _soft_mask_folder(tmp_path, sizes)
    out = tmp_path / "run"
    code, _, err = run(["train", "--images", str(img), "--labels", str(lab), "--out", str(out),
                        "--epochs", "1", *TAIL], capsys)  # fmt: skip
    one_line_error(code, err, "masks/cells0: mask values are not classes",
                    "add --label-threshold T (value > T is foreground)")
    assert not out.exists()
    with caplog.at_level(logging.INFO, logger="biounet"):
        code, _, err = run(["train", "--images", str(img), "--labels", str(lab), "--out",
                            str(out), "--label-threshold", "127", "--epochs", "1", *TAIL],
                           capsys)  # fmt: skip
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["label_threshold"] == 127 and cfg["model"]["out_channels"] == 2
    held = [int(i) for i in cfg["train"]["val_slices"].split(",")]
    assert len(held) == 1  # 1 of 7, chosen with the run's seed and stored
    assert f"validation: 1 of 7 images held out: cells{held[0]}\n" in caplog.text
    code, _, err = run(["predict", str(out / "last.pt"), str(img / f"cells{held[0]}.png"),
                        "--out", str(tmp_path / "p.tif"), "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert tifffile.imread(tmp_path / "p.tif").shape == sizes[held[0]]
    # evaluated against its soft mask: refused as it is, binarised like training
    gt = str(lab / f"cells{held[0]}.png")
    code, _, err = run(["evaluate", str(tmp_path / "p.tif"), gt, "--json"], capsys)
    one_line_error(code, err, f"cells{held[0]}.png: mask values are not classes",
                    "soft masks? add --label-threshold T")
    code, text, err = run(["evaluate", str(tmp_path / "p.tif"), gt, "--json",
                           "--label-threshold", "127"], capsys)  # fmt: skip
    assert code == 0, err
    soft = np.asarray(Image.open(gt))
    prob = tifffile.imread(tmp_path / "p.tif")
    fg, cells = prob > 0.5, soft > 127
    expected = (fg & cells).sum() / (fg | cells).sum()
    assert json.loads(text)["iou"] == pytest.approx(expected, abs=1e-9)


def test_new_training_flags_fail_in_one_line_and_write_nothing(isbi_crops, tmp_path, capsys):
    img, lab = isbi_crops
    out = tmp_path / "r"
    base = ["train", "--images", str(img), "--labels", str(lab), "--out", str(out), *SMALL]

    def refused(flags, *needles):
        code, _, err = run([*base, *flags], capsys)
        one_line_error(code, err, *needles)
        assert not out.exists()

    refused(["--ignore-label", "1"], "--ignore-label 1 is also a class of", "lab.tif slice 0",
            "(classes 0..1)")
    refused(["--label-threshold", "300"], "lab.tif slice 0: --label-threshold 300 is outside the "
            "mask's values 0..255: every pixel would be background")  # fmt: skip
    refused(["--classes", "1"], "classes must be in 2..255, got 1")
    three = tmp_path / "three.tif"
    labels = (tifffile.imread(lab) == 255).astype(np.uint8)
    labels[:, :10] = 2
    tifffile.imwrite(three, labels)
    code, _, err = run([*base[:4], str(three), *base[5:], "--classes", "2"], capsys)
    one_line_error(code, err, "three.tif slice 0: mask values are not classes", "expected 0/255 "
                    "or 0/1")  # fmt: skip
    assert not out.exists()

    notmodel = tmp_path / "notes.pt"
    notmodel.write_text("not a model")
    refused(["--init", str(notmodel)], "notes.pt: not a readable biounet checkpoint")
    refused(["--init", str(img)], "img.tif: not a readable biounet checkpoint")
    tiny_checkpoint(tmp_path / "two.pt", tiny_unet(in_channels=2))
    refused(["--init", str(tmp_path / "two.pt")], "two.pt: the model takes 2 input channels, "
            "the images have 1")  # fmt: skip
    code, _, err = run(["train", "--resume", str(out), "--init", str(tmp_path / "two.pt")], capsys)
    one_line_error(code, err, "--resume keeps the run's settings; drop --init")


def test_init_fine_tunes_the_shipped_nuclei_model_on_a_few_images(dsb_crops, tmp_path, capsys):
    from biounet.presets import FAST, init_preset

    out = tmp_path / "tuned"
    code, _, err = run(["train", "--init", "models/dsb2018-nuclei.pt", "--images",
                        str(dsb_crops[0]), "--labels", str(dsb_crops[1]), "--out", str(out),
                        "--epochs", "1", *TAIL], capsys)  # fmt: skip
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    shipped = load_checkpoint("models/dsb2018-nuclei.pt")["preset"]
    # the model's network, and the size of the nuclei of the data it is tuned on ...
    held = int(cfg["train"]["val_slices"])  # auto: one of the five
    trained = [r.equivalent_diameter_area
               for i, f in enumerate(sorted(dsb_crops[1].iterdir())) if i != held
               for r in regionprops(tifffile.imread(f))]  # fmt: skip
    assert cfg["model"] == {**shipped["model"], "diameter": round(float(np.median(trained)), 2)}
    assert cfg["train"]["target"] == "contour" and cfg["train"]["dice"] == 0.5  # ... and preset
    assert cfg["train"]["init"] == "models/dsb2018-nuclei.pt"
    assert cfg["train"]["val_slices"] != shipped["train"]["val_slices"]  # its data's, not mine
    assert load_checkpoint(out / "last.pt")["preset"]["train"]["init"] == "models/dsb2018-nuclei.pt"
    # --preset: that preset's training settings around the model's network
    fast = init_preset("models/dsb2018-nuclei.pt", "fast")
    assert fast.model == init_preset("models/dsb2018-nuclei.pt").model
    assert fast.train.target == FAST.train.target and fast.train.dice == FAST.train.dice


@pytest.mark.slow
def test_a_three_class_mask_stack_trains_predicts_a_class_map_and_evaluates_per_class(
    tmp_path, capsys
):
    img, lab = _three_class_stack(tmp_path)
    run_dir = tmp_path / "run"
    code, out, err = run(["train", "--images", str(img), "--labels", str(lab), "--val-slices",
                          "3", "--epochs", "1", "--steps-per-epoch", "2", "--tile", "64",
                          "--batch-size", "2", "--precision", "fp32", "--no-progress",
                          "--out", str(run_dir)], capsys)  # fmt: skip
    assert code == 0, err
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert ckpt["preset"]["model"]["out_channels"] == 3
    assert ckpt["preset"]["train"]["target"] == "mask"
    pred = tmp_path / "pred.tif"
    code, _, err = run(["predict", str(run_dir / "best.pt"), str(img), "--out", str(pred),
                        "--precision", "fp32", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    classes = tifffile.imread(pred)
    assert classes.dtype == np.uint8 and classes.shape == (4, 64, 64)
    assert set(np.unique(classes)) <= {0, 1, 2}
    code, out, err = run(["evaluate", str(pred), str(lab), "--classes", "3", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    labels = tifffile.imread(lab)
    expected = [_by_hand(classes, labels, c) for c in (1, 2)]
    assert r["iou_per_class"] == pytest.approx([e[0] for e in expected], abs=1e-6)
    assert r["dice_per_class"] == pytest.approx([e[1] for e in expected], abs=1e-6)
    assert r["mean_iou"] == pytest.approx(np.mean([e[0] for e in expected]), abs=1e-6)


def test_evaluate_scores_a_prediction_folder_against_a_larger_reference_folder(tmp_path, capsys):
    import json

    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    for i in range(3):  # three references, two predictions: the third is not scored
        label = np.where(rng.random((32, 32)) > 0.3, 255, 0).astype(np.uint8)
        tifffile.imwrite(tmp_path / "gt" / f"im{i}.tif", label)
        if i < 2:
            tifffile.imwrite(tmp_path / "pred" / f"im{i}.tif", (label / 255).astype(np.float32))
    code = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json",
                 "--metrics", "iou,dice"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["iou"] == 1.0 and result["dice"] == 1.0


def _three_class_checkpoint(tmp_path):
    """An untrained 3-class mask model (depth 2, 4 base channels) saved as a checkpoint."""
    from biounet.config import TrainConfig

    return tiny_checkpoint(tmp_path / "three.pt", tiny_unet(out_channels=3),
                           TrainConfig(target="mask"))  # fmt: skip


def test_export_about_is_what_info_shows_of_a_model(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.pt", tiny_unet())
    about = {"trained_on": "all 497 DSB 2018 fluorescence images", "command": "biounet train",
             "scores": {"cv_ap50_per_image": 0.86, "cv_pooled_ap50": 0.85}}  # fmt: skip
    (tmp_path / "about.json").write_text(json.dumps(about))
    code, _, err = run(["export", str(ckpt), str(tmp_path / "s.pt"), "--about",
                        str(tmp_path / "about.json")], capsys)  # fmt: skip
    assert code == 0, err
    code, text, _ = run(["info", str(tmp_path / "s.pt")], capsys)
    assert text.splitlines()[:3] == [
        "trained on: all 497 DSB 2018 fluorescence images", "command: biounet train",
        "scores: cv_ap50_per_image 0.86, cv_pooled_ap50 0.85"]  # fmt: skip
    code, text, _ = run(["info", str(tmp_path / "s.pt"), "--json"], capsys)
    assert json.loads(text)["about"] == about
    # exported again with other settings, it keeps its record
    code, _, _ = run(["export", str(tmp_path / "s.pt"), str(tmp_path / "t.pt"), "--min-size",
                      "5"], capsys)  # fmt: skip
    assert json.loads(run(["info", str(tmp_path / "t.pt"), "--json"], capsys)[1])["about"] == about
    (tmp_path / "bad.json").write_text(json.dumps({"scores": {"ap": [1]}}))
    refusal(["export", str(ckpt), str(tmp_path / "u.pt"), "--about", str(tmp_path / "bad.json")],
            capsys, "u.pt: 'scores' must be an object of names to numbers or text")
    refusal(["export", str(ckpt), str(tmp_path / "u.pt"), "--about", str(tmp_path / "no.json")],
            capsys, "no.json: not a readable JSON file")


def test_train_from_several_folders_refuses_a_shared_name_in_one_line(dsb_crops, tmp_path, capsys):
    import shutil

    images, labels = dsb_crops
    other = tmp_path / "other"
    other.mkdir()
    first = sorted(images.iterdir())[0]
    shutil.copy(first, other / first.name)  # the same name in both folders
    refusal(["train", "--preset", "nuclei", "--images", f"{images},{other}", "--labels",
             f"{labels},{labels}", "--out", str(tmp_path / "r")], capsys,
            f"{other / first.stem}: {images / first.stem} has the same name")  # fmt: skip
    refusal(["train", "--preset", "nuclei", "--images", f"{images},{first}", "--labels",
             str(labels), "--out", str(tmp_path / "r")], capsys,
            f"{first}: not a folder")  # fmt: skip
