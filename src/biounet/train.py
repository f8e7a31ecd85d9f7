"""The training loop: one plain function with numbered steps.

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
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .augment import augment
from .checkpoint import load_checkpoint, save_checkpoint
from .config import HIGHER_IS_BETTER, Preset, TrainConfig
from .dataset import TileSampler, split
from .device import autocast, memory_format, resolve_precision, select_device
from .io import (
    InputError,
    check_pairs,
    find_data,
    normalize,
    read_images,
    read_instances,
    read_pairs,
    resolve_data_path,
    write_text,
)
from .losses import segmentation_loss
from .model import UNet, count_parameters, output_size
from .plots import plot_curves, plot_panels
from .targets import NUM_CLASSES, make_target
from .tiling import predict
from .weights import cached_weight_maps

log = logging.getLogger("biounet")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the run stops with a one-line message."""


LOG_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "val_loss", "val_pixel_error", "v_rand", "v_info",
    "seconds",
)  # fmt: skip


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


@dataclass
class Data:
    """Training images (H, W) float32, normalised; validation images as stored (prediction
    normalises them); masks (H, W) uint8 class indices."""

    train_images: list[np.ndarray]
    train_masks: list[np.ndarray]
    val_images: list[np.ndarray]
    val_masks: list[np.ndarray]
    val_names: list[str]
    train_instances: list[np.ndarray] | None = None  # (H, W) int32, instance targets only


def load_data(cfg: TrainConfig, num_classes: int, normalization: str = "zscore") -> Data:
    """Read the configured images and labels (default: bundled ISBI 2012), turn the labels
    into the configured target's class maps and split them."""
    if (cfg.images is None) != (cfg.labels is None):
        given = "--images" if cfg.images is not None else "--labels"
        raise InputError(f"{given} given alone: --images and --labels go together")
    if cfg.images is None:
        root = find_data("isbi2012")
        images_path, labels_path = root / "train-volume.tif", root / "train-labels.tif"
    else:
        images_path, labels_path = resolve_data_path(cfg.images), resolve_data_path(cfg.labels)
    instances = None
    if cfg.target == "mask":
        images, masks = read_pairs(images_path, labels_path, num_classes)
    else:  # instance labels -> the target's class maps
        images, masks = read_images(images_path), read_instances(labels_path)
        check_pairs(images, masks)
        instances = masks.arrays
        masks.arrays = [
            make_target(inst, cfg.target, cfg.boundary_width, cfg.touch_width) for inst in instances
        ]
    train_idx, val_idx = split(len(images), cfg.val_slices, cfg.train_slices, images.names)
    present = np.unique(np.concatenate([np.unique(masks.arrays[i]) for i in train_idx]))
    if len(present) < 2:
        raise InputError(
            f"{masks.source}: the training masks hold only class {present[0]}; "
            "check the mask encoding (foreground must be 255 or 1)"
        )
    return Data(
        train_images=[normalize(images.arrays[i], normalization) for i in train_idx],
        train_masks=[masks.arrays[i] for i in train_idx],
        val_images=[images.arrays[i] for i in val_idx],
        val_masks=[masks.arrays[i] for i in val_idx],
        val_names=[images.names[i] for i in val_idx],
        train_instances=None if instances is None else [instances[i] for i in train_idx],
    )


def validate(
    model: UNet, data: Data, precision: str, isbi: bool = True
) -> tuple[dict, list[np.ndarray]]:
    """Predictions of the validation images: loss, pixel error, IoU, Dice and, if ``isbi``,
    the ISBI 2012 V_rand and V_info (thinned, maximal over thresholds 0, 0.1, ..., 1)."""
    probs = [predict(model, img, precision=precision) for img in data.val_images]
    masks = data.val_masks
    if probs and probs[0].ndim == 3:  # more than 2 classes: foreground (not 0) vs class 0
        probs = [1.0 - p[0] for p in probs]
        masks = [(m != 0).astype(np.uint8) for m in masks]
    pairs = list(zip(probs, masks, strict=True))
    scores = {
        "val_loss": np.mean([metrics.binary_cross_entropy(p, m) for p, m in pairs]),
        "val_pixel_error": np.mean([metrics.pixel_error(p, m) for p, m in pairs]),
        "val_iou": np.mean([metrics.iou(p > 0.5, m) for p, m in pairs]),
        "val_dice": np.mean([metrics.dice(p > 0.5, m) for p, m in pairs]),
    }
    if isbi:
        r = metrics.isbi_scores(probs, masks, metrics=("v_rand", "v_info"))
        scores.update(v_rand=r["v_rand"], v_info=r["v_info"])
    return {k: float(v) for k, v in scores.items()}, probs


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


def _make_ema(model: torch.nn.Module, decay: float):
    """An exponential moving average of the weights and batch-norm statistics, updated
    after every optimiser step with :func:`ema_decay` (None when ``decay`` is 0)."""
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
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_COLUMNS})
    write_text(path, buf.getvalue())


