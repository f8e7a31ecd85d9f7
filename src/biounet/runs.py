"""A training run's record: its state (:class:`RunState`: epochs planned and done, steps,
the best score, the log), its checkpoints (``last.pt``, ``best.pt``: everything a resumed
run needs, also in the middle of an epoch), how a time limit plans its epochs, how a
signal stops it at a step boundary (:class:`StopRequest`), and what it writes and reports
(``log.csv``, ``curves.png``, ``val.png``, TensorBoard, the summary). The loop itself is
:mod:`biounet.train`.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .config import HIGHER_IS_BETTER, Preset, TrainConfig
from .dataset import Data
from .errors import InputError, Stopped
from .io import write_text
from .model import UNet
from .plots import plot_curves, plot_panels

log = logging.getLogger("biounet")


LOG_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "val_loss", "val_pixel_error", "v_rand", "v_info",
    "seconds",
)  # fmt: skip


CLASS_COLUMNS = ("val_mean_iou",)  # in log.csv only for runs of more than 2 mask classes


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
    net: Callable | None = None  # what the training step calls (default: model): the DDP
    # wrapper, and/or the torch.compile'd one (device.Compiled)


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


def selection_score(row: dict, select_by: str) -> float | None:
    """The value best.pt minimises (negated where higher is better); None if the row lacks
    it (not validated, or ISBI metrics not computed this epoch). "last": the latest epoch."""
    if select_by == "last":
        return -float(row["epoch"])
    v = row.get(select_by)
    if v is None:
        return None
    return -v if select_by in HIGHER_IS_BETTER else v


def record(state: RunState, row: dict, select_by: str) -> bool:
    """Append the epoch's ``row`` to the history; whether it is the best so far."""
    state.history.append(row)
    score = selection_score(row, select_by)
    is_best = score is not None and score < state.best
    state.best = min(state.best, score) if score is not None else state.best
    return is_best


class StopRequest:
    """SIGTERM and SIGINT while a run trains (in the main thread, one process), or ``event``
    set from another thread (napari's Stop): noted, and acted on at the next step boundary
    (:func:`_train_epoch`), where the run saves last.pt and ends with :class:`Stopped`.
    Elsewhere, and after the run, the signal handlers before it."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool, event: threading.Event | None = None):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.event = event
        self.saved: dict = {}

    @property
    def requested(self) -> bool:
        """A signal came, or the event is set."""
        return self.signum is not None or (self.event is not None and self.event.is_set())

    @property
    def name(self) -> str:
        """What asked to stop: the signal's name, or "request"."""
        return signal.Signals(self.signum).name if self.signum is not None else "request"

    @property
    def code(self) -> int:
        """The signal's number (SIGINT's for a request): Stopped's exit code is 128 + it."""
        return self.signum if self.signum is not None else int(signal.SIGINT)

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


def save_run(
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


def restore(
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


def stop_at_step(out: Path, preset: Preset, learner: Learner, state: RunState,
             np_rng: np.random.Generator, gen: torch.Generator, stop: StopRequest,
             t0: float) -> None:  # fmt: skip
    """Save the run at this step boundary (last.pt, with the epoch's steps so far) and end
    it with :class:`Stopped` saying how to go on."""
    state.epoch_seconds = time.perf_counter() - t0
    save_run(out, preset, learner, state, np_rng, gen, is_best=False)
    raise Stopped(f"{out}: stopped by {stop.name} at epoch {state.epoch + 1}, step "
                  f"{len(state.epoch_losses)}; last.pt holds it: biounet train --resume "
                  f"{out} goes on from there", stop.code)  # fmt: skip


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


def log_epoch(
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
