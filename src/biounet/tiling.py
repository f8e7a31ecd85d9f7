"""Overlap-tile inference: any image size, bounded memory, seamless.

One engine, :func:`blockwise_probabilities`, runs any predictor over any image reader. A
predictor maps a (B, C, S, S) float32 batch of tiles to (B, K, s, s) float32 probabilities:
a UNet becomes one with :func:`unet_predictor` (device, memory layout, autocast, logits ->
probabilities); a test can pass ``lambda x: x + 1`` and check that the stitching is exact. A
reader returns any window of the normalised image, mirrored past its edges
(:mod:`biounet.mirror`). An image in memory is read from its array as one block
(:func:`tiled_probabilities`, :func:`predict`); an image larger than memory
(:mod:`biounet.large`) is read, predicted and written block by block: the same tiles, so
the same probabilities. How an image is tiled is one :class:`TileOptions`.

Valid padding (the paper): the image is mirror-padded by the network's border (92 px for
depth 4) and cut into input tiles whose output tiles abut. Tile origins are multiples of
2**depth, the pooling grid, so each tile computes exactly what a single pass over the whole
padded image would (the output tile, 16k - 60 px, is 4 px longer than the stride; those
rows are written twice with the same values). No blending is needed.

Same padding: overlapping tiles are blended with a Gaussian window (nnU-Net's sigma = tile
/ 8), the image mirror-padded by half the overlap so that its own border never sits at a
zero-padded tile edge. The blend is a running weighted mean, so tiles that agree on a pixel
give exactly their value there.

Memory: the tile edge is the largest valid one whose estimated activations fit a budget
(default 1 GiB), tiles are batched to fill it, and only the output and one block of input
are held: for an image in memory, the padded image; read block by block, about
``TileOptions.block`` pixels a side.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .augment import dihedral, inverse_dihedral
from .config import TileOptions
from .device import autocast, compiled, memory_format, resolve_precision
from .errors import InputError
from .exported import load_model
from .io import channels_of, channels_text
from .mirror import mirrored_window
from .model import (
    ModelConfig,
    UNet,
    border,
    is_valid_input_size,
    nearest_valid_input_size,
    output_size,
    valid_input_size,
)
from .normalization import normalize

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""(B, C, S, S) float32 tiles -> (B, K, s, s) float32 probabilities; s = S (same padding)
or S - 2 * border (valid padding), K fixed for a predictor."""

Reader = Callable[[int, int, int, int], np.ndarray]
"""(y0, y1, x0, x1): image rows y0..y1 and columns x0..x1, which may reach past the image's
edges -> (C, y1 - y0, x1 - x0) float32 normalised pixels, mirrored there as
:func:`biounet.mirror.mirrored_window` mirrors them."""

Writer = Callable[[int, int, np.ndarray], None]
"""(y, x, (K, h, w) float32): the final probabilities of image rows y..y+h, columns
x..x+w."""

log = logging.getLogger("biounet")


def tile_options(options: TileOptions | None = None, **changes) -> TileOptions:
    """``options`` (default ``TileOptions()``) with the keyword ``changes`` to its fields;
    TypeError for a keyword that is not one."""
    return replace(options or TileOptions(), **changes)


def padding_for(size: int, depth: int, padding: str) -> tuple[int, int]:
    """(before, after) mirror padding of an image edge ``size`` for ONE whole-image pass, so
    the network's output covers it, with the image's first pixel at output index 0 (valid)
    or ``before`` (same)."""
    if padding == "valid":
        b = border(depth)
        total = valid_input_size(size, depth, padding)
        return b, total - size - b
    total = size
    while not is_valid_input_size(total, depth, padding):
        total += 1
    extra = total - size
    return extra // 2, extra - extra // 2