def label_context(cfg: TrainConfig) -> int:
    """Pixels of label context per side a training tile keeps: instance targets are made
    after the warp (``targets_after_warp``, see :func:`tile_targets`) and need the tile's
    neighbours; 0 where the class map itself is warped."""
    if cfg.target == "mask" or not cfg.targets_after_warp:
        return 0
    return max(cfg.boundary_width, cfg.touch_width) if cfg.target == "contour" else 1


def tile_targets(y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Class maps (B, s, s) of augmented instance-label tiles (B, s + 2c, s + 2c), c =
    :func:`label_context`. The target is made after the warp, from the warped instances:
    resampling a class map by nearest neighbour breaks and doubles its one-pixel boundary
    class (rotated 30-45 degrees, a quarter to a third of a nucleus image's boundary pixels
    differ from the boundary of the rotated instances), and can leave two touching
    interiors with no boundary between them. The context gives the tile's edge pixels the
    class they have in the whole image."""
    c = label_context(cfg)
    maps = [
        make_target(t, cfg.target, cfg.boundary_width, cfg.touch_width) for t in y.cpu().numpy()
    ]
    out = torch.from_numpy(np.stack(maps)).long()
    if c:
        out = out[:, c:-c, c:-c]
    return out.to(y.device)


def make_sampler(
    cfg: TrainConfig, data: Data, out_tile: int, rng: np.random.Generator, cache=None
) -> TileSampler:
    """The training tile sampler: weight maps if configured (cached in memory and, given a
    ``cache`` folder, on disk) and the context margin the augmentation needs. With
    ``targets_after_warp`` it samples the instance labels themselves (:func:`tile_targets`)."""
    weights = None
    if cfg.weight_map:
        t = time.perf_counter()
        labels = data.train_instances or data.train_masks  # instances where there are some
        weights = cached_weight_maps(labels, cfg.w0, cfg.sigma, cache, cfg.class_balance)
        log.info("weight maps (w0 %g, sigma %g, class balance %s): %.2fs", cfg.w0, cfg.sigma,
                 cfg.class_balance, time.perf_counter() - t)  # fmt: skip
    margin = cfg.augment.margin(cfg.tile)
    labels = data.train_masks
    if label_context(cfg):  # instance targets made after the warp
        labels = data.train_instances
        # the label context, past a rotated tile's corner (sqrt 2 per pixel)
        margin += math.ceil(label_context(cfg) * math.sqrt(2))
    return TileSampler(data.train_images, labels, cfg.tile, out_tile, rng, weights, margin)


def check_tile(preset: Preset) -> int:
    """Output tile edge for the preset's input tile; InputError naming valid sizes."""
    m, tile = preset.model, preset.train.tile
    try:
        return output_size(tile, m.depth, m.padding)
    except ValueError as e:
        raise InputError(f"--tile {tile}: {e}") from None


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
    """
    out = Path(out_dir)
    # 1. Configuration: a new run writes config.json; a resumed one reads it back.
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
    cfg = preset.train
    out_tile = check_tile(preset)

    # 2. Device, precision and the run's random number generators.
    device = select_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    # 3. Data.
    num_classes = max(2, preset.model.out_channels)
    if cfg.target != "mask" and num_classes != NUM_CLASSES[cfg.target]:
        raise InputError(f"target {cfg.target!r} needs a network with {NUM_CLASSES[cfg.target]} "
                         f"outputs, this one has {preset.model.out_channels}")  # fmt: skip
    data = load_data(cfg, num_classes, preset.model.normalization)
    validating = bool(data.val_images) and cfg.val_every > 0
    select_by = cfg.select_by if validating or cfg.select_by == "last" else "train_loss"
    if select_by in HIGHER_IS_BETTER and cfg.isbi_every == 0:
        raise InputError(f"select_by {select_by} needs the ISBI metrics: set isbi_every >= 1")
    out.mkdir(parents=True, exist_ok=True)  # only once the data is known to be good
    write_text(out / "config.json", json.dumps(preset.to_dict(), indent=2) + "\n")
    sampler = make_sampler(cfg, data, out_tile, np_rng, cache=out)
    context = label_context(cfg)
    steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(data.train_images) / cfg.batch_size)

    # 4. Model and optimiser (restored when resuming).
    model = UNet(preset.model)
    model.reset_parameters(generator=gen)
    layout = memory_format(device, precision)
    model = model.to(device).to(memory_format=layout)
    optimizer = make_optimizer(model, cfg)
    epoch, step, best, history = 0, 0, math.inf, []
    plan = cfg.epochs  # epochs in all; a time limit may plan fewer
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    ema = _make_ema(model, cfg.ema)  # the weights that validate and predict, if configured
    if ckpt is not None:
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        epoch, step, best, history = ckpt["epoch"], ckpt["step"], ckpt["best"], ckpt["history"]
        _set_rng_state(ckpt["rng"], np_rng, gen)
        if epochs is None and time_limit is None:  # keep the interrupted run's plan
            plan = min(cfg.epochs, ckpt.get("plan", cfg.epochs))
        else:  # a new --epochs / --time-limit: plan again from the time already spent
            plan = plan_epochs(cfg, history, epoch, 0.0)
            if epochs is not None and plan == epoch < cfg.epochs:
                spent = sum(h["seconds"] for h in history) / 60
                raise InputError(
                    f"{out}: the run's {cfg.time_limit:g}-minute time limit is spent ({spent:.1f} "
                    f"min trained); add --time-limit 0 or a longer one to train to epoch "
                    f"{cfg.epochs}"
                )
        log.info("resuming %s at epoch %d of %d", out, epoch, plan)
    log.info(
        "%s preset: %d parameters, tile %d -> %d, batch %d, %d steps/epoch, %d training / "
        "%d validation images, %s %s",
        preset.name,
        count_parameters(model),
        cfg.tile,
        out_tile,
        cfg.batch_size,
        steps_per_epoch,
        len(data.train_images),
        len(data.val_images),
        device,
        precision,
    )

    # 5. Epochs: train, validate, log, checkpoint, plot.
    epochs_this_call = 0
    if cfg.time_limit > 0:
        log.info("time limit %g min: at most %d epochs, as many as fit", cfg.time_limit,
                 cfg.epochs)  # fmt: skip
    while epoch < plan and (stop_after is None or epochs_this_call < stop_after):
        t0 = time.perf_counter()
        model.train()
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{plan}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for _ in bar:
            lr = learning_rate(cfg, step, steps_per_epoch, plan)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y, w = (
                None if a is None else a.to(device) for a in sampler.sample(cfg.batch_size)
            )  # regions with margin
            x, y, w = augment(x, y, w, cfg.augment, gen, tile=cfg.tile, label_size=out_tile,
                              label_context=context)  # fmt: skip
            if context:
                y = tile_targets(y, cfg)
            x = x.contiguous(memory_format=layout)
            with autocast(device, precision):
                logits = model(x)
            loss = segmentation_loss(logits, y, w, dice=cfg.dice)
            value = loss.item()
            if not math.isfinite(value):  # stop before a NaN reaches the weights
                kept = f"; last.pt keeps epoch {epoch}" if epoch else ""
                raise TrainingDiverged(
                    f"{out}: the training loss became {value} at epoch {epoch + 1} (step "
                    f"{step + 1} of the run, lr {lr:g}): the run diverged; lower --lr{kept}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            losses.append(value)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        epoch += 1
        epochs_this_call += 1
        planned, plan = plan, plan_epochs(cfg, history, epoch, time.perf_counter() - t0, plan)
        if plan != planned:
            log.info("time limit %g min: %d epochs fit", cfg.time_limit, plan)
        row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": float(np.mean(losses))}
        probs = None
        if data.val_images and cfg.val_every and (epoch % cfg.val_every == 0 or epoch == plan):
            isbi = cfg.isbi_every > 0 and (epoch % cfg.isbi_every == 0 or epoch == plan)
            scores, probs = validate(model if ema is None else ema.module, data, precision, isbi)
            row.update(scores)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        score = selection_score(row, select_by)
        is_best = score is not None and score < best
        best = min(best, score) if score is not None else best
        state = {
            "preset": preset.to_dict(),
            "model": model.state_dict(),
            **({} if ema is None else {"ema": ema.state_dict()}),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "plan": plan,
            "step": step,
            "best": best,
            "history": history,
            "rng": _rng_state(np_rng, gen),
        }
        if is_best:  # best first: a crash between the two writes loses no best model
            save_checkpoint(out / "best.pt", state)
        save_checkpoint(out / "last.pt", state)
        _write_log(out / "log.csv", history)
        plot_curves(history, out / "curves.png")
        if probs is not None:
            plot_panels(data.val_images, data.val_masks, probs, out / "val.png", data.val_names)
        log.info(
            "epoch %d/%d  train loss %.4f  val loss %s  pixel error %s  V_rand %s  V_info %s"
            "  %.1fs%s",
            epoch,
            plan,
            row["train_loss"],
            _fmt(row.get("val_loss")),
            _fmt(row.get("val_pixel_error")),
            _fmt(row.get("v_rand")),
            _fmt(row.get("v_info")),
            row["seconds"],
            "  (best)" if is_best else "",
        )
    return summary(history, select_by)


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
    """``n`` training tiles exactly as the network sees them: (n, S, S) float32 inputs and
    (n, s, s) int64 labels, after the preset's augmentation (seeded), drawn from all
    images (no validation split)."""
    cfg = replace(preset.train, val_slices="none", train_slices=None)
    out_tile = check_tile(preset)
    data = load_data(cfg, max(2, preset.model.out_channels), preset.model.normalization)
    sampler = make_sampler(cfg, data, out_tile, np.random.default_rng(seed))
    x, y, w = sampler.sample(n)
    context = label_context(cfg)
    x, y, _ = augment(x, y, w, cfg.augment, torch.Generator().manual_seed(seed),
                      tile=cfg.tile, label_size=out_tile, label_context=context)  # fmt: skip
    if context:
        y = tile_targets(y, cfg)
    return x[:, 0].numpy(), y.numpy()
