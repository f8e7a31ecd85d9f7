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

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .augment import augment
from .checkpoint import inference_weights, load_checkpoint
from .config import HIGHER_IS_BETTER, Preset, TrainConfig
from .dataset import Data, TileSampler, load_data, make_sampler
from .device import autocast, compiled, memory_format, resolve_precision, select_device
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
from .model import UNet, count_parameters, output_size
from .presets import with_classes
from .runs import (
    Learner,
    RunState,
    StopRequest,
    log_epoch,
    plan_epochs,
    record,
    restore,
    save_run,
    stop_at_step,
    summary,
)
from .targets import NUM_CLASSES
from .validation import validate

log = logging.getLogger("biounet")


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


def check_tile(preset: Preset) -> int:
    """Output tile edge for the preset's input tile; InputError naming valid sizes."""
    m, tile = preset.model, preset.train.tile
    try:
        return output_size(tile, m.depth, m.padding)
    except ValueError as e:
        raise InputError(f"--tile {tile}: {e}") from None


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
    compile: bool | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_step: Callable[..., None] | None = None,
) -> dict:
    """Train ``preset`` into ``out_dir``; return the summary of the best epoch.

    Args:
        preset: the configuration (model + training). When resuming it may be None: the
            run's own ``config.json`` settings are used.
        out_dir: the run directory (created).
        resume: continue the run in ``out_dir`` from its ``last.pt``.
        epochs, device, time_limit, compile: override the configuration's (also when
            resuming, e.g. to extend a finished run, to lift its time limit, to move it to
            another device or to go on with or without torch.compile).
        stop_after: stop after this many epochs in this call (the run stays resumable).
        progress: show a progress bar per epoch.
        stop: an event another thread sets to stop the run at the next step boundary, as
            SIGINT does: last.pt is saved and :class:`Stopped` raised.
        on_step: called after every step with the keywords ``epoch`` (1-based), ``epochs``
            (planned), ``step`` (within the epoch, 1-based), ``steps`` (per epoch) and
            ``loss``.

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
            request = held.enter_context(StopRequest(not world.distributed, stop))
            overrides = {"epochs": epochs, "device": device, "time_limit": time_limit,
                         "compile": compile}  # fmt: skip
            return _train(world, dev, held, preset, out, resume, overrides, stop_after,
                          progress, request, on_step)  # fmt: skip
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
    overrides: dict,
    stop_after: int | None,
    progress: bool,
    stop: StopRequest,
    on_step: Callable[..., None] | None = None,
) -> dict:
    """:func:`train`'s steps on one rank (``held`` keeps the run directory's lock)."""
    # 1. Configuration, checked: a new run's preset, or a resumed run's own and last.pt.
    # Bad input on any rank stops every rank with its line (distributed.checked).
    with checked(world):
        preset, ckpt, out_tile = _configure(preset, out, resume, overrides)
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
        state = restore(ckpt, cfg, out, np_rng, gen, overrides["epochs"], overrides["time_limit"])
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
                                      out, progress and world.main, stop, on_step)  # fmt: skip
        if stop.requested and len(state.epoch_losses) < steps:  # at a step boundary
            stop_at_step(out, preset, learner, state, np_rng, gen, stop, t0)
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
        is_best = record(state, row, select_by)
        if world.main:
            save_run(out, preset, learner, state, np_rng, gen, is_best)
            log_epoch(out, state, data, probs, is_best, board)
        if stop.requested and state.epoch < state.plan:  # after a whole epoch
            raise Stopped(f"{out}: stopped by {stop.name} after epoch {state.epoch}; biounet "
                          f"train --resume {out} goes on from there", stop.code)  # fmt: skip
    barrier(world)  # the ranks leave together, once rank 0 has written the last epoch
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
    preset: Preset | None, out: Path, resume: bool, overrides: dict
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
    preset = preset.with_train(**overrides)  # None: not given
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
    if cfg.compile:  # the training step's forward and backward; validation stays eager
        net = compiled(net)
    return Learner(model, optimizer, ema, device, precision, layout, net)


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
    on_step: Callable[..., None] | None = None,
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
        if stop is not None and stop.requested:
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
        if on_step is not None:
            on_step(epoch=state.epoch + 1, epochs=state.plan, step=i + 1, steps=steps, loss=value)
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


