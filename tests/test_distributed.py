"""Training on several processes: 2 gloo ranks on CPU, through the package's own step and
through torchrun; the run directory's lock; failing ranks end the run in one line."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.multiprocessing as mp
from conftest import refusal, tiny_config

from biounet import distributed
from biounet.config import Preset, TrainConfig
from biounet.distributed import World, rank_device, world_from_env
from biounet.errors import InputError
from biounet.io import RunLock, remove_stale_temps
from biounet.train import build_learner, seed_epoch, train_step

PAPER_TINY = tiny_config("valid")
STEPS = 3
B = 2  # batch per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(seed: int = 0):
    """STEPS fixed global batches of 2 * B tiles: x (2B, 1, 60, 60), y (2B, 20, 20)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2 * B, 1, 60, 60, generator=g),
             torch.randint(0, 2, (2 * B, 20, 20), generator=g)) for _ in range(STEPS)]  # fmt: skip


def _learner(world: World):
    preset = Preset("t", "", PAPER_TINY, TrainConfig(optimizer="sgd", lr=0.1, precision="fp32"))
    gen = torch.Generator().manual_seed(3)
    return build_learner(preset, torch.device("cpu"), "fp32", gen, None, None, world), preset.train


def _rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")  # fmt: skip
    torch.set_num_threads(1)
    world = world_from_env()
    opened = distributed.join(world, torch.device("cpu"))
    try:
        learner, cfg = _learner(world)
        for x, y in _batches():
            half = slice(rank * B, (rank + 1) * B)  # each rank its half of the global batch
            train_step(learner, x[half], y[half], None, cfg, lr=0.1)
        torch.save(learner.model.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.leave(opened)


@pytest.mark.slow
def test_two_ranks_stay_identical_and_take_the_step_of_one_process_of_twice_the_batch(tmp_path):
    mp.spawn(_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    learner, cfg = _learner(World())
    start = {k: v.clone() for k, v in learner.model.state_dict().items()}
    for x, y in _batches():
        train_step(learner, x, y, None, cfg, lr=0.1)
    single = learner.model.state_dict()
    moved = 0.0
    for k, v in single.items():
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # the same weights on every rank
        # the same update as one process of batch 2B: DDP averages the two halves' gradients
        # (the mean loss of each half); only the summation order differs, tolerance 1e-5
        torch.testing.assert_close(ranks[0][k], v, rtol=0, atol=1e-5)
        moved = max(moved, float((v - start[k]).abs().max()))
    assert moved > 1e-3  # the steps did change the weights


def test_each_rank_draws_its_own_seeded_stream():
    class Sampler:
        rng = None

    def draws(epoch, rank):
        s, g = Sampler(), torch.Generator()
        seed_epoch(0, epoch, rank, s, g)
        return s.rng.integers(0, 10**9, 4).tolist(), torch.rand(4, generator=g).tolist()

    assert draws(2, 0) == draws(2, 0)  # reproducible: resumed at epoch 2, the same stream
    assert draws(2, 0) != draws(2, 1)  # ranks differ
    assert draws(2, 0) != draws(3, 0)  # epochs differ
    a, b = draws(2, 0)[1], draws(2, 1)[1]
    assert a != b


def test_the_environment_of_torchrun_is_read_and_checked():
    assert world_from_env({}) == World(0, 0, 1)
    w = world_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (w.rank, w.local_rank, w.size, w.main, w.distributed) == (3, 1, 4, False, True)
    with pytest.raises(InputError, match="expected 0 <= RANK < WORLD_SIZE"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="expected integers"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_a_rank_without_its_gpu_is_named():
    n = torch.cuda.device_count()
    with pytest.raises(InputError, match=rf"rank 5: LOCAL_RANK {n} needs GPU {n}, this node has"):
        rank_device(World(5, n, 8), "cuda")
    assert rank_device(World(1, 1, 2), "cpu") == "cpu"
    assert rank_device(World(), "cuda:3") == "cuda:3"  # one process: as asked


# ---------------------------------------------------------------------------------------
# torchrun end to end, and ranks that fail


def _tiny_data(folder: Path) -> tuple[str, str]:
    """Six 64 x 64 gray images of bright disks and their 0/255 masks, as TIFF stacks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    masks = np.zeros((6, 64, 64), np.uint8)
    for i in range(6):
        for cy, cx in rng.integers(10, 54, (3, 2)):
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = 255
    images = (masks // 2 + rng.integers(0, 60, masks.shape)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "img.tif", images)
    tifffile.imwrite(folder / "lab.tif", masks)
    return str(folder / "img.tif"), str(folder / "lab.tif")


def _train_args(img: str, lab: str, out: Path) -> list[str]:
    return ["train", "--preset", "fast", "--images", img, "--labels", lab, "--val-slices", "5",
            "--tile", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2",
            "--out", str(out), "--no-progress", "--precision", "fp32"]  # fmt: skip


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow
def test_torchrun_trains_on_two_ranks_and_the_run_resumes_on_one(tmp_path, capsys):
    from biounet.cli import main

    img, lab = _tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), "-m", "biounet", *_train_args(img, lab, run)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["world_size"] == 2 and config["train"]["batch_size"] == 2
    assert done.stdout.count("run ") == 1  # rank 0 alone reports
    assert "2 ranks: batch 2 per rank, global batch 4" in done.stderr
    assert main(["info", str(run / "last.pt")]) == 0
    assert "ranks        2 (torchrun), global batch 4" in capsys.readouterr().out
    resumed = subprocess.run([sys.executable, "-m", "biounet", "train", "--resume", str(run),
                              "--epochs", "2", "--no-progress"], capture_output=True, text=True,
                             env=_env(), timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4
    assert json.loads((run / "config.json").read_text())["train"]["world_size"] == 1


def _rank(rank: int, port: int, args: list[str], **env) -> subprocess.Popen:
    e = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
             LOCAL_RANK=str(rank), WORLD_SIZE="2", **env)  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "biounet", *args], env=e, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


@pytest.mark.slow
def test_bad_input_on_one_rank_ends_every_rank_with_one_line(tmp_path):
    img, lab = _tiny_data(tmp_path / "data")
    port = _free_port()
    good = _rank(0, port, _train_args(img, lab, tmp_path / "run"))
    bad = _rank(1, port, _train_args(str(tmp_path / "missing.tif"), lab, tmp_path / "run"))
    outs = [p.communicate(timeout=120) for p in (good, bad)]
    assert (good.returncode, bad.returncode) == (2, 2)
    errors = [[line for line in err.splitlines() if "error" in line] for _, err in outs]
    assert len(errors[0]) == 1 and errors[0][0].startswith("biounet: error: rank 1: ")
    assert "missing.tif" in errors[0][0] and "Traceback" not in outs[0][1]
    assert len(errors[1]) == 1 and "missing.tif" in errors[1][0]
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_a_rank_that_never_comes_ends_the_run_after_the_timeout(tmp_path):
    img, lab = _tiny_data(tmp_path / "data")
    alone = _rank(0, _free_port(), _train_args(img, lab, tmp_path / "run"),
                  BIOUNET_DIST_TIMEOUT="3")  # fmt: skip
    _, err = alone.communicate(timeout=120)
    assert alone.returncode == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("biounet: error: rank 0: the 2 ranks did not all join within 3 s")
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------
# one writer per run directory


def test_a_held_run_directory_refuses_a_second_writer(tmp_path):
    held = rf"pid {os.getpid()} on .* is writing here; wait for it"
    with RunLock(tmp_path), pytest.raises(InputError, match=held), RunLock(tmp_path):
        pass
    with RunLock(tmp_path):  # released on exit: free again
        pass


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    code = ("import sys, time; from biounet.io import RunLock; RunLock(sys.argv[1]).__enter__();"
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], text=True,
                              stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"pid {holder.pid} "):
            RunLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the killed holder's lock is free
        assert f"pid {os.getpid()} " in (tmp_path / ".lock").read_text()


@pytest.mark.slow
def test_a_second_train_into_a_run_in_use_refuses_in_one_line(tmp_path, capsys):
    img, lab = _tiny_data(tmp_path / "data")
    with RunLock(tmp_path / "run"):
        err = refusal(_train_args(img, lab, tmp_path / "run"), capsys)
    assert err.startswith(f"biounet: error: {tmp_path / 'run'}: another biounet run (pid ")
    assert not (tmp_path / "run" / "config.json").exists()


def test_temp_files_of_a_killed_write_go_with_the_next_write(tmp_path):
    from biounet.checkpoint import save_checkpoint

    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that has ended
    stale = tmp_path / f".last.pt.{host}~{dead.pid}~x1y2.tmp.pt"
    live = tmp_path / f".last.pt.{host}~{os.getpid()}~a1b2.tmp.pt"  # a write in progress
    other = tmp_path / f".last.pt.elsewhere~{dead.pid}~c3d4.tmp.pt"  # another host's
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    save_checkpoint(tmp_path / "last.pt", {"model": {}, "preset": {}})
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "last.pt") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", live.name,
                                                                 other.name])  # fmt: skip
