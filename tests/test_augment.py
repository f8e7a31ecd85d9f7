import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biounet.augment import (
    augment,
    dense_displacement,
    dihedral,
    dihedral_choices,
    draw_transforms,
    inverse_dihedral,
    sampling_grid,
)
from biounet.config import AugmentConfig

PAPER_AUG = AugmentConfig(flip=True, rot90=True, rotate=True, shift=True, elastic=True, gray=True)


def test_dihedral_group_has_eight_distinct_invertible_elements():
    t = torch.arange(16.0).reshape(4, 4)
    outs = []
    for k in range(4):
        for flip in (False, True):
            d = dihedral(t, k, flip)
            assert torch.equal(inverse_dihedral(d, k, flip), t)
            outs.append(tuple(d.flatten().tolist()))
    assert len(set(outs)) == 8


def test_exact_path_gives_image_label_and_weights_the_same_transform():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    y = (x[:, 0] > 0).long()
    w = x[:, 0] * 3
    xa, ya, wa = augment(x, y, w, AugmentConfig(flip=True, rot90=True), g)
    assert torch.equal(ya, (xa[:, 0] > 0).long())
    assert torch.equal(wa, xa[:, 0] * 3)
    assert not torch.equal(xa, x)  # 16 draws from 8 transforms: some are not the identity


def test_flip_only_never_rotates_by_a_quarter_turn():
    assert sorted(dihedral_choices(AugmentConfig(flip=True, rot90=False))) == [
        (0, False), (0, True), (2, False), (2, True)]  # fmt: skip
    t = torch.arange(16.0).reshape(4, 4)
    mirrors = {tuple(m.flatten().tolist()) for m in (t, t.flip(0), t.flip(1), t.flip(0).flip(1))}
    got = {
        tuple(dihedral(t, k, f).flatten().tolist())
        for k, f in dihedral_choices(AugmentConfig(flip=True, rot90=False))
    }
    assert got == mirrors
    assert dihedral_choices(AugmentConfig(flip=False, rot90=False)) == [(0, False)]


def test_dense_field_is_bicubic_upsampling_of_the_coarse_grid():
    coarse = torch.randn(2, 2, 3, 3) * 10
    dense = dense_displacement(coarse, 57)
    ref = F.interpolate(coarse, size=(57, 57), mode="bicubic", align_corners=True)
    torch.testing.assert_close(dense, ref, atol=1e-4, rtol=1e-5)
    # corners and centre of the tile carry the coarse vectors themselves
    torch.testing.assert_close(dense[..., ::28, ::28], coarse, atol=1e-4, rtol=1e-5)


def _regions(B=4, R=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1, R, R, generator=g)
    y = torch.randint(0, 3, (B, R, R), generator=g) * 5  # values {0, 5, 10}
    w = torch.rand(B, R, R, generator=g)
    return x, y, w


def test_zero_strength_is_the_identity_crop():
    cfg = AugmentConfig(flip=False, rot90=False, rotate=True, rotate_degrees=0, shift=True,
                        shift_px=0, elastic=True, elastic_sigma=0)  # fmt: skip
    x, y, w = _regions(R=60)
    for interpolation in ("bicubic", "bilinear"):
        c = AugmentConfig(**{**cfg.__dict__, "interpolation": interpolation})
        xa, ya, wa = augment(x, y, w, c, torch.Generator().manual_seed(1), tile=40, label_size=20)
        torch.testing.assert_close(xa, x[..., 10:50, 10:50], atol=1e-4, rtol=0)
        assert torch.equal(ya, y[:, 20:40, 20:40])
        torch.testing.assert_close(wa, w[:, 20:40, 20:40], atol=1e-5, rtol=0)


def test_labels_keep_exactly_their_values_and_shapes_follow_the_tiles():
    x, y, w = _regions(B=6)
    margin = PAPER_AUG.margin(40)
    x, y, w = _regions(B=6, R=40 + 2 * margin)
    xa, ya, wa = augment(x, y, w, PAPER_AUG, torch.Generator().manual_seed(2), tile=40,
                         label_size=24)  # fmt: skip
    assert xa.shape == (6, 1, 40, 40) and ya.shape == (6, 24, 24) and wa.shape == (6, 24, 24)
    assert ya.dtype == torch.int64
    assert set(ya.unique().tolist()) <= {0, 5, 10}
    assert torch.isfinite(xa).all() and torch.isfinite(wa).all()


