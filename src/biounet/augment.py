"""Data augmentation in torch, applied identically to a tile, its label and its weights.

Two paths:
- exact: flips and quarter turns only; the tile is permuted, never resampled.
- resampled: rotation by any angle, zoom, shift, flips and the paper's elastic deformation
  (random displacement vectors on a coarse 3 x 3 grid, 10 px standard deviation, upsampled
  bicubically to a dense field) are composed into ONE sampling grid per tile. The image is
  resampled bicubically (or bilinearly), the label by nearest neighbour (its values are kept
  exactly), the weight map bilinearly, all with the same grid, so they cannot fall out of
  alignment.

Inputs are regions cut with mirrored context (dataset.TileSampler) of edge
R = tile + 2 * cfg.margin(tile); outputs are the network's input tile (tile x tile) and the
label / weights of its output tile (label_size x label_size, centred), which may be smaller
(valid padding). Every random draw comes from the run's ``torch.Generator`` on the CPU, in
a fixed order, so augmentation is reproducible and identical on CPU and CUDA.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .config import AugmentConfig

# ---------------------------------------------------------------------------------------
# Exact transforms: the dihedral group of the square


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


def centre_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """(..., R, R) -> (..., size, size), the centred square."""
    o = (t.shape[-1] - size) // 2
    return t[..., o : o + size, o : o + size]


def _extrapolate(g: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 2, S, S) sampling coordinates -> (B, 2, S + 2p, S + 2p), continued linearly
    past each edge (exact for the affine part; the elastic field is smooth)."""
    for dim in (2, 3):
        n = g.shape[dim]
        first, last = g.narrow(dim, 0, 1), g.narrow(dim, n - 1, 1)
        step0, step1 = first - g.narrow(dim, 1, 1), last - g.narrow(dim, n - 2, 1)
        before = [first + k * step0 for k in range(p, 0, -1)]
        after = [last + k * step1 for k in range(1, p + 1)]
        g = torch.cat([*before, g, *after], dim=dim)
    return g


def label_grid_of(grid: torch.Tensor, size: int) -> torch.Tensor:
    """The (B, size, size, 2) centred part of a (B, S, S, 2) sampling grid; past S (label
    context beyond the input tile) the grid is continued linearly."""
    g = grid.permute(0, 3, 1, 2)
    S = g.shape[-1]
    if size > S:
        g = _extrapolate(g, (size - S + 1) // 2)
    return centre_crop(g, size).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------
# Resampling transforms


@functools.lru_cache(maxsize=16)
def _bicubic_matrix(grid: int, size: int) -> torch.Tensor:
    """(size, grid) float32 matrix M with M @ v = bicubic upsampling of v, corners aligned.

    Bicubic interpolation is linear and separable, so a coarse (grid, grid) field C becomes
    the dense field M @ C @ M.T: two small matrix products instead of an interpolation.
    """
    eye = torch.eye(grid).reshape(grid, 1, grid, 1)
    cols = F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=True)
    return cols.reshape(grid, size).T.contiguous()


