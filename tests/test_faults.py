"""The fault catalogue: the command line against full disks, read-only folders, files where
folders belong, signals and two writers. Each case asserts the exit code, a one-line
message, and that nothing partial or temporary is left.

A full disk is a small tmpfs mounted for the test (root only: CI runs as root); elsewhere
those cases are skipped, with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT / "data" / "isbi2012"
# a training run that takes seconds: 64 px tiles, 2 a step, no validation
QUICK = ["--tile", "64", "--batch-size", "2", "--val-every", "0", "--time-limit", "0",
         "--precision", "fp32", "--no-progress"]  # fmt: skip
pytestmark = pytest.mark.slow


def biounet(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biounet", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, **kw)  # fmt: skip


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "biounet", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def one_line(result, *parts: str) -> str:
    """The error line of ``result``'s stderr (log lines before it are allowed, a traceback
    is not), holding every one of ``parts``."""
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.read()
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    for part in parts:
        assert part in last, (part, err)
    return last


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (CI runs as root)"
    if not shutil.which("mount"):
        return "no mount command"
    return None


@pytest.fixture
def disk(tmp_path):
    """A tmpfs of a given size in kB, mounted for the test: disk(96) -> its path."""
    why = _can_mount()
    if why:
        pytest.skip(why)
    mounted = []

    def make(kb: int, options: str = "") -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        opts = f"size={kb}k" + (f",{options}" if options else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def slice0(tmp_path):
    path = tmp_path / "slice0.tif"
    tifffile.imwrite(path, tifffile.imread(ISBI / "test-volume.tif")[0])
    return path


def test_predict_to_a_full_disk_is_one_line_and_leaves_nothing(disk):
    full = disk(96)
    r = biounet("predict", "models/isbi2012.pt", str(ISBI / "test-volume.tif"), "--slices",
                "0-1", "--out", str(full / "p.tif"), "--no-progress")  # fmt: skip
    assert r.returncode == 2  # not a bus error from writing through a memory map
    one_line(r, f"{full / 'p.tif'}: No space left on device")
    assert leftovers(full) == []


def test_predict_zarr_to_a_full_disk_is_one_line_and_leaves_nothing(disk, slice0):
    full = disk(96)
    r = biounet("predict", "models/isbi2012.pt", str(slice0), "--out", str(full / "p.zarr"),
                "--no-progress")  # fmt: skip
    assert r.returncode == 2
    one_line(r, f"{full / 'p.zarr'}: No space left on device")
    assert leftovers(full) == []


def test_a_predict_that_fills_the_disk_part_way_keeps_its_whole_outputs(disk, slice0):
    full = disk(1100)  # the probabilities (1 MB) fit, the rest does not
    r = biounet("predict", "models/isbi2012.pt", str(slice0), "--out", str(full / "p.tif"),
                "--threshold", "0.5", "--instances", "--roi-zip", "--no-progress")  # fmt: skip
    assert r.returncode == 2
    one_line(r, "No space left on device", str(full))
    assert not [n for n in leftovers(full) if n.startswith(".")]  # no temp file
    for name in leftovers(full):  # what was written is whole
        tifffile.imread(full / name)


@pytest.mark.parametrize("fmt", ["biounet", "torchscript", "onnx"])
def test_export_to_a_full_disk(disk, fmt):
    full = disk(96)
    r = biounet("export", "models/dsb2018-nuclei.pt", str(full / "m.out"), "--format", fmt)
    assert r.returncode == 2
    one_line(r, f"{full / 'm.out'}: No space left on device")
    assert leftovers(full) == []


def test_a_new_run_on_a_full_disk_leaves_no_folder(disk):
    full = disk(96)
    r = biounet("train", "--out", str(full / "run"), "--epochs", "1", "--steps-per-epoch", "1",
                *QUICK)  # fmt: skip
    assert r.returncode == 2
    one_line(r, str(full / "run"), "No space left on device")
    assert leftovers(full) == []


def test_a_checkpoint_on_a_full_disk_keeps_the_last_good_one_and_resumes(disk):
    room = disk(80 * 1024)
    run = room / "run"
    r = biounet("train", "--out", str(run), "--epochs", "1", "--steps-per-epoch", "2", *QUICK)
    assert r.returncode == 0, r.stderr
    free = shutil.disk_usage(room).free
    filler = room / "filler"
    with open(filler, "wb") as f:  # the disk fills up while the run is away
        f.truncate(free - 64 * 1024)
        os.posix_fallocate(f.fileno(), 0, free - 64 * 1024)
    r = biounet("train", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert r.returncode == 2
    one_line(r, str(run), "No space left on device")
    kept = torch.load(run / "last.pt", weights_only=True)
    assert kept["epoch"] == 1  # the last good epoch, whole and loadable
    assert not [n for n in leftovers(run) if n.startswith(".") and n != ".lock"]
    filler.unlink()  # space freed: the run goes on from its last good epoch
    r = biounet("train", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_a_read_only_output_folder(disk, slice0):
    ro = disk(1024, "ro")
    r = biounet("predict", "models/isbi2012.pt", str(slice0), "--out", str(ro / "p.tif"),
                "--no-progress")  # fmt: skip
    assert r.returncode == 2
    one_line(r, str(ro), "Read-only file system")
    r = biounet("train", "--out", str(ro / "run"), "--epochs", "1", *QUICK)
    assert r.returncode == 2
    one_line(r, str(ro / "run"), "Read-only file system")


def test_a_file_where_a_folder_belongs(tmp_path, slice0):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    r = biounet("predict", "models/isbi2012.pt", str(slice0), "--out",
                str(blocker / "p.tif"), "--no-progress")  # fmt: skip
    assert r.returncode == 2
    one_line(r, str(blocker))
    r = biounet("train", "--out", str(blocker), "--epochs", "1", *QUICK)
    assert r.returncode == 2
    one_line(r, str(blocker))
    assert blocker.read_text() == "not a folder"


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def _losses(run: Path) -> list[str]:
    rows = (run / "log.csv").read_text().splitlines()[1:]
    return [r.split(",")[3] for r in rows]  # epoch, step, lr, train_loss


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"),
                                              (signal.SIGINT, 130, "SIGINT")])  # fmt: skip
def test_a_signal_mid_training_saves_a_step_and_resume_finishes_the_same_run(
    tmp_path, sig, code, name
):
    args = ["--epochs", "3", "--steps-per-epoch", "40", *QUICK]
    whole = tmp_path / "whole"
    assert biounet("train", "--out", str(whole), *args).returncode == 0
    run = tmp_path / "run"
    proc = start("train", "--out", str(run), *args)
    _wait_for(run / "config.json", proc)
    time.sleep(2.0)  # into the first epoch's steps
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == code
    line = one_line(proc, f"{run}: stopped by {name}", f"--resume {run}")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] * 40 + len(ckpt["epoch_losses"]) == ckpt["step"], line
    assert not [n for n in leftovers(run) if ".tmp" in n]
    r = biounet("train", "--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    # the stopped and resumed run is the run that was never stopped
    assert _losses(run) == _losses(whole)
    a = torch.load(run / "last.pt", weights_only=True)["model"]
    b = torch.load(whole / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_runs_into_one_folder(tmp_path):
    run = tmp_path / "run"
    first = start("train", "--out", str(run), "--epochs", "3", "--steps-per-epoch", "200",
                  *QUICK)  # fmt: skip
    _wait_for(run / "config.json", first)
    second = biounet("train", "--out", str(run), "--epochs", "1", *QUICK)
    assert second.returncode == 2
    one_line(second, str(run), "another biounet run", "is writing here")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 143


def test_sigterm_during_predict_removes_its_temp_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = start("predict", "models/isbi2012.pt", str(ISBI / "test-volume.tif"), "--out",
                 str(out / "p.tif"), "--tta", "--no-progress")  # fmt: skip
    end = time.monotonic() + 120
    while not any(".tmp" in n for n in leftovers(out)):  # the stack is being written
        assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    one_line(proc, "biounet: terminated")
    assert leftovers(out) == []


def test_reserve_writes_zeros_where_the_file_system_cannot_allocate(tmp_path, monkeypatch):
    import errno

    from biounet.io import reserve

    path = tmp_path / "f.bin"
    path.write_bytes(b"HEAD")
    os.truncate(path, 4 + 3 * 2**20)  # sparse, as a fresh memory-mapped stack
    assert os.stat(path).st_blocks * 512 < 2**20

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    reserve(path, 4, 3 * 2**20)
    assert os.stat(path).st_blocks * 512 >= 3 * 2**20  # allocated now
    data = np.fromfile(path, np.uint8)
    assert bytes(data[:4]) == b"HEAD" and not data[4:].any() and data.size == 4 + 3 * 2**20