def test_same_seed_same_tiles_and_another_seed_other_tiles():
    x, y, w = _regions(R=40 + 2 * PAPER_AUG.margin(40))
    a = augment(x, y, w, PAPER_AUG, torch.Generator().manual_seed(3), tile=40)
    b = augment(x, y, w, PAPER_AUG, torch.Generator().manual_seed(3), tile=40)
    c = augment(x, y, w, PAPER_AUG, torch.Generator().manual_seed(4), tile=40)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])


def _grid_image(R: int) -> torch.Tensor:
    """A smooth grid pattern in [0, 1]: lines every 16 px, blurred edges."""
    r = torch.arange(R, dtype=torch.float32)
    lines = torch.cos(2 * math.pi * r / 16) * 0.5 + 0.5
    return torch.maximum(lines[None, :], lines[:, None])


def test_image_and_label_are_deformed_by_the_same_field():
    cfg = AugmentConfig(rotate=True, shift=True, elastic=True, elastic_sigma=10,
                        interpolation="bilinear")  # fmt: skip
    S, s = 96, 64
    R = S + 2 * cfg.margin(S)
    img = _grid_image(R)
    x = img.expand(8, 1, R, R).contiguous()
    y = (img > 0.5).long().expand(8, R, R).contiguous()  # the label is the image thresholded
    w = img.expand(8, R, R).contiguous()  # weights = the image itself
    xa, ya, wa = augment(x, y, w, cfg, torch.Generator().manual_seed(5), tile=S, label_size=s)
    centre = xa[:, 0, 16:80, 16:80]
    # weights are resampled bilinearly with the label part of the same grid: exactly equal
    torch.testing.assert_close(wa, centre, atol=1e-6, rtol=0)
    # the nearest-neighbour label equals the thresholded deformed image wherever the image
    # is clearly on one side (|v - 0.5| > 0.2 while the pattern changes < 0.2 per pixel):
    # a label deformed by another field would disagree on whole bands of pixels
    clear = (centre - 0.5).abs() > 0.2
    assert clear.float().mean() > 0.6
    assert torch.equal(ya[clear], (centre[clear] > 0.5).long())
    assert not torch.equal(xa[0], xa[1])  # different tiles got different fields


def test_quarter_turn_by_angle_equals_the_exact_rotation():
    cfg = AugmentConfig(flip=False, rot90=False, rotate=True, rotate_degrees=90)
    params = draw_transforms(1, cfg, torch.Generator().manual_seed(0))
    params["angle"][:] = math.pi / 2
    grid = sampling_grid(params, cfg, 20, 20, torch.device("cpu"))
    x = torch.randn(1, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    out = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    ref = torch.rot90(x, 1, dims=(-2, -1))
    # cos(pi/2) is 6e-8 in float32, not 0: sampling positions are off by up to ~1e-6 px,
    # so values of size ~4 may differ by a few 1e-6 (1.1e-5 was seen with another input)
    torch.testing.assert_close(out, ref, atol=5e-5, rtol=0)


def test_gray_values_change_the_image_not_the_label():
    cfg = AugmentConfig(flip=False, rot90=False, gray=True, brightness=0.5, contrast=0.5,
                        gamma=0.5)  # fmt: skip
    x, y, w = _regions(R=32)
    xa, ya, wa = augment(x, y, w, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(ya, y) and torch.equal(wa, w)
    assert not torch.allclose(xa, x)
    # monotone per tile: the order of gray values is kept
    for b in range(x.shape[0]):
        order = torch.argsort(x[b].flatten())
        assert torch.all(torch.diff(xa[b].flatten()[order]) >= -1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"interpolation": "nearest"}, r"interpolation must be one of \(.bicubic., .bilinear.\)"),
    ({"elastic_grid": 1}, "elastic_grid must be >= 2"),
    ({"contrast": 1.5}, "contrast must be in"),
])  # fmt: skip
def test_bad_augment_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)


def test_margin_covers_rotation_shift_and_elastic():
    assert AugmentConfig().margin(572) == 0
    m = PAPER_AUG.margin(572)
    assert m >= 286 * (math.sqrt(2) - 1) + 16 + 40
    assert np.isfinite(m)


