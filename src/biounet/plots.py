"""Figures: training curves and input | label | prediction panels (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import atomic_path
from .normalization import normalize


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Train / validation loss (left) and validation errors (right: pixel error,
    1 - V_rand, 1 - V_info) per epoch, log scales."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    validated = [h for h in history if h.get("val_loss") is not None]
    if validated:
        ve = [h["epoch"] for h in validated]
        ax.plot(ve, [h["val_loss"] for h in validated], "o-", ms=3, label="validation")
        ax2.plot(ve, [h["val_pixel_error"] for h in validated], "o-", ms=3, label="pixel error")
        for key, name in (("v_rand", "1 - V_rand"), ("v_info", "1 - V_info")):
            pts = [(h["epoch"], 1 - h[key]) for h in validated if h.get(key) is not None]
            if pts:
                ax2.plot(*zip(*pts, strict=True), "o-", ms=3, label=name)
        ax2.legend()
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax.legend()
    ax2.set(xlabel="epoch", ylabel="error", yscale="log", title="validation")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def shown(image: np.ndarray) -> np.ndarray:
    """An (H, W) image as it is; a (C, H, W) one as the largest of its z-scored channels."""
    return normalize(image).max(axis=0) if image.ndim == 3 else image


def plot_panels(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    path: str | Path,
    names: Sequence[str] | None = None,
) -> Path:
    """One row per image: input | label | foreground probability (at most 5 rows). An
    input of C channels (C, H, W) shows the largest of its z-scored channels per pixel."""
    plt = pyplot()
    n = min(len(images), 5)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        name = names[i] if names else f"#{i}"
        image, what = images[i], "input"
        if image.ndim == 3:
            image, what = shown(image), f"input (max of {len(image)} channels)"
        for ax, data, title, cmap in zip(
            axes[i],
            (image, labels[i], probs[i]),
            (f"{name}: {what}", "label (cell = white)", "prediction P(cell)"),
            ("gray", "gray", "magma"),
            strict=True,
        ):
            limits = {} if ax is axes[i][0] else {"vmin": 0, "vmax": 1}
            ax.imshow(data, cmap=cmap, **limits)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    plt = pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def plot_weight_map(
    image: np.ndarray | None,
    instances: np.ndarray,
    weights: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Like the paper's Fig. 3: (input |) instances in colour | weight map as a heat map."""
    plt = pyplot()
    panels = 3 if image is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.3))
    axes = list(axes)
    if image is not None:
        axes.pop(0).imshow(shown(image), cmap="gray")
        fig.axes[0].set_title("input", fontsize=9)
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 1.0, (int(instances.max()) + 1, 3))
    colours[0] = 0
    axes[0].imshow(colours[instances])
    axes[0].set_title(f"instances ({len(np.unique(instances)) - 1}), borders carved", fontsize=9)
    im = axes[1].imshow(weights, cmap="jet")
    axes[1].set_title(f"weight map w(x), max {weights.max():.1f}", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in fig.axes[:panels]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95) if title else None)
    return save_figure(fig, path)


def plot_tiles(
    tiles: np.ndarray, labels: np.ndarray, path: str | Path, columns: int = 4, title: str = ""
) -> Path:
    """A grid of augmented input tiles (B, S, S) with their labels' outlines (B, s, s),
    drawn centred (the output tile of a valid-padding network is a dashed square)."""
    plt = pyplot()
    B, S, _ = tiles.shape
    s = labels.shape[-1]
    o = (S - s) / 2
    rows = -(-B // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= B:
            continue
        ax.imshow(tiles[i], cmap="gray")
        extent = (o - 0.5, o + s - 0.5, o + s - 0.5, o - 0.5)
        ax.contour(labels[i], levels=[0.5], colors="lime", linewidths=0.6, extent=extent,
                   origin="upper")  # fmt: skip
        if s < S:
            ax.add_patch(plt.Rectangle((o - 0.5, o - 0.5), s, s, fill=False, ls="--",
                                       ec="yellow", lw=0.8))  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