@contextmanager
def evaluating(model: torch.nn.Module):
    """Put ``model`` in eval mode under inference_mode; restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut: input tile edge, output tile edge, stride (pixels), batch
    (tiles), and the network's padding, which decides abutting or blended tiles."""

    tile: int  # input tile edge S
    out: int  # output tile edge (S - 2 border for valid, S for same)
    stride: int  # distance between tile origins, a multiple of 2**depth
    batch: int  # tiles per forward pass
    padding: str  # "valid": output tiles abut; "same": overlapping tiles are blended

    def __post_init__(self):
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        S, s = self.tile, self.out
        if self.padding == "same" and s != S:
            raise ValueError(f"same padding needs out == tile, got out {s}, tile {S}")
        if self.padding == "valid" and not (0 < s < S and (S - s) % 2 == 0):
            raise ValueError(f"valid padding needs 0 < out < tile, tile - out even; "
                             f"got out {s}, tile {S}")  # fmt: skip
        if not 1 <= self.stride <= s:
            raise ValueError(f"stride must be in [1, out = {s}] (no gaps), got {self.stride}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


def activation_bytes(cfg: ModelConfig, tile: int, precision: str) -> int:
    """Rough peak activation memory (bytes) of one tile under inference_mode.

    About ten top-level feature maps are alive at the widest point (skip, up-sampled,
    concatenated, conv outputs, softmax). An upper bound: measured peaks were 0.73x of it
    for the fast net and 0.5x for the paper net (bf16).
    """
    bytes_per_value = 2 if precision == "bf16" else 4
    return 10 * cfg.base_channels * tile * tile * bytes_per_value + 16 * tile * tile


def plan_tiles(
    cfg: ModelConfig, shape: tuple[int, int], options: TileOptions | None = None, **tiling
) -> TilePlan:
    """Choose the tile for an image of ``shape`` (H, W) under ``options`` with the keyword
    ``tiling`` changes (TileOptions fields: tile, overlap, memory_mb and precision, whose
    "bf16" sizes activations at 2 bytes a value, any other at 4).

    ``tile`` (an input edge) is rounded to the nearest valid size, with a notice. By
    default, among the valid tiles whose activations fit ``memory_mb`` (and no larger than
    the image needs), the one that computes the fewest pixels for this image. Small tiles
    are batched up to the budget.
    """
    options = tile_options(options, **tiling)
    tile, overlap, precision = options.tile, options.overlap, options.precision
    d, pad = cfg.depth, cfg.padding
    q = 2**d
    budget = options.memory_mb * 2**20
    # one tile that covers the whole image, and the smallest tile whose stride is >= 2**d
    longest = max(shape)
    if pad == "valid":
        need, smallest = valid_input_size(longest, d, pad), valid_input_size(q, d, pad)
    else:
        need, smallest = max(q, -(-longest // q) * q), q
    if tile is not None:
        chosen = nearest_valid_input_size(max(tile, smallest), d, pad)
        if chosen != tile:
            log.info("tile %d is not a usable input size here; using %d", tile, chosen)
        return _plan(cfg, chosen, need, overlap, budget, precision)
    # the largest tile that fits the budget, then the smallest tile that needs no more tiles
    # than it: fewest pixels computed (e.g. 2 x 2 tiles of 700 rather than of 892)
    fitting = [
        c for c in range(smallest, max(need, smallest) + 1)
        if is_valid_input_size(c, d, pad) and activation_bytes(cfg, c, precision) <= budget
    ] or [smallest]  # fmt: skip
    plans = [_plan(cfg, c, need, overlap, budget, precision) for c in fitting]
    # per-tile costs (edges, launches) grow like perimeter / area: favour larger tiles a bit
    return min(plans, key=lambda p: (_computed_pixels(p, shape, pad) * (1 + 32 / p.tile), -p.tile))


def _plan(cfg: ModelConfig, tile: int, need: int, overlap: float, budget: int, precision: str):
    q = 2**cfg.depth
    out = output_size(tile, cfg.depth, cfg.padding)
    if cfg.padding == "valid":
        stride = out // q * q  # the pooling grid: tiles compute what one pass would
    elif tile >= need:
        stride = tile  # one tile covers the image: no overlap, no blending
    else:
        stride = max(q, int(tile * (1 - overlap)) // q * q)
    batch = max(1, budget // activation_bytes(cfg, tile, precision))
    return TilePlan(tile=tile, out=out, stride=stride, batch=int(batch), padding=cfg.padding)


def _computed_pixels(plan: TilePlan, shape: tuple[int, int], padding: str) -> int:
    """Input pixels the network processes for an image of ``shape`` under ``plan``."""
    n = 1
    for size in shape:
        covered = size if padding == "valid" else size + 2 * _margin(plan)
        n *= len(_origins(covered, plan))
    return n * plan.tile**2


def _margin(plan: TilePlan) -> int:
    """Mirror margin of a same-padding canvas: half the overlap."""
    return (plan.tile - plan.stride) // 2 if plan.stride < plan.tile else 0


def _origins(covered: int, plan: TilePlan) -> list[int]:
    """Tile origins along one axis so that outputs cover ``covered`` pixels."""
    n = max(1, math.ceil((covered - plan.out) / plan.stride) + 1)
    return [i * plan.stride for i in range(n)]


def gaussian_window(tile: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    """(tile, tile) float32 Gaussian blending weights, peak 1, floor 1e-3 (never zero)."""
    r = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
    g = np.exp(-(r**2) / (2 * (tile * sigma_scale) ** 2))
    w = np.outer(g, g)
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)

# ---------------------------------------------------------------------------------------
# The engine: any predictor, any reader, block by block


def blockwise_probabilities(
    predictor: Predictor,
    read: Reader,
    shape: tuple[int, int],
    plan: TilePlan,
    write: Writer,
    *,
    block: int | None = TileOptions.block,
    progress: bool = False,
) -> None:
    """The ``predictor``'s (K, H, W) float32 output over an (H, W) = ``shape`` image, tiled
    as ``plan`` says: read through ``read``, written through ``write`` block by block, each
    pixel once.

    A block is a rectangle of whole tiles of the image's tile grid (about ``block`` output
    pixels a side; None: the whole image, one block), so every tile sees the same input and
    computes the same output whatever the blocks. Valid padding: blocks abut. Same padding:
    the running blended mean of the strips a block shares with its right and lower
    neighbours is carried over to them; wherever at most two tiles overlap along each axis
    (overlap <= 0.5) a pixel receives its tiles in the one-block order, so the results are
    the same. Memory: one block's input and output and, for same padding, a strip of the
    tile overlap across the image's width.
    """
    if block is not None and block < 1:
        raise ValueError(f"block must be >= 1 pixel, got {block}")
    oy, ox, size, shift, image_at = _grid(shape, plan)
    S = plan.tile
    n = max(len(oy), len(ox)) if block is None else max(1, block // plan.stride)  # tiles
    rows, cols = list(_batches(range(len(oy)), n)), list(_batches(range(len(ox)), n))
    blend = _Blend(size[1], S) if plan.padding == "same" else None
    quiet = not progress or len(oy) * len(ox) <= plan.batch
    with tqdm(total=len(oy) * len(ox), desc="tiles", unit="tile", disable=quiet,
              leave=False) as bar:  # fmt: skip
        for r in rows:
            for c in cols:
                ys, xs = [oy[i] for i in r], [ox[i] for i in c]
                y0, x0 = ys[0], xs[0]
                h, w = ys[-1] + S - y0, xs[-1] + S - x0  # the block's input on the canvas
                window = read(y0 - shift[0], y0 + h - shift[0], x0 - shift[1], x0 + w - shift[1])
                tiles = _tile_outputs(predictor, window, [y - y0 for y in ys],
                                      [x - x0 for x in xs], plan, bar)  # fmt: skip
                final = (_end(oy, r, size[0]) - y0, _end(ox, c, size[1]) - x0)
                if blend is None:
                    out = _abutting(tiles, final, plan.out)
                else:
                    out = blend.block(tiles, x0, (h, w), final, r is rows[0],
                                      c is cols[0], c is cols[-1])  # fmt: skip
                _emit(write, out, (y0, x0), image_at, shape)


def _grid(shape: tuple[int, int], plan: TilePlan):
    """(row origins, column origins, the output canvas (h, w), where image pixel (0, 0)
    lies on the input canvas, and where on the output canvas) of an (H, W) image: tile
    origins are on both canvases, the input tile at an origin gives the output tile there."""
    H, W = shape
    if plan.padding == "valid":  # the padded input is image[p - border], mirrored
        b = (plan.tile - plan.out) // 2
        return _origins(H, plan), _origins(W, plan), (H, W), (b, b), (0, 0)
    # same padding: the canvas is image[p - top, p - left], mirrored
    m = _margin(plan)
    oy, ox = _origins(H + 2 * m, plan), _origins(W + 2 * m, plan)
    Hp, Wp = oy[-1] + plan.tile, ox[-1] + plan.tile
    top, left = m + (Hp - H - 2 * m) // 2, m + (Wp - W - 2 * m) // 2
    return oy, ox, (Hp, Wp), (top, left), (top, left)


def _tile_outputs(predictor, padded, oy, ox, plan, bar):
    """Yield (y, x, (K, out, out) float32) for the tiles at origins oy x ox of the padded
    (C, h, w) input, run in batches of plan.batch, counted on the progress ``bar``."""
    S, s = plan.tile, plan.out
    coords = [(y, x) for y in oy for x in ox]
    K = None  # the predictor's channels, fixed by its first answer
    for batch in _batches(coords, plan.batch):
        B = len(batch)
        tiles = np.stack([padded[:, y : y + S, x : x + S] for y, x in batch])
        with torch.inference_mode():
            probs = predictor(torch.from_numpy(tiles))  # (B, K, s, s)
        K = probs.shape[1] if K is None and probs.ndim == 4 else K
        if tuple(probs.shape) != (B, K, s, s):
            want = f"({B}, {'K' if K is None else K}, {s}, {s})"
            raise ValueError(f"predictor returned {tuple(probs.shape)} for tiles "
                             f"{tiles.shape}; expected {want}")  # fmt: skip
        for (y, x), p in zip(batch, probs.float().cpu().numpy(), strict=True):
            yield y, x, p
        bar.update(B)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _end(origins: list[int], group: list[int], size: int) -> int:
    """Where a block's final output ends along an axis: the next block's first tile origin,
    or the canvas' edge for the last block."""
    after = group[-1] + 1
    return origins[after] if after < len(origins) else size


def _abutting(tiles, final: tuple[int, int], out_edge: int) -> np.ndarray:
    """(K, h, w) float32 of a valid-padding block's tile outputs, cut to ``final`` (h, w)."""
    out = None
    for y, x, p in tiles:
        if out is None:
            out = np.empty((p.shape[0], *final), np.float32)
        h, w = min(out_edge, final[0] - y), min(out_edge, final[1] - x)
        if h > 0 and w > 0:  # a later tile overwrites the rows both hold
            out[:, y : y + h, x : x + w] = p[:, :h, :w]
    return out


def _emit(write: Writer, out: np.ndarray, origin, image_at, shape) -> None:
    """Pass the part of a block's final output ``out`` at canvas ``origin`` that lies on the
    (H, W) = ``shape`` image (at ``image_at`` on the canvas) to ``write``."""
    (y0, x0), (ty, tx) = origin, image_at
    ya, yb = max(y0, ty), min(y0 + out.shape[1], ty + shape[0])
    xa, xb = max(x0, tx), min(x0 + out.shape[2], tx + shape[1])
    if ya < yb and xa < xb:
        write(ya - ty, xa - tx, out[:, ya - y0 : yb - y0, xa - x0 : xb - x0])


class _Blend:
    """Gaussian blending of same-padding blocks, carrying the running mean and weight sum
    of the strips that a block's right and lower neighbours still add tiles to."""

    def __init__(self, width: int, tile: int):
        self.width = width  # of the canvas
        self.window = gaussian_window(tile)
        self.below: tuple[np.ndarray, np.ndarray] | None = None  # (K, s, width), (s, width)
        self.right: tuple[np.ndarray, np.ndarray] | None = None  # (K, h, s), (h, s)

    def block(self, tiles, x0, size, final, first_row, first_col, last_col) -> np.ndarray:
        """(K, *final) float32 final blended output of the block of ``size`` (h, w) at
        canvas column ``x0``, whose ``tiles`` are (y, x, (K, S, S)) in the block."""
        (h, w), (fy, fx) = size, final
        S = self.window.shape[0]
        mean = wsum = None
        for y, x, p in tiles:
            if mean is None:
                mean, wsum = np.zeros((p.shape[0], h, w), np.float32), np.zeros((h, w), np.float32)
                if not first_row:  # the upper block row's tiles reach into this block
                    below_mean, below_wsum = self.below
                    s = below_wsum.shape[0]
                    mean[:, :s] = below_mean[:, :, x0 : x0 + w]
                    wsum[:s] = below_wsum[:, x0 : x0 + w]
                if not first_col:  # the left block's tiles reach into this one
                    s = self.right[1].shape[1]
                    mean[:, :, :s], wsum[:, :s] = self.right
            # running weighted mean: mean += (p - mean) * w / (sum of w so far). The first
            # tile gives p * (w / w) = p exactly, and a tile that agrees with the mean adds
            # exactly 0, so tiles that agree on a pixel leave exactly their value there.
            ws = wsum[y : y + S, x : x + S]
            ws += self.window
            mt = mean[:, y : y + S, x : x + S]
            mt += (p - mt) * (self.window / ws)
        self.right = None if last_col else (mean[:, :, fx:].copy(), wsum[:, fx:].copy())
        if fy < h:  # rows the next block row adds to; its first tiles start at fy
            if self.below is None:
                self.below = (np.zeros((mean.shape[0], h - fy, self.width), np.float32),
                              np.zeros((h - fy, self.width), np.float32))  # fmt: skip
            assert self.below[1].shape[0] == h - fy, "block rows overlap alike"
            stop = w if last_col else fx  # columns the right neighbour does not rewrite
            self.below[0][:, :, x0 : x0 + stop] = mean[:, fy:, :stop]
            self.below[1][:, x0 : x0 + stop] = wsum[fy:, :stop]
        return mean[:, :fy, :fx]


# ---------------------------------------------------------------------------------------
# An image in memory: one block, read from the array

DIHEDRAL = [(k, f) for k in range(4) for f in (False, True)]  # the 8 TTA transforms


def tiled_probabilities(
    predictor: Predictor,
    image: np.ndarray,
    plan: TilePlan,
    *,
    tta: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """(H, W) or (C, H, W) float32 image -> (K, H, W) float32 ``predictor`` output, tiled as
    ``plan`` says; the predictor gets (B, C, S, S) tiles (C = 1 for an (H, W) image).

    The image is passed to the predictor as it is (normalise it first). With ``tta``, the
    mean over the 8 flips / quarter turns of the image, each mapped back (the plan, chosen
    from max(H, W) and H * W, serves the transposed image as well).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3) or min(image.shape) < 1:
        raise ValueError(f"expected a non-empty (H, W) or (C, H, W) image, got shape "
                         f"{image.shape}")  # fmt: skip
    image = image[None] if image.ndim == 2 else image
    if not tta:
        return _in_memory(predictor, image, plan, progress)
    total = None
    for k, flip in DIHEDRAL:
        xt = np.ascontiguousarray(dihedral(torch.from_numpy(image), k, flip).numpy())
        p = _in_memory(predictor, xt, plan, progress)
        p = inverse_dihedral(torch.from_numpy(p), k, flip).numpy()
        if total is None:
            total = np.ascontiguousarray(p)
        else:
            total += p
    total /= len(DIHEDRAL)
    return total


def _in_memory(predictor: Predictor, image: np.ndarray, plan: TilePlan, progress: bool):
    """One tiled pass: (C, H, W) float32 -> (K, H, W) float32, the engine reading the array
    as one block (the tile batches span the whole image)."""
    shape = image.shape[-2:]
    held = []

    def keep(y: int, x: int, probs: np.ndarray) -> None:  # one block: the whole image
        assert (y, x) == (0, 0) and probs.shape[1:] == shape, "one block covers the image"
        held.append(probs)

    read = functools.partial(mirrored_window, image)
    blockwise_probabilities(predictor, read, shape, plan, keep, block=None, progress=progress)
    return held[0]


# ---------------------------------------------------------------------------------------
# The UNet as a predictor


def _channels(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) logits -> probabilities of the returned channels: foreground (B, 1, h, w)
    for 1 or 2 outputs, all classes for more."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    probs = torch.softmax(logits, dim=1)
    return probs[:, 1:2] if probs.shape[1] == 2 else probs


def unet_predictor(model: UNet, precision: str, compile: bool = False) -> Predictor:
    """``model`` as a :data:`Predictor`: (B, 1, S, S) float32 normalised tiles on any device
    -> (B, K, s, s) float32 CPU probabilities (K = 1, the foreground, for 1- and 2-output
    models; C for more), run where the model is, in ``precision`` ("bf16" or "fp32") with
    the matching memory layout. Train/eval mode is the caller's (see :func:`evaluating`).
    ``compile``: through torch.compile (:func:`biounet.device.compiled`); a batch smaller
    than the first is padded to it, so that the tile plan's one shape compiles once.
    """
    device = next(model.parameters()).device
    layout = memory_format(device, precision)
    net = compiled(model, compile)
    batch = []  # the first batch's size (compile: every batch is padded to it)

    def predict_tiles(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if compile:
            batch[:] = batch or [n]
            if n < batch[0]:
                x = torch.cat([x, x[-1:].expand(batch[0] - n, *x.shape[1:])])
        x = x.to(device).contiguous(memory_format=layout)
        with autocast(device, precision):
            logits = net(x)
        return _channels(logits[:n]).cpu()

    return predict_tiles


def dihedral_predictor(predictor: Predictor) -> Predictor:
    """``predictor`` averaged over the 8 flips / quarter turns of each (B, C, S, S) tile,
    each output mapped back: test-time augmentation per tile, for images that are never
    held whole (:func:`tiled_probabilities` averages whole-image views instead; the two
    differ slightly, as different tilings do)."""

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total = None
        for k, flip in DIHEDRAL:
            p = inverse_dihedral(predictor(dihedral(x, k, flip)), k, flip)
            total = p.clone() if total is None else total.add_(p)
        return total / len(DIHEDRAL)

    return averaged


def run_precision(model: torch.nn.Module, precision: str) -> str:
    """The precision ``model`` runs in, "bf16" or "fp32": an exported model's own, else
    ``precision`` ("auto", "bf16", "fp32") settled for its device; the model's memory layout
    is set to match (in place; the same weights)."""
    device = next(model.parameters()).device
    precision = getattr(model, "fixed_precision", None) or resolve_precision(precision, device)
    model.to(memory_format=memory_format(device, precision))
    return precision


def probabilities(
    model: UNet,
    image: np.ndarray,
    options: TileOptions | None = None,
    *,
    normalization: str | None = None,
    **tiling,
) -> np.ndarray:
    """(H, W) or (C, H, W) image, any dtype -> (K, H, W) float32 probabilities, K = 1
    (foreground) for 1- and 2-output models, C for more, tiled as ``options`` with the
    keyword ``tiling`` changes (:class:`TileOptions` fields) say. Normalises the image as in
    training (or by ``normalization``, one of model.NORMALIZATIONS, where given).
    InputError if the image's channels are not the model's input channels."""
    options = tile_options(options, **tiling)
    if image.ndim not in (2, 3) or min(image.shape) < 1:
        raise ValueError(f"expected a non-empty (H, W) or (C, H, W) image, got shape "
                         f"{image.shape}")  # fmt: skip
    check_channels(model, image)
    precision = run_precision(model, options.precision)
    x = normalize(image, normalization or model.config.normalization)
    plan = plan_tiles(model.config, x.shape[-2:], options, precision=precision)
    with evaluating(model):
        predictor = unet_predictor(model, precision, options.compile)
        return tiled_probabilities(predictor, x, plan, tta=options.tta,
                                   progress=options.progress)  # fmt: skip


def check_channels(model: UNet, image: np.ndarray, where: str = "the image") -> None:
    """InputError ``"WHERE has 2 channels; the model takes 1 ..."`` unless the (H, W) or
    (C, H, W) image has the model's input channels."""
    has = channels_of(image)
    takes = model.config.in_channels
    if has != takes:
        raise InputError(f"{where} has {channels_text(has)}; the model takes "
                         f"{takes} (pick them with --channels)")  # fmt: skip


def predict(
    model_or_checkpoint: UNet | str | Path,
    image: np.ndarray,
    options: TileOptions | None = None,
    *,
    device: str | torch.device | None = None,
    normalization: str | None = None,
    **tiling,
) -> np.ndarray:
    """Probability map of one image by overlap-tile inference.

    Args:
        model_or_checkpoint: a :class:`UNet` or the path of a biounet checkpoint.
        image: (H, W) array of any dtype and size, or (C, H, W) for a model of C input
            channels.
        options: how to tile (:class:`TileOptions`: tile, overlap, memory_mb, precision,
            tta, progress); default ``TileOptions()``.
        device: where to run a checkpoint's model (default: cpu); a model runs where it is.
        normalization: how to normalise the image (model.NORMALIZATIONS); default the
            model's own, as in training.
        **tiling: changes to ``options`` by field, e.g. ``tile=572, tta=True``.

    Returns (H, W) float32 probability of the foreground (cell) class for 1- and 2-output
    networks, (C, H, W) class probabilities for more.
    """
    options = tile_options(options, **tiling)
    if isinstance(model_or_checkpoint, torch.nn.Module):  # a UNet, or an exported one
        model = model_or_checkpoint
    else:  # a checkpoint, ONNX or TorchScript file
        model, _ = load_model(model_or_checkpoint, device or "cpu")
    probs = probabilities(model, image, options, normalization=normalization)
    return probs[0] if probs.shape[0] == 1 else probs