def test_label_grid_continues_the_affine_grid_past_the_tile():
    from biounet.augment import label_grid_of

    cfg = AugmentConfig(rotate=True, shift=True)
    params = draw_transforms(3, cfg, torch.Generator().manual_seed(4))
    small = sampling_grid(params, cfg, 40, 80, torch.device("cpu"))
    big = sampling_grid(params, cfg, 44, 80, torch.device("cpu"))  # 2 more pixels a side
    torch.testing.assert_close(label_grid_of(small, 44), big, atol=1e-5, rtol=0)
    torch.testing.assert_close(label_grid_of(small, 36), big[:, 4:-4, 4:-4], atol=1e-5, rtol=0)


def test_zoom_scales_the_tile_and_stays_inside_the_margin():
    cfg = AugmentConfig(flip=False, rot90=False, scale=True, scale_range=0.5,
                        interpolation="bilinear")  # fmt: skip
    S = 32
    R = S + 2 * cfg.margin(S)
    assert cfg.margin(S) >= (S - 1) / 2 * 0.5  # a zoomed-out tile reads 1.5 x its extent
    ramp = torch.arange(R, dtype=torch.float32).expand(R, R)  # x coordinate of each pixel
    x = ramp.expand(64, 1, R, R).contiguous()
    y = torch.zeros(64, R, R, dtype=torch.long)
    params = draw_transforms(64, cfg, torch.Generator().manual_seed(3))
    s = params["scale"]
    assert s.min() >= 1 / 1.5 - 1e-6 and s.max() <= 1.5 + 1e-6
    assert s.min() < 0.8 and s.max() > 1.25  # log-uniform: both ways
    xa, _, _ = augment(x, y, None, cfg, torch.Generator().manual_seed(3), tile=S)
    # bilinear sampling of a linear ramp is exact: a step of one output pixel reads s
    # source pixels further on, centred on the region (no border clamping)
    torch.testing.assert_close(xa[:, 0].diff(dim=-1), s.view(-1, 1, 1).expand(64, S, S - 1),
                               atol=1e-3, rtol=0)  # fmt: skip
    torch.testing.assert_close(xa[:, 0].mean(dim=(1, 2)), torch.full((64,), (R - 1) / 2),
                               atol=1e-3, rtol=0)  # fmt: skip


def test_no_zoom_keeps_the_random_stream():
    on = draw_transforms(4, AugmentConfig(scale=True), torch.Generator().manual_seed(0))
    off = draw_transforms(4, AugmentConfig(), torch.Generator().manual_seed(0))
    assert torch.equal(off["scale"], torch.ones(4))
    for k in ("dihedral", "angle", "coarse", "gamma"):  # drawn before the zoom factor
        assert torch.equal(on[k], off[k])


@pytest.mark.parametrize("cfg", [AugmentConfig(gray=True), PAPER_AUG])
def test_contrast_inversion_negates_the_drawn_tiles_and_nothing_else(cfg):
    # the same draws with and without inversion: each tile is returned as it was or negated
    # (the image is zero-mean normalised, so negation inverts its contrast); labels and
    # weights are untouched, and the share of negated tiles follows the probability
    B, R = 400, 24
    x = torch.randn(B, 1, R, R)
    y = torch.randint(0, 3, (B, R, R))
    w = torch.rand(B, R, R)
    plain = augment(x, y, w, cfg, torch.Generator().manual_seed(5), tile=16, label_size=8)
    for p in (1.0, 0.3):
        inv = augment(x, y, w, replace(cfg, invert=p), torch.Generator().manual_seed(5),
                      tile=16, label_size=8)  # fmt: skip
        assert torch.equal(inv[1], plain[1]) and torch.equal(inv[2], plain[2])
        same = (inv[0] == plain[0]).flatten(1).all(1)
        negated = (inv[0] == -plain[0]).flatten(1).all(1)
        assert bool((same ^ negated).all())  # no tile is a zero image, so never both
        if p == 1.0:
            assert bool(negated.all())
        else:  # 3 binomial standard deviations
            assert abs(negated.float().mean().item() - p) < 3 * math.sqrt(p * (1 - p) / B)


def test_no_inversion_keeps_the_random_stream():
    on = draw_transforms(4, AugmentConfig(scale=True, invert=0.5), torch.Generator().manual_seed(0))
    off = draw_transforms(4, AugmentConfig(scale=True), torch.Generator().manual_seed(0))
    assert not off["invert"].any()
    for k in ("dihedral", "angle", "coarse", "gamma", "scale"):  # drawn before inversion
        assert torch.equal(on[k], off[k])


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_inversion_probability_is_checked(p):
    with pytest.raises(ValueError, match=r"^invert must be a probability in \[0, 1\], got"):
        AugmentConfig(invert=p)