def dense_displacement(coarse: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 2, K, K) displacement vectors on a coarse grid -> (B, 2, size, size), bicubic."""
    M = _bicubic_matrix(coarse.shape[-1], size).to(coarse.device)
    return M @ coarse @ M.T


def draw_transforms(B: int, cfg: AugmentConfig, generator: torch.Generator) -> dict:
    """All random parameters of a batch, drawn on the CPU in a fixed order."""
    choices = dihedral_choices(cfg)
    p = {
        "dihedral": torch.randint(0, len(choices), (B,), generator=generator),
        "angle": (torch.rand(B, generator=generator) * 2 - 1) * math.radians(cfg.rotate_degrees),
        "shift": (torch.rand(B, 2, generator=generator) * 2 - 1) * cfg.shift_px,
        "coarse": torch.randn(B, 2, cfg.elastic_grid, cfg.elastic_grid, generator=generator)
        * cfg.elastic_sigma,
        "brightness": (torch.rand(B, generator=generator) * 2 - 1) * cfg.brightness,
        "contrast": 1 + (torch.rand(B, generator=generator) * 2 - 1) * cfg.contrast,
        "gamma": torch.exp((torch.rand(B, generator=generator) * 2 - 1) * math.log1p(cfg.gamma)),
    }
    # drawn last and only when on, so runs without zoom keep their random streams
    p["scale"] = torch.ones(B)
    if cfg.scale:
        u = torch.rand(B, generator=generator) * 2 - 1
        p["scale"] = torch.exp(u * math.log1p(cfg.scale_range))
    # likewise for contrast inversion, drawn after the zoom factor
    p["invert"] = torch.zeros(B, dtype=torch.bool)
    if cfg.invert:
        p["invert"] = torch.rand(B, generator=generator) < cfg.invert
    if not cfg.rotate:
        p["angle"].zero_()
    if not cfg.shift:
        p["shift"].zero_()
    if not cfg.elastic:
        p["coarse"].zero_()
    return p


def sampling_grid(
    params: dict, cfg: AugmentConfig, tile: int, region: int, device: torch.device
) -> torch.Tensor:
    """(B, tile, tile, 2) grid_sample coordinates into a (region x region) source.

    Output pixel p (offset from the tile centre, in pixels) reads the source at
    c + A p + t + e(p): A the rotation (any angle plus quarter turns) times the flip times
    the zoom factor (above 1 it reads a larger source area: objects are drawn smaller),
    t the shift, e the dense elastic displacement, c the region centre. In grid_sample's
    normalised coordinates (align_corners=False) with u = 2p / S this is
    v = (S / R) A u + 2 t / R + 2 e / R: an affine grid plus the scaled elastic field.
    """
    B = params["angle"].shape[0]
    choices = dihedral_choices(cfg)
    k = torch.tensor([choices[i][0] for i in params["dihedral"].tolist()], dtype=torch.float32)
    flip = torch.tensor([-1.0 if choices[i][1] else 1.0 for i in params["dihedral"].tolist()])
    angle = params["angle"] + k * (math.pi / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # A = rotation @ diag(flip, 1), acting on (x, y) column vectors
    A = torch.stack([torch.stack([cos * flip, -sin], -1), torch.stack([sin * flip, cos], -1)], -2)
    A = A * params["scale"].view(B, 1, 1)
    theta = torch.cat([A * (tile / region), (2 / region) * params["shift"][:, :, None]], dim=2)
    grid = F.affine_grid(theta.to(device), [B, 1, tile, tile], align_corners=False)
    if cfg.elastic:
        e = dense_displacement(params["coarse"].to(device), tile)  # (B, 2, S, S) as (x, y)
        grid = grid + e.permute(0, 2, 3, 1) * (2 / region)
    return grid


def gray_values(x: torch.Tensor, params: dict) -> torch.Tensor:
    """Gamma on each tile's own range, then contrast and brightness: (B, C, S, S)."""
    B = x.shape[0]
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    g = params["gamma"].to(x.device).view(B, 1, 1, 1)
    x = lo + span * ((x - lo) / span).clamp(0, 1) ** g
    c = params["contrast"].to(x.device).view(B, 1, 1, 1)
    b = params["brightness"].to(x.device).view(B, 1, 1, 1)
    return x * c + b


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
    *,
    tile: int | None = None,
    label_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augment a batch of regions and cut the network's input and label tiles.

    Args:
        x: (B, C, R, R) float images, R = tile + 2 * cfg.margin(tile).
        y: (B, R, R) integer labels; w: (B, R, R) float weights or None.
        cfg: which transforms, how strong.
        generator: the run's CPU generator.
        tile: the network's input edge S (default R: no margin).
        label_size: the network's output edge s <= S (default S).

    Returns x (B, C, S, S), y (B, s, s), w (B, s, s) or None, on x's device.
    """
    B, C, R, _ = x.shape
    tile = tile or R
    label_size = label_size or tile
    params = draw_transforms(B, cfg, generator)
    if not cfg.resamples:
        choices = dihedral_choices(cfg)
        xs, ys, ws = [], [], []
        for b, d in enumerate(params["dihedral"].tolist()):
            k, flip = choices[d]
            xs.append(dihedral(centre_crop(x[b], tile), k, flip))
            ys.append(dihedral(centre_crop(y[b], label_size), k, flip).long())
            if w is not None:
                ws.append(dihedral(centre_crop(w[b], label_size), k, flip))
        x, y = torch.stack(xs), torch.stack(ys)
        w = torch.stack(ws) if w is not None else None
    else:
        grid = sampling_grid(params, cfg, tile, R, x.device)  # (B, S, S, 2)
        label_grid = label_grid_of(grid, label_size)
        # the region already holds mirrored context; beyond it (a displacement past
        # cfg.margin, rare) the edge value is repeated
        kw = {"padding_mode": "border", "align_corners": False}
        x = F.grid_sample(x.float(), grid, mode=cfg.interpolation, **kw)
        y = F.grid_sample(y[:, None].float(), label_grid, mode="nearest", **kw)[:, 0].long()
        if w is not None:
            w = F.grid_sample(w[:, None].float(), label_grid, mode="bilinear", **kw)[:, 0]
    if cfg.gray:
        x = gray_values(x, params)
    if cfg.invert:  # the image is normalised to zero mean: negation inverts its contrast
        x = torch.where(params["invert"].to(x.device).view(B, 1, 1, 1), -x, x)
    return x, y, w
