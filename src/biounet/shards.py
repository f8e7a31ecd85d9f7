"""Which of its inputs one predict job takes: ``--shard K/N`` (every N-th from the K-th,
e.g. a job array's task), torchrun's RANK / WORLD_SIZE, less the inputs whose outputs
exist with ``--skip-existing``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .distributed import world_from_env
from .errors import InputError

log = logging.getLogger("biounet")


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"K/N"`` (or (K, N)) -> (K, N): every N-th input from the K-th, 0 <= K < N; one-line
    InputError for anything else."""
    if isinstance(spec, tuple):
        k, n = spec
    else:
        k_text, slash, n_text = str(spec).strip().partition("/")
        try:
            k, n = int(k_text), int(n_text)
        except ValueError:
            k = n = None
        if not slash or k is None:
            raise InputError(f"--shard {spec!r}: expected K/N, e.g. 0/4 (the K-th of N shards, "
                             "counting from 0)")  # fmt: skip
    if n < 1:
        raise InputError(f"--shard {k}/{n}: N must be at least 1")
    if not 0 <= k < n:
        raise InputError(f"--shard {k}/{n}: K must be in 0..{n - 1}")
    return k, n


def shard_of_environment(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) of a process that torchrun started several of, else None."""
    world = world_from_env(environ)
    return (world.rank, world.size) if world.distributed else None


def shard_groups(groups: list, shard: tuple[int, int] | None, skip_existing: bool,
          outputs_of: Callable[[Path], dict[str, Path]]) -> list:  # fmt: skip
    """The (output path, members) ``groups`` this run writes: its shard's, less those whose
    outputs all exist with ``skip_existing``; says so in log lines."""
    total = len(groups)
    if shard is not None:
        k, n = shard
        groups = groups[k::n]
        if not groups:
            log.info("shard %d/%d: no images to predict (%d in all)", k, n, total)
            return []
        log.info("shard %d/%d: %d of %d images", k, n, len(groups), total)
    if skip_existing:
        todo = [g for g in groups if not all(p.exists() for p in outputs_of(g[0]).values())]
        if len(todo) < len(groups):
            log.info("skipped %d of %d images whose outputs exist", len(groups) - len(todo),
                     len(groups))  # fmt: skip
        groups = todo
    return groups
