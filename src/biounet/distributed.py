"""Training on several processes: ``torchrun --nproc-per-node N -m biounet train ...``.

torchrun starts N copies of the command and tells each its place through the environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`join`
reads it and opens the process group: gloo on CPU, NCCL on CUDA with each rank on its
``LOCAL_RANK`` GPU. A process started without torchrun is a world of one, and nothing here
changes what it does.

Every collective the training loop makes goes through this module, so that a rank that
fails never leaves the others waiting: :func:`checked` shares each rank's bad-input error
with all ranks (all of them stop with the same line), and a rank that died is reported as
:class:`RankLost` once the others notice (at once when its socket closes, otherwise after
the group's timeout, ``BIOUNET_DIST_TIMEOUT`` seconds, default 1800).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import InputError, RankLost

log = logging.getLogger("biounet")

TIMEOUT_ENV = "BIOUNET_DIST_TIMEOUT"


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (a world of one without torchrun)."""

    rank: int = 0  # 0..size-1 over all nodes
    local_rank: int = 0  # on this node: which GPU
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: dict | None = None) -> World:
    """The world torchrun describes in ``env`` (default ``os.environ``); a world of one
    when ``WORLD_SIZE`` is unset or 1. InputError for values that do not fit together."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError(f"WORLD_SIZE {env.get('WORLD_SIZE')!r}, RANK {env.get('RANK')!r}, "
                         f"LOCAL_RANK {env.get('LOCAL_RANK')!r}: expected integers "
                         "(start the ranks with torchrun)") from None  # fmt: skip
    if size < 1 or not 0 <= rank < size or local < 0:
        raise InputError(f"RANK {rank} of WORLD_SIZE {size} (LOCAL_RANK {local}): expected "
                         f"0 <= RANK < WORLD_SIZE (start the ranks with torchrun)")  # fmt: skip
    return World(rank, local, size)


def timeout() -> timedelta:
    """How long a rank waits for the others at any collective (``BIOUNET_DIST_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        raise InputError(f"{TIMEOUT_ENV}={raw!r}: expected seconds") from None
    if not seconds > 0:
        raise InputError(f"{TIMEOUT_ENV}={raw!r}: expected seconds > 0")
    return timedelta(seconds=seconds)


def rank_device(world: World, name: str) -> str:
    """The device name a rank trains on: ``cuda:LOCAL_RANK`` where ``name`` asks for CUDA
    ("auto" with a GPU, "cuda", "cuda:K": under torchrun each rank takes its own), else
    ``name``. InputError if the node has no GPU numbered LOCAL_RANK."""
    if not world.distributed:
        return name
    wants_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return name
    n = torch.cuda.device_count()
    if world.local_rank >= n:
        raise InputError(f"rank {world.rank}: LOCAL_RANK {world.local_rank} needs GPU "
                         f"{world.local_rank}, this node has {n}; start at most {n} ranks "
                         f"per node (--nproc-per-node {max(n, 1)})")  # fmt: skip
    return f"cuda:{world.local_rank}"


def join(world: World, device: torch.device) -> bool:
    """Open the process group of ``world`` for ``device`` (NCCL for CUDA, gloo otherwise)
    unless it is a world of one or the group is open already; whether this call opened it
    (then :func:`leave` closes it). RankLost if the other ranks do not all arrive within
    the timeout."""
    if not world.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    wait = timeout()
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=wait,
                                **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, TimeoutError) as e:  # DistError and the store's timeouts
        raise RankLost(f"rank {world.rank}: the {world.size} ranks did not all join within "
                       f"{wait.total_seconds():g} s ({_first_line(e)})") from None
    log.info("rank %d of %d (%s, %s)", world.rank, world.size, backend, device)
    return True


def leave(opened: bool) -> None:
    """Close the process group if :func:`join` opened it."""
    if opened and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@contextmanager
def lost_ranks(world: World):
    """Turn the error a collective raises when another rank is gone into one RankLost line."""
    try:
        yield
    except RuntimeError as e:
        if not world.distributed or isinstance(e, RankLost) or not _is_comm_error(e):
            raise
        raise RankLost(f"rank {world.rank}: another rank stopped or stopped answering "
                       f"({_first_line(e)}); its own output says why") from None  # fmt: skip


def _is_comm_error(e: RuntimeError) -> bool:
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return any(s in text for s in ("gloo", "nccl", "connection", "timed out", "timeout"))


@contextmanager
def checked(world: World):
    """Run the body on every rank, then let each rank know whether any failed: a rank whose
    body raised InputError, ValueError or OSError (bad input, unreadable files) re-raises
    it; the others raise InputError ``"rank R: <its message>"`` with the first failing
    rank's message, so that bad input on one rank ends every rank with the same line
    instead of leaving them waiting."""
    if not world.distributed:
        yield
        return
    error: Exception | None = None
    try:
        yield
    except (InputError, ValueError, OSError) as e:
        error = e
    failures = gather(world, None if error is None else str(error))
    if error is not None:
        raise error
    for rank, message in enumerate(failures):
        if message is not None:
            raise InputError(f"rank {rank}: {message}")


def gather(world: World, obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    with lost_ranks(world):
        dist.all_gather_object(out, obj)
    return out


def broadcast(world: World, obj):
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    with lost_ranks(world):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(world: World, value: float) -> float:
    """The mean of ``value`` over the ranks."""
    if not world.distributed:
        return value
    return sum(gather(world, float(value))) / world.size


def barrier(world: World) -> None:
    if world.distributed:
        with lost_ranks(world):
            dist.barrier()


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: ``model`` itself in a world of one, else a
    DistributedDataParallel around it, whose backward averages the gradients over the
    ranks (the weights stay identical on all). Batch norm becomes SyncBatchNorm on CUDA;
    on CPU, where PyTorch's SyncBatchNorm does not run, each rank normalises by its own
    batch and the running statistics follow rank 0's."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif has_bn and world.main:
        log.info("batch norm on CPU ranks: per rank (SyncBatchNorm needs CUDA); the running "
                 "statistics follow rank 0's batches")  # fmt: skip
    ids = [device.index] if device.type == "cuda" else None
    with lost_ranks(world):
        return DistributedDataParallel(model, device_ids=ids)
