"""Data augmentation in torch, applied identically to a tile, its label and its weights.

This module holds the dihedral transforms (flips, rotations by multiples of 90 degrees),
which are exact (no resampling). Elastic deformation plugs in here as another transform of
the same signature: ``(x, y, w, cfg, generator) -> (x, y, w)``.
"""

from __future__ import annotations

import torch

from .config import AugmentConfig


def dihedral(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two axes by ``k`` quarter turns, then mirror left-right if ``flip``.

    The 8 combinations of (k in 0..3, flip) are the dihedral group of the square.
    """
    t = torch.rot90(t, k, dims=(-2, -1)) if k % 4 else t
    return torch.flip(t, dims=(-1,)) if flip else t


def inverse_dihedral(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo :func:`dihedral`."""
    t = torch.flip(t, dims=(-1,)) if flip else t
    return torch.rot90(t, -k, dims=(-2, -1)) if k % 4 else t


def dihedral_choices(cfg: AugmentConfig) -> list[tuple[int, bool]]:
    """The (quarter turns, flip) pairs that ``cfg`` allows.

    flip and rot90: all 8; flip only: the 4 mirrorings (none, left-right, up-down = half
    turn + left-right, both = half turn); rot90 only: the 4 rotations; neither: identity.
    """
    turns = (0, 1, 2, 3) if cfg.rot90 else (0, 2) if cfg.flip else (0,)
    flips = (False, True) if cfg.flip else (False,)
    return [(k, f) for k in turns for f in flips]


def random_dihedral(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per sample, one random flip / quarter-turn, the same for image, label and weights.

    x: (B, C, S, S) float; y: (B, S', S') int; w: (B, S', S') float or None. Tiles are square
    so every quarter turn keeps the shape. With ``flip`` only (no ``rot90``) the choices are
    the four mirrorings: identity, left-right, up-down, both.
    """
    choices = dihedral_choices(cfg)
    draws = torch.randint(0, len(choices), (x.shape[0],), generator=generator).tolist()
    xs, ys, ws = [], [], []
    for b, d in enumerate(draws):
        k, flip = choices[d]
        xs.append(dihedral(x[b], k, flip))
        ys.append(dihedral(y[b], k, flip))
        if w is not None:
            ws.append(dihedral(w[b], k, flip))
    return torch.stack(xs), torch.stack(ys), (torch.stack(ws) if w is not None else None)


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All configured transforms, in order. Shapes as in :func:`random_dihedral`."""
    if cfg.flip or cfg.rot90:
        x, y, w = random_dihedral(x, y, w, cfg, generator)
    return x, y, w
