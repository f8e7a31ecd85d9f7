"""Figures: training curves and input | label | prediction panels (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Train / validation loss (left, log scale) and validation pixel error (right) per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    validated = [h for h in history if h.get("val_loss") is not None]
    if validated:
        ve = [h["epoch"] for h in validated]
        ax.plot(ve, [h["val_loss"] for h in validated], "o-", ms=3, label="validation")
        ax2.plot(ve, [h["val_pixel_error"] for h in validated], "o-", ms=3, color="C2")
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax.legend()
    ax2.set(xlabel="epoch", ylabel="pixel error", title="validation pixel error")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_panels(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    path: str | Path,
    names: Sequence[str] | None = None,
) -> Path:
    """One row per image: input | label | foreground probability (at most 5 rows)."""
    plt = _pyplot()
    n = min(len(images), 5)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        name = names[i] if names else f"#{i}"
        for ax, data, title, cmap in zip(
            axes[i],
            (images[i], labels[i], probs[i]),
            (f"{name}: input", "label (cell = white)", "prediction P(cell)"),
            ("gray", "gray", "magma"),
            strict=True,
        ):
            limits = {} if ax is axes[i][0] else {"vmin": 0, "vmax": 1}
            ax.imshow(data, cmap=cmap, **limits)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
