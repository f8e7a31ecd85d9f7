"""The training loop: :func:`train`, one plain function with numbered steps (configure,
device and random number generators, data, network, epochs), each a named helper below.
The data (files, class maps, splits, tiles) come from :mod:`biounet.dataset`, the
per-batch targets from :mod:`biounet.targets`.

A run directory holds ``config.json`` (the exact preset it ran with), ``log.csv`` (one row
per epoch), ``last.pt`` and ``best.pt`` (written atomically at the end of every epoch),
``curves.png`` and ``val.png``. ``train(..., resume=True)`` continues from ``last.pt``
with model, optimiser, step, history and every RNG state restored, so a resumed run
reproduces the uninterrupted one; an interrupted run loses at most the current epoch.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import math
import shutil
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, metrics
from .augment import augment
from .checkpoint import inference_weights, load_checkpoint, save_checkpoint
from .config import HIGHER_IS_BETTER, Preset, TrainConfig
from .dataset import Data, TileSampler, load_data, make_sampler
from .device import autocast, memory_format, resolve_precision, select_device
from .distributed import (
    World,
    barrier,
    broadcast,
    checked,
    join,
    leave,
    lost_ranks,
    rank_device,
    world_from_env,
)
from .errors import InputError, Stopped, TrainingDiverged
from .instances import equivalent_diameters
from .io import RunLock, write_text
from .labels import IGNORE_INDEX
from .losses import segmentation_loss
from .metrics.pixel import class_scores_many
from .model import UNet, count_parameters, output_size
from .plots import plot_curves, plot_panels
from .presets import with_classes
from .targets import NUM_CLASSES
from .tiling import predict

log = logging.getLogger("biounet")


LOG_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "val_loss", "val_pixel_error", "v_rand", "v_info",
    "seconds",
)  # fmt: skip
CLASS_COLUMNS = ("val_mean_iou",)  # in log.csv only for runs of more than 2 mask classes


def learning_rate(
    cfg: TrainConfig, step: int, steps_per_epoch: int, epochs: int | None = None
) -> float:
    """Learning rate for optimiser step ``step`` (0-based): warm-up, then the schedule.

    step: lr * gamma ** (completed epochs // step_epochs); cosine: half a cosine from lr to
    0 over all steps; poly: lr * (1 - progress) ** 0.9 (nnU-Net); constant: lr. ``epochs``:
    the run's planned length (default ``cfg.epochs``; shorter under a time limit).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    total = (epochs or cfg.epochs) * steps_per_epoch
    progress = min(1.0, step / max(1, total))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "poly":
        return cfg.lr * (1.0 - progress) ** 0.9
    return cfg.lr


def plan_epochs(
    cfg: TrainConfig, history: list[dict], epoch: int, seconds: float, planned: int | None = None
) -> int:
    """How many epochs the run trains in all: ``cfg.epochs``, or under ``cfg.time_limit``
    as many as fit, judged after ``epoch`` epochs whose last one has trained for
    ``seconds`` so far (``history`` holds the earlier ones). Never fewer than ``epoch``.
    A run that has reached its ``planned`` last epoch stays ended: its learning-rate
    schedule is over, and a faster last epoch does not add one at a rate of zero.

    An epoch is expected to take the mean of the finished ones, leaving out the first
    (start-up costs) once there are two; before that, the current epoch's time.
    """
    if cfg.time_limit <= 0:
        return cfg.epochs
    if planned is not None and epoch >= planned:
        return planned
    times = [h["seconds"] for h in history]
    per_epoch = float(np.mean(times[1:] or times)) if times else seconds
    left = cfg.time_limit * 60.0 - sum(times) - seconds
    return max(epoch, min(cfg.epochs, epoch + int(left // max(per_epoch, 1e-9))))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW, from the config."""
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


def validate(
    model: UNet, data: Data, precision: str, isbi: bool = True
) -> tuple[dict, list[np.ndarray]]:
    """Predictions of the validation images: loss, pixel error, IoU, Dice and, if ``isbi``,
    the ISBI 2012 V_rand and V_info (thinned, maximal over thresholds 0, 0.1, ..., 1), of
    the foreground (every class but 0) against class 0; for masks of more than 2 classes
    also ``val_mean_iou``, the mean IoU of classes 1..C-1 (argmax, pooled over the images).
    Pixels that are not labelled (IGNORE_INDEX) are left out of every score (V_rand and
    V_info: counted as reference background, which their foreground-restricted tables
    leave out)."""
    probs = [predict(model, img, precision=precision) for img in data.val_images]
    masks = data.val_masks
    scores = {}
    if probs and probs[0].ndim == 3 and data.train_instances is None and data.num_classes > 2:
        classes = [p.argmax(0).astype(np.uint8) for p in probs]
        mean_iou = class_scores_many(classes, masks, num_classes=data.num_classes,
                                     ignore=IGNORE_INDEX)["mean_iou"]  # fmt: skip
        scores["val_mean_iou"] = mean_iou
    if probs and probs[0].ndim == 3:  # more than 2 classes: foreground (not 0) vs class 0
        probs = [1.0 - p[0] for p in probs]
        masks = [np.where(m == IGNORE_INDEX, m, m != 0).astype(np.uint8) for m in masks]
    pairs = [_labelled(p, m) for p, m in zip(probs, masks, strict=True)]
    if isbi:  # not labelled: reference background
        masks = [np.where(m == IGNORE_INDEX, 0, m).astype(np.uint8) for m in masks]
    scores.update({
        "val_loss": np.mean([metrics.binary_cross_entropy(p, m) for p, m in pairs]),
        "val_pixel_error": np.mean([metrics.pixel_error(p, m) for p, m in pairs]),
        "val_iou": np.mean([metrics.iou(p > 0.5, m) for p, m in pairs]),
        "val_dice": np.mean([metrics.dice(p > 0.5, m) for p, m in pairs]),
    })  # fmt: skip
    if isbi:
        r = metrics.isbi_scores(probs, masks, metrics=("v_rand", "v_info"))
        scores.update(v_rand=r["v_rand"], v_info=r["v_info"])
    return {k: float(v) for k, v in scores.items()}, probs


def _labelled(prob: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prob, mask) at the labelled pixels only (1-D) where ``mask`` holds IGNORE_INDEX;
    as they are otherwise."""
    keep = mask != IGNORE_INDEX
    return (prob, mask) if keep.all() else (prob[keep], mask[keep])


def selection_score(row: dict, select_by: str) -> float | None:
    """The value best.pt minimises (negated where higher is better); None if the row lacks
    it (not validated, or ISBI metrics not computed this epoch). "last": the latest epoch."""
    if select_by == "last":
        return -float(row["epoch"])
    v = row.get(select_by)
    if v is None:
        return None
    return -v if select_by in HIGHER_IS_BETTER else v


def ema_decay(decay: float, n: int) -> float:
    """The decay of the ``n``-th average update: ``min(decay, (1 + n) / (10 + n))``. The
    warm-up keeps a short run's average from being anchored to its first, untrained
    weights: with a fixed 0.999, 0.999^960 = 38% of a 960-step run's average would be its
    first step's weights; with the warm-up the average spans about the last tenth of the
    steps until the fixed decay takes over (n >= 8990 for 0.999)."""
    return min(decay, (1 + n) / (10 + n))


def make_ema(model: torch.nn.Module, decay: float):
    """An exponential moving average of ``model``'s weights and batch-norm statistics (a
    ``torch.optim.swa_utils.AveragedModel``), its ``update_parameters(model)`` called after
    every optimiser step with :func:`ema_decay` (None when ``decay`` is 0)."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        d = ema_decay(decay, int(n_averaged))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (batch norm's batch counter): follow the model
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def _rng_state(np_rng: np.random.Generator, gen: torch.Generator) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "generator": gen.get_state(),
        "numpy": np_rng.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, np_rng: np.random.Generator, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    np_rng.bit_generator.state = state["numpy"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_log(path: Path, history: list[dict]) -> None:
    columns = LOG_COLUMNS
    if any(k in row for row in history for k in CLASS_COLUMNS):
        columns = (*LOG_COLUMNS[:-1], *CLASS_COLUMNS, LOG_COLUMNS[-1])
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    write_text(path, buf.getvalue())


def check_tile(preset: Preset) -> int:
    """Output tile edge for the preset's input tile; InputError naming valid sizes."""
    m, tile = preset.model, preset.train.tile
    try:
        return output_size(tile, m.depth, m.padding)
    except ValueError as e:
        raise InputError(f"--tile {tile}: {e}") from None


@dataclass
class Learner:
    """What trains: the network, its optimiser and weight average (None without one),
    where and how it runs (device, precision, the memory layout of its inputs) and, under
    torchrun, the DistributedDataParallel wrapper that the training step calls."""

    model: UNet
    optimizer: torch.optim.Optimizer
    ema: torch.nn.Module | None
    device: torch.device
    precision: str
    layout: torch.memory_format
    net: torch.nn.Module | None = None  # what the training step calls (default: model)


@dataclass
class RunState:
    """What a run has done, all of it kept in last.pt: epochs in all (``plan``, a time
    limit may plan fewer than ``cfg.epochs``), epochs and optimiser steps done, the best
    selection score so far (:func:`selection_score`) and one log row per epoch."""

    plan: int
    epoch: int = 0
    step: int = 0
    best: float = math.inf
    history: list[dict] = field(default_factory=list)
    # the epoch under way when a signal stopped the run: its steps' losses and seconds
    # (a run resumes from the step after them)
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seconds: float = 0.0


class StopRequest:
    """SIGTERM and SIGINT while a run trains (in the main thread, one process): noted, and
    acted on at the next step boundary (:func:`_train_epoch`), where the run saves last.pt
    and ends with :class:`Stopped`. Elsewhere, and after the run, the handlers before it."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.saved: dict = {}

    def __enter__(self) -> StopRequest:
        if self.enabled:
            for s in self.SIGNALS:
                self.saved[s] = signal.signal(s, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)


def object_diameter(labels: list[np.ndarray]) -> float:
    """The median equivalent diameter (pixels) of the objects of instance images; 0 for
    none."""
    found = np.concatenate([equivalent_diameters(a) for a in labels])
    return round(float(np.median(found)), 2) if found.size else 0.0


def train(
    preset: Preset | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    epochs: int | None = None,
    device: str | None = None,
    time_limit: float | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Train ``preset`` into ``out_dir``; return the summary of the best epoch.

    Args:
        preset: the configuration (model + training). When resuming it may be None: the
            run's own ``config.json`` settings are used.
        out_dir: the run directory (created).
        resume: continue the run in ``out_dir`` from its ``last.pt``.
        epochs, device, time_limit: override the configuration's (also when resuming, e.g.
            to extend a finished run, to lift its time limit or to move it to another
            device).
        stop_after: stop after this many epochs in this call (the run stays resumable).
        progress: show a progress bar per epoch.

    Under torchrun every rank calls this (:mod:`biounet.distributed`): the network is
    wrapped in DistributedDataParallel, each rank draws its own tiles, rank 0 plans the
    epochs and alone validates and writes the run directory. A run resumes with any
    number of ranks.
    """
    out = Path(out_dir)
    world = world_from_env()
    dev = select_device(rank_device(world, _device_name(preset, out, resume, device)))
    fresh = not resume and not out.exists()  # a folder this call makes: removed if it fails
    opened = join(world, dev)
    try:
        with lost_ranks(world), ExitStack() as held:
            stop = held.enter_context(StopRequest(enabled=not world.distributed))
            return _train(world, dev, held, preset, out, resume, epochs, device, time_limit,
                          stop_after, progress, stop)  # fmt: skip
    except BaseException:
        if fresh and world.main and not (out / "last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing to resume: leave no folder
        raise
    finally:
        leave(opened)


def _device_name(preset: Preset | None, out: Path, resume: bool, device: str | None) -> str:
    """The device the run asks for, known before its checkpoint is read: the call's, a
    resumed run's own (config.json) or the preset's."""
    if device:
        return device
    if resume:
        try:
            return json.loads((out / "config.json").read_text())["train"]["device"]
        except (OSError, ValueError, KeyError, TypeError):
            return "auto"  # _configure says what is wrong with the run directory
    return preset.train.device if preset is not None else "auto"


def _train(
    world: World,
    dev: torch.device,
    held: ExitStack,
    preset: Preset | None,
    out: Path,
    resume: bool,
    epochs: int | None,
    device: str | None,
    time_limit: float | None,
    stop_after: int | None,
    progress: bool,
    stop: StopRequest,
) -> dict:
    """:func:`train`'s steps on one rank (``held`` keeps the run directory's lock)."""
    # 1. Configuration, checked: a new run's preset, or a resumed run's own and last.pt.
    # Bad input on any rank stops every rank with its line (distributed.checked).
    with checked(world):
        preset, ckpt, out_tile = _configure(preset, out, resume, epochs, device, time_limit)
    cfg = preset.train

    # 2. Device, precision and the run's random number generators (under torchrun each
    # rank's tiles, augmentation and dropout are reseeded per epoch: seed_epoch).
    if not world.distributed:
        dev = select_device(cfg.device)
    precision = resolve_precision(cfg.precision, dev)
    torch.manual_seed(cfg.seed)  # dropout
    np_rng = np.random.default_rng(cfg.seed)  # tile positions
    gen = torch.Generator().manual_seed(cfg.seed)  # initial weights, augmentation

    # 3. Data: read, made into class maps and split (the network grows to the classes
    # found, the held-out images are stored as chosen); then the run directory (locked:
    # one writer), the sampler.
    with checked(world):
        data = load_data(cfg, _classes(preset), preset.model.normalization)
        if ckpt is not None and data.in_channels != preset.model.in_channels:
            where = cfg.images or "the bundled images"
            raise InputError(f"{where}: {data.in_channels} channels; the run in {out} takes "
                             f"{preset.model.in_channels}")  # fmt: skip
        preset = with_classes(preset, data.num_classes).with_train(val_slices=data.val_slices,
                                                                   world_size=world.size)
        # the size of the objects it learns instances of: predict --diameter rescales to it
        diameter = object_diameter(data.train_instances) if data.train_instances else 0.0
        preset = replace(preset, model=replace(preset.model, in_channels=data.in_channels,
                                               diameter=diameter))  # fmt: skip
        cfg = preset.train
        init = _init_weights(preset, data) if ckpt is None and cfg.init else None
        select_by = _selection_rule(cfg, data)
        writer = _summary_writer() if cfg.tensorboard and world.main else None
        if world.main:  # only once the data is known to be good
            held.enter_context(RunLock(out))
            if ckpt is None and (out / "last.pt").exists():  # written while this one read
                raise InputError(f"{out}: already holds a run; use --resume {out} or another "
                                 "--out")  # fmt: skip
            write_text(out / "config.json", json.dumps(preset.to_dict(), indent=2) + "\n")
    sampler = None
    if world.main:  # rank 0 first: it caches the weight maps the others then read
        sampler = make_sampler(cfg, data, out_tile, np_rng, cache=out)
    barrier(world)
    if sampler is None:
        sampler = make_sampler(cfg, data, out_tile, np_rng, cache=out)
    steps = cfg.steps_per_epoch or math.ceil(len(data.train_images) /
                                             (cfg.batch_size * world.size))  # fmt: skip

    # 4. Network, optimiser, weight average and the run's state (restored when resuming).
    learner = build_learner(preset, dev, precision, gen, ckpt, init, world)
    if ckpt is None:
        state = RunState(plan=cfg.epochs)
    else:
        state = _restore(ckpt, cfg, out, np_rng, gen, epochs, time_limit)
    if world.main:
        _announce(preset, learner, data, out_tile, steps, world)
    board = None if writer is None else writer(str(out / "tensorboard"))
    if board is not None:
        held.callback(board.close)

    # 5. Epochs: train, plan again under a time limit, validate, checkpoint, log. Under
    # torchrun rank 0 plans, validates and writes; every rank keeps the same history.
    done = 0  # epochs in this call
    while state.epoch < state.plan and (stop_after is None or done < stop_after):
        if world.distributed:
            seed_epoch(cfg.seed, state.epoch, world.rank, sampler, gen)
        t0 = time.perf_counter() - state.epoch_seconds  # a stopped epoch's time goes on
        train_loss, lr = _train_epoch(learner, sampler, gen, cfg, state, steps, out_tile,
                                      out, progress and world.main, stop)  # fmt: skip
        if stop.signum is not None and len(state.epoch_losses) < steps:  # at a step boundary
            _stopped(out, preset, learner, state, np_rng, gen, stop.signum, t0)
        train_loss = distributed.mean(world, train_loss)
        state.epoch += 1
        state.epoch_losses, state.epoch_seconds = [], 0.0
        done += 1
        planned = state.plan
        plan = plan_epochs(cfg, state.history, state.epoch, time.perf_counter() - t0, planned)
        state.plan = broadcast(world, plan)  # rank 0's, so that no rank stops alone
        if state.plan != planned and world.main:
            log.info("time limit %g min: %d epochs fit", cfg.time_limit, state.plan)
        row = {"epoch": state.epoch, "step": state.step, "lr": lr, "train_loss": train_loss}
        scores, probs = _validate_if_due(learner, data, cfg, state) if world.main else ({}, None)
        row.update(scores)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row = broadcast(world, row)
        is_best = _record(state, row, select_by)
        if world.main:
            _checkpoint(out, preset, learner, state, np_rng, gen, is_best)
            _log_epoch(out, state, data, probs, is_best, board)
        if stop.signum is not None and state.epoch < state.plan:  # after a whole epoch
            raise Stopped(f"{out}: stopped by {signal.Signals(stop.signum).name} after epoch "
                          f"{state.epoch}; biounet train --resume {out} goes on from there",
                          stop.signum)  # fmt: skip
    return summary(state.history, select_by)


def seed_epoch(
    seed: int, epoch: int, rank: int, sampler: TileSampler, gen: torch.Generator
) -> None:
    """Under torchrun: rank ``rank``'s tile positions, augmentation and dropout in epoch
    ``epoch`` (0-based) come from streams seeded by (seed, epoch, rank), so the ranks draw
    different tiles and a run resumed with as many ranks draws what the uninterrupted run
    drew."""
    seq = np.random.SeedSequence([seed, epoch, rank])
    sampler.rng = np.random.default_rng(seq)
    a, b = (int(v) for v in seq.spawn(1)[0].generate_state(2, np.uint64) >> np.uint64(1))
    gen.manual_seed(a)
    torch.manual_seed(b)


def _summary_writer():
    """TensorBoard's SummaryWriter class; InputError naming the extra without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--tensorboard needs the tensorboard package: pip install "
                         "'biounet[tensorboard]'") from None  # fmt: skip
    return SummaryWriter


def _configure(
    preset: Preset | None,
    out: Path,
    resume: bool,
    epochs: int | None,
    device: str | None,
    time_limit: float | None,
) -> tuple[Preset, dict | None, int]:
    """(preset with the call's overrides, the checkpoint to resume or None, output tile
    edge): a resumed run's preset comes from its last.pt. InputError for a run directory
    that holds a run (new run) or none (resume), a tile the network cannot take, or a
    network whose outputs do not fit the target."""
    ckpt = None
    if resume:
        if not (out / "last.pt").is_file():
            raise InputError(f"{out}: no last.pt to resume from")
        ckpt = load_checkpoint(out / "last.pt")
        preset = Preset.from_dict(ckpt["preset"])
    elif preset is None:
        raise ValueError("train() needs a preset for a new run")
    elif (out / "last.pt").exists():
        raise InputError(f"{out}: already holds a run; use --resume {out} or another --out")
    preset = preset.with_train(epochs=epochs, device=device, time_limit=time_limit)
    out_tile = check_tile(preset)
    cfg, outputs = preset.train, preset.model.out_channels
    if cfg.target != "mask" and max(2, outputs) != NUM_CLASSES[cfg.target]:
        raise InputError(f"target {cfg.target!r} needs a network with {NUM_CLASSES[cfg.target]} "
                         f"outputs, this one has {outputs}")  # fmt: skip
    return preset, ckpt, out_tile


def _classes(preset: Preset) -> int | None:
    """The classes the masks may hold: ``classes`` or the target's; None for the mask
    target without ``classes`` (found from the masks, :func:`biounet.dataset.load_data`)."""
    cfg = preset.train
    if cfg.target == "mask":
        return cfg.classes
    return max(2, preset.model.out_channels)


def _init_weights(preset: Preset, data: Data) -> dict:
    """The state_dict a fine-tuning run starts from: ``preset.train.init``'s weights (its
    averaged weights where it kept them), without the output layer where its class count
    differs (a notice says so). InputError naming the file if it is not a biounet model,
    takes another number of input channels than the images have, or is another network."""
    path = preset.train.init
    ckpt = load_checkpoint(path)
    weights = dict(inference_weights(ckpt))
    theirs = Preset.from_dict(ckpt["preset"]).model
    mine = preset.model
    if theirs.in_channels != data.in_channels:
        raise InputError(f"{path}: the model takes {theirs.in_channels} input channels, the "
                         f"images have {data.in_channels}")  # fmt: skip
    if theirs.out_channels != mine.out_channels:
        log.info("%s: the model has %d outputs, this run %d: its output layer starts afresh",
                 path, theirs.out_channels, mine.out_channels)  # fmt: skip
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    with torch.device("meta"):  # shapes only: no memory, no draw from the RNGs
        expected = UNet(mine).state_dict()
    for k, v in expected.items():
        if k.startswith("head.") and theirs.out_channels != mine.out_channels:
            continue
        if k not in weights or tuple(weights[k].shape) != tuple(v.shape):
            got = tuple(weights[k].shape) if k in weights else "nothing"
            raise InputError(f"{path}: another network than this run's ({k}: {got}, this run "
                             f"needs {tuple(v.shape)})")  # fmt: skip
    log.info("starting from the weights of %s", path)
    return weights


def _selection_rule(cfg: TrainConfig, data: Data) -> str:
    """What best.pt is chosen by: ``cfg.select_by``, or the training loss where nothing
    is validated. InputError if it needs ISBI metrics that are never computed."""
    validating = bool(data.val_images) and cfg.val_every > 0
    select_by = cfg.select_by if validating or cfg.select_by == "last" else "train_loss"
    if select_by in HIGHER_IS_BETTER and cfg.isbi_every == 0:
        raise InputError(f"select_by {select_by} needs the ISBI metrics: set isbi_every >= 1")
    return select_by


def build_learner(
    preset: Preset,
    device: torch.device,
    precision: str,
    gen: torch.Generator,
    ckpt: dict | None,
    init: dict | None = None,
    world: World | None = None,
) -> Learner:
    """The :class:`Learner` that :func:`train_step` steps: the network initialised from
    ``gen`` in the layout for ``device`` and ``precision``, its optimiser and weight
    average; weights, average and optimiser state restored from ``ckpt`` if given.
    ``init``: a (partial) state_dict loaded over the random initialisation, e.g. a model to
    fine-tune (:func:`_init_weights`). Under torchrun (``world``) the training step calls
    it through DistributedDataParallel (:func:`biounet.distributed.wrap`)."""
    cfg = preset.train
    model = UNet(preset.model)
    model.reset_parameters(generator=gen)
    if init is not None:
        model.load_state_dict(init, strict=False)
    layout = memory_format(device, precision)
    model = model.to(device).to(memory_format=layout)
    optimizer = make_optimizer(model, cfg)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    ema = make_ema(model, cfg.ema)  # the weights that validate and predict, if configured
    if ckpt is not None:
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
    net = distributed.wrap(model, world or World(), device)
    return Learner(model, optimizer, ema, device, precision, layout, net)


def _restore(
    ckpt: dict,
    cfg: TrainConfig,
    out: Path,
    np_rng: np.random.Generator,
    gen: torch.Generator,
    epochs: int | None,
    time_limit: float | None,
) -> RunState:
    """The interrupted run's state and RNG states from ``ckpt``. Its plan is kept, or made
    again from the time already spent when the call gives new ``epochs`` or
    ``time_limit``; InputError if more epochs are asked for than the time limit leaves."""
    state = RunState(cfg.epochs, ckpt["epoch"], ckpt["step"], ckpt["best"], ckpt["history"],
                     list(ckpt.get("epoch_losses", [])), ckpt.get("epoch_seconds", 0.0))
    _set_rng_state(ckpt["rng"], np_rng, gen)
    if epochs is None and time_limit is None:  # keep the interrupted run's plan
        state.plan = min(cfg.epochs, ckpt.get("plan", cfg.epochs))
    else:  # a new --epochs / --time-limit: plan again from the time already spent
        state.plan = plan_epochs(cfg, state.history, state.epoch, 0.0)
        if epochs is not None and state.plan == state.epoch < cfg.epochs:
            spent = sum(h["seconds"] for h in state.history) / 60
            raise InputError(
                f"{out}: the run's {cfg.time_limit:g}-minute time limit is spent ({spent:.1f} "
                f"min trained); add --time-limit 0 or a longer one to train to epoch "
                f"{cfg.epochs}"
            )
    within = f", step {len(state.epoch_losses) + 1} of it" if state.epoch_losses else ""
    log.info("resuming %s at epoch %d of %d%s", out, state.epoch, state.plan, within)
    return state


def _announce(
    preset: Preset, learner: Learner, data: Data, out_tile: int, steps: int, world: World
) -> None:
    """Log the run's shape: network size, tiles, batch, steps, images, device, precision
    and, under torchrun, the ranks and the global batch."""
    cfg = preset.train
    if world.distributed:
        log.info("%d ranks: batch %d per rank, global batch %d", world.size, cfg.batch_size,
                 cfg.batch_size * world.size)  # fmt: skip
        if len(data.train_images) < world.size:
            log.info("%d training images for %d ranks: every rank draws its tiles from all "
                     "of them (other positions and augmentation per rank)",
                     len(data.train_images), world.size)  # fmt: skip
    log.info(
        "%s preset: %d parameters, tile %d -> %d, batch %d, %d steps/epoch, %d training / "
        "%d validation images, %s %s",
        preset.name,
        count_parameters(learner.model),
        cfg.tile,
        out_tile,
        cfg.batch_size,
        steps,
        len(data.train_images),
        len(data.val_images),
        learner.device,
        learner.precision,
    )
    if cfg.time_limit > 0:
        log.info("time limit %g min: at most %d epochs, as many as fit", cfg.time_limit,
                 cfg.epochs)  # fmt: skip


def training_batch(
    sampler: TileSampler,
    cfg: TrainConfig,
    out_tile: int,
    gen: torch.Generator,
    n: int,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``n`` training tiles as the network sees them, on ``device`` (default: the CPU):
    regions drawn by ``sampler``, augmented with ``gen``. x (n, C, S, S) float32, y (n, s, s)
    int64 class indices, w (n, s, s) float32 loss weights or None; S = ``cfg.tile``,
    s = ``out_tile``."""
    x, y, w = (None if a is None else a.to(device) for a in sampler.sample(n))  # with margin
    return augment(x, y, w, cfg.augment, gen, tile=cfg.tile, label_size=out_tile)


def train_step(
    learner: Learner,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    cfg: TrainConfig,
    lr: float,
) -> float:
    """One optimiser step at learning rate ``lr`` on the batch x (B, C, S, S), y (B, s, s),
    w (B, s, s) or None; returns its loss. A loss that is not finite is returned before it
    reaches the weights. Under torchrun the backward pass averages the gradients of all
    ranks' batches, so R ranks of batch b take the step of one process of batch R * b."""
    model, optimizer = learner.model, learner.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    x = x.contiguous(memory_format=learner.layout)
    with autocast(learner.device, learner.precision):
        logits = (learner.net or model)(x)
    ignore = IGNORE_INDEX if cfg.ignore_label is not None else None
    loss = segmentation_loss(logits, y, w, dice=cfg.dice, ignore_index=ignore)
    value = loss.item()
    if not math.isfinite(value):
        return value
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if learner.ema is not None:
        learner.ema.update_parameters(model)
    return value


def _train_epoch(
    learner: Learner,
    sampler: TileSampler,
    gen: torch.Generator,
    cfg: TrainConfig,
    state: RunState,
    steps: int,
    out_tile: int,
    out: Path,
    progress: bool,
    stop: StopRequest | None = None,
) -> tuple[float, float]:
    """One epoch of ``steps`` optimiser steps (``state.step`` counts them), from the step
    after ``state.epoch_losses`` (a stopped epoch's); returns the mean training loss and
    the last step's learning rate, or early, at a step boundary, once ``stop`` has a
    signal. TrainingDiverged (naming the run ``out``) as soon as the loss is not finite,
    before it reaches the weights."""
    (learner.net or learner.model).train()
    losses = state.epoch_losses
    lr = math.nan
    bar = tqdm(range(len(losses), steps), desc=f"epoch {state.epoch + 1}/{state.plan}",
               disable=not progress, leave=False, dynamic_ncols=True)  # fmt: skip
    for i in bar:
        if stop is not None and stop.signum is not None:
            break
        # the step within the plan's epochs: also right when a run resumes with another
        # number of ranks and so another number of steps per epoch
        lr = learning_rate(cfg, state.epoch * steps + i, steps, state.plan)
        x, y, w = training_batch(sampler, cfg, out_tile, gen, cfg.batch_size, learner.device)
        value = train_step(learner, x, y, w, cfg, lr)
        if not math.isfinite(value):  # stopped before a NaN reached the weights
            kept = f"; last.pt keeps epoch {state.epoch}" if state.epoch else ""
            raise TrainingDiverged(
                f"{out}: the training loss became {value} at epoch {state.epoch + 1} (step "
                f"{state.step + 1} of the run, lr {lr:g}): the run diverged; lower --lr{kept}"
            )
        state.step += 1
        losses.append(value)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
    return float(np.mean(losses)), lr


def _validate_if_due(
    learner: Learner, data: Data, cfg: TrainConfig, state: RunState
) -> tuple[dict, list[np.ndarray] | None]:
    """(scores, probabilities) of :func:`validate` with the averaged weights if any, every
    ``cfg.val_every`` epochs and at the planned last; ({}, None) otherwise."""
    epoch, plan = state.epoch, state.plan
    if not (data.val_images and cfg.val_every and (epoch % cfg.val_every == 0 or epoch == plan)):
        return {}, None
    isbi = cfg.isbi_every > 0 and (epoch % cfg.isbi_every == 0 or epoch == plan)
    model = learner.model if learner.ema is None else learner.ema.module
    return validate(model, data, learner.precision, isbi)


def _record(state: RunState, row: dict, select_by: str) -> bool:
    """Append the epoch's ``row`` to the history; whether it is the best so far."""
    state.history.append(row)
    score = selection_score(row, select_by)
    is_best = score is not None and score < state.best
    state.best = min(state.best, score) if score is not None else state.best
    return is_best


def _checkpoint(
    out: Path,
    preset: Preset,
    learner: Learner,
    state: RunState,
    np_rng: np.random.Generator,
    gen: torch.Generator,
    is_best: bool,
) -> None:
    """Write last.pt (and best.pt first, if ``is_best``): everything a resumed run needs,
    also in the middle of an epoch (its steps' losses and seconds)."""
    ckpt = {
        "preset": preset.to_dict(),
        "model": learner.model.state_dict(),
        **({} if learner.ema is None else {"ema": learner.ema.state_dict()}),
        "optimizer": learner.optimizer.state_dict(),
        "epoch": state.epoch,
        "plan": state.plan,
        "step": state.step,
        "best": state.best,
        "history": state.history,
        "rng": _rng_state(np_rng, gen),
        "epoch_losses": state.epoch_losses,
        "epoch_seconds": state.epoch_seconds,
    }
    if is_best:  # best first: a crash between the two writes loses no best model
        save_checkpoint(out / "best.pt", ckpt)
    save_checkpoint(out / "last.pt", ckpt)


def _stopped(out: Path, preset: Preset, learner: Learner, state: RunState,
             np_rng: np.random.Generator, gen: torch.Generator, signum: int,
             t0: float) -> None:  # fmt: skip
    """Save the run at this step boundary (last.pt, with the epoch's steps so far) and end
    it with :class:`Stopped` saying how to go on."""
    state.epoch_seconds = time.perf_counter() - t0
    _checkpoint(out, preset, learner, state, np_rng, gen, is_best=False)
    name = signal.Signals(signum).name
    raise Stopped(f"{out}: stopped by {name} at epoch {state.epoch + 1}, step "
                  f"{len(state.epoch_losses)}; last.pt holds it: biounet train --resume "
                  f"{out} goes on from there", signum)  # fmt: skip


def _log_epoch(
    out: Path,
    state: RunState,
    data: Data,
    probs: list[np.ndarray] | None,
    is_best: bool,
    board=None,
) -> None:
    """log.csv, curves.png, val.png (if validated) and one log line for the last epoch;
    its scalars and panels also to the TensorBoard writer ``board`` if given."""
    _write_log(out / "log.csv", state.history)
    plot_curves(state.history, out / "curves.png")
    if probs is not None:
        plot_panels(data.val_images, data.val_masks, probs, out / "val.png", data.val_names)
    row = state.history[-1]
    if board is not None:
        _board_epoch(board, row, out / "val.png" if probs is not None else None)
    log.info(
        "epoch %d/%d  train loss %.4f  val loss %s  pixel error %s  V_rand %s  V_info %s"
        "  %.1fs%s",
        row["epoch"],
        state.plan,
        row["train_loss"],
        _fmt(row.get("val_loss")),
        _fmt(row.get("val_pixel_error")),
        _fmt(row.get("v_rand")),
        _fmt(row.get("v_info")),
        row["seconds"],
        "  (best)" if is_best else "",
    )


def _board_epoch(board, row: dict, panels: Path | None) -> None:
    """The epoch's numbers (losses, learning rate, pixel error, V_rand, V_info, IoU, ...)
    as TensorBoard scalars at its epoch, and the validation panels as an image."""
    epoch = row["epoch"]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, int | float) and value is not None:
            board.add_scalar(key, value, epoch)
    if panels is not None and panels.is_file():
        from PIL import Image

        with Image.open(panels) as im:
            board.add_image("validation", np.asarray(im.convert("RGB")), epoch,
                            dataformats="HWC")  # fmt: skip
    board.flush()


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def summary(history: list[dict], select_by: str = "val_loss") -> dict:
    """The best epoch's row (by ``select_by``; training loss if no row has it), plus totals."""
    if not history:
        return {}
    scored = [(selection_score(h, select_by), h) for h in history]
    scored = [(v, h) for v, h in scored if v is not None] or [(h["train_loss"], h) for h in history]
    best = min(scored, key=lambda vh: vh[0])[1]
    return {**best, "best_epoch": best["epoch"], "epochs": history[-1]["epoch"],
            "total_seconds": round(sum(h["seconds"] for h in history), 1)}  # fmt: skip


def preview_tiles(preset: Preset, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training tiles exactly as the network sees them: (n, S, S) float32 inputs (of
    images of several channels, the largest per pixel) and (n, s, s) int64 labels, after
    the preset's augmentation (seeded), drawn from all images (no validation split)."""
    cfg = replace(preset.train, val_slices="none", train_slices=None)
    out_tile = check_tile(preset)
    data = load_data(cfg, max(2, preset.model.out_channels), preset.model.normalization)
    sampler = make_sampler(cfg, data, out_tile, np.random.default_rng(seed))
    x, y, _ = training_batch(sampler, cfg, out_tile, torch.Generator().manual_seed(seed), n)
    return x.amax(dim=1).numpy(), y.numpy()


def report(result: dict, out: Path) -> str:
    """A few lines on the best epoch of a run."""
    if not result:
        return f"{out}: nothing trained"
    lines = [
        f"run {out}: {result['epochs']} epochs in {result['total_seconds'] / 60:.1f} min; "
        f"best epoch {result['best_epoch']}"
        + (f" (saved as {out / 'best.pt'})" if (out / "best.pt").is_file() else "")
    ]
    if result.get("val_loss") is not None:
        lines.append(
            f"  validation: loss {result['val_loss']:.4f}  pixel error "
            f"{result['val_pixel_error']:.4f}  IoU(cell) {result['val_iou']:.4f}  "
            f"Dice(cell) {result['val_dice']:.4f}"
        )
        if result.get("val_mean_iou") is not None:
            lines.append(f"  mean IoU of classes 1..C-1: {result['val_mean_iou']:.4f}")
        if result.get("v_rand") is not None:
            lines.append(
                f"  ISBI 2012: V_rand {result['v_rand']:.4f}  V_info {result['v_info']:.4f}"
            )
    lines.append(f"  plots: {out / 'curves.png'}, {out / 'val.png'}; log: {out / 'log.csv'}")
    return "\n".join(lines)
