"""The warping error of Jain et al. 2010 ("Boundary learning by optimization with
topological constraints", CVPR 2010), as scored in the ISBI 2012 challenge (numpy, no torch).

The ground truth's foreground (cells, 4-connected; background 8-connected) is warped
toward the thresholded proposal by flipping only simple pixels, whose flip changes no
topology (Kong & Rosenfeld's digital topology); the error is the fraction of pixels that
still disagree, i.e. what only splits, merges, holes and the like explain.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..labels import EIGHT_CONNECTED, FOUR_CONNECTED
from ._checks import same_shape

# neighbours in circular order: N, NE, E, SE, S, SW, W, NW; bit k of a code = neighbour k
_OFFSETS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def _simple_lut() -> np.ndarray:
    """256-entry table: is the centre pixel simple for a (4, 8) topology (4-connected
    foreground, 8-connected background), by its 8 neighbours (bit k = neighbour k)?

    Simple: exactly one 4-connected foreground component among the neighbours that is
    4-adjacent to the centre, and exactly one 8-connected background component among the
    neighbours that is 8-adjacent (Kong & Rosenfeld).
    """
    lut = np.zeros(256, bool)
    for code in range(256):
        nb = np.zeros((3, 3), bool)
        for k, (dy, dx) in enumerate(_OFFSETS):
            nb[1 + dy, 1 + dx] = bool(code >> k & 1)
        fg = nb.copy()
        fg_lab, _ = ndimage.label(fg, structure=FOUR_CONNECTED)
        fg_adj = {fg_lab[1 + dy, 1 + dx] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))} - {0}
        bg = ~nb
        bg[1, 1] = False
        bg_lab, _ = ndimage.label(bg, structure=EIGHT_CONNECTED)
        bg_adj = {bg_lab[1 + dy, 1 + dx] for dy, dx in _OFFSETS} - {0}
        lut[code] = len(fg_adj) == 1 and len(bg_adj) == 1
    return lut


_SIMPLE = _simple_lut()


def _neighbour_codes(a: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) uint8 codes of the 8 neighbours (outside the image = 0)."""
    p = np.pad(a, 1)
    H, W = a.shape
    code = np.zeros((H, W), np.uint8)
    for k, (dy, dx) in enumerate(_OFFSETS):
        code |= p[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W].astype(np.uint8) << k
    return code


def warp(label: np.ndarray, target: np.ndarray, max_rounds: int = 10_000) -> np.ndarray:
    """Warp binary ``label`` toward binary ``target`` by flipping only simple pixels.

    Flips proceed on the 9 sub-lattices (y mod 3, x mod 3) in turn: pixels of one
    sub-lattice are never neighbours, so flipping all of its simple mismatches at once is
    the same as flipping them one by one. Stops when no mismatched pixel is simple.
    """
    cur = label.astype(bool).copy()
    tgt = target.astype(bool)
    H, W = cur.shape
    yy, xx = np.mgrid[:H, :W]
    lattice = (yy % 3) * 3 + (xx % 3)
    for _ in range(max_rounds):
        changed = False
        for sub in range(9):
            cand = (cur != tgt) & (lattice == sub)
            if not cand.any():
                continue
            flip = cand & _SIMPLE[_neighbour_codes(cur)]
            if flip.any():
                cur[flip] = ~cur[flip]
                changed = True
        if not changed:
            break
    return cur


def warping_error(prob: np.ndarray, label: np.ndarray, *, threshold: float = 0.5) -> float:
    """Jain et al. 2010: the ground truth (foreground = cells, 4-connected) is warped toward
    the thresholded proposal by topology-preserving flips; the error is the fraction of
    pixels that still disagree (splits, merges, holes and the like)."""
    same_shape(prob, label)
    target = prob > threshold
    return float(np.mean(warp(label != 0, target) != target))
