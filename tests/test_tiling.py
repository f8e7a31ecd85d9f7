import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_unet

from biounet.model import ModelConfig, UNet, valid_input_size
from biounet.normalization import normalize
from biounet.tiling import padding_for, predict


def _net(padding, out_channels=2, seed=0):
    return tiny_unet(padding, seed=seed, out_channels=out_channels, batch_norm=padding == "same")


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 60), (37, 23), (64, 64)])
def test_any_image_size_gives_a_map_of_the_same_size(padding, shape, rng):
    image = rng.integers(0, 255, shape).astype(np.uint8)
    prob = predict(_net(padding), image, precision="fp32")
    assert prob.shape == shape and prob.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1))


def _reflect(i: int, n: int) -> int:
    """Slow reference for mirroring without repeating the edge pixel."""
    period = max(1, 2 * n - 2)
    i %= period
    return i if i < n else period - i


@pytest.mark.parametrize("shape", [(37, 23), (3, 50)])
def test_valid_padding_prediction_is_the_network_on_mirrored_context(rng, shape):
    model = _net("valid")  # depth 2: border 20
    image = rng.random(shape).astype(np.float32)
    H, W = shape
    rows = [_reflect(i - 20, H) for i in range(valid_input_size(H, 2))]
    cols = [_reflect(j - 20, W) for j in range(valid_input_size(W, 2))]
    padded = normalize(image)[np.ix_(rows, cols)]
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(padded)[None, None]), 1)[0, 1, :H, :W]
    np.testing.assert_allclose(predict(model, image, precision="fp32"), ref.numpy(), atol=1e-5)


def test_padding_for_covers_the_image():
    for size in (1, 5, 100, 512):
        before, after = padding_for(size, 4, "valid")
        assert before == 92
        assert (before + size + after - 184) >= size
        before, after = padding_for(size, 4, "same")
        assert (before + size + after) % 16 == 0 and abs(before - after) <= 1


def test_same_padding_equals_a_direct_forward_pass_on_a_valid_size(rng):
    model = _net("same", out_channels=1)
    image = rng.random((48, 48)).astype(np.float32)  # one tile covers it exactly
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(normalize(image))[None, None]))[0, 0].numpy()
    np.testing.assert_allclose(predict(model, image, precision="fp32"), ref, atol=1e-6)


def test_predict_restores_training_mode(rng):
    model = _net("same").train()
    predict(model, rng.random((16, 16)), precision="fp32")
    assert model.training


def test_multiclass_models_return_class_probabilities(rng):
    model = _net("same", out_channels=3)
    probs = predict(model, rng.random((20, 20)), precision="fp32")
    assert probs.shape == (3, 20, 20)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Overlap-tile inference

from biounet.tiling import (  # noqa: E402
    gaussian_window,
    plan_tiles,
    probabilities,
    tiled_probabilities,
    unet_predictor,
)


def _paper_shaped(seed=0, base=2):
    torch.manual_seed(seed)
    return UNet(ModelConfig(depth=4, base_channels=base, padding="valid", dropout=0.5)).eval()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(300, 211), (5, 600), (1, 1), (223, 223)])
@pytest.mark.parametrize("tile", [204, 236, 316])
def test_valid_tiling_equals_one_pass_over_the_whole_padded_image(
    rng, shape, tile, whole_image_probabilities
):
    model = _paper_shaped()
    x = normalize(rng.random(shape).astype(np.float32))
    plan = plan_tiles(model.config, shape, tile=tile, precision="fp32")
    assert plan.tile == tile and plan.stride % 16 == 0 and plan.stride <= plan.out
    with torch.inference_mode():
        tiled = tiled_probabilities(unet_predictor(model, "fp32"), x, plan)
        whole = whole_image_probabilities(model, x, "fp32")
    assert tiled.shape == (1, *shape)
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)


def test_same_padding_blending_leaves_no_seam_on_a_constant_image():
    torch.manual_seed(0)
    model = UNet(ModelConfig(depth=3, base_channels=4, padding="same", batch_norm=True,
                             dropout=0.0)).eval()  # fmt: skip
    with torch.no_grad():  # give the batch norms non-trivial statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
    image = np.full((200, 260), 3.0, np.float32)
    image[::7] += 1  # a periodic pattern, so the output is not constant either
    plan = plan_tiles(model.config, image.shape, tile=64, precision="fp32")
    assert plan.stride < plan.tile  # overlapping tiles
    with torch.inference_mode():
        out = tiled_probabilities(unet_predictor(model, "fp32"), normalize(image), plan)[0]
    # the seams: columns where one tile ends and the next begins, in image coordinates
    step = np.abs(np.diff(out, axis=1))
    m = (plan.tile - plan.stride) // 2
    seam_cols = [c for c in range(step.shape[1]) if (c + m) % plan.stride in (0, plan.stride - 1)]
    inner_cols = [c for c in range(step.shape[1]) if c not in seam_cols]
    assert step[:, seam_cols].max() <= step[:, inner_cols].max() + 1e-6


def test_same_padding_tiles_match_a_whole_pass_in_the_interior(rng, whole_image_probabilities):
    model = _net("same")
    image = rng.random((160, 160)).astype(np.float32)
    x = normalize(image)
    plan = plan_tiles(model.config, x.shape, tile=96, precision="fp32")
    with torch.inference_mode():
        tiled = tiled_probabilities(unet_predictor(model, "fp32"), x, plan)
        whole = whole_image_probabilities(model, x, "fp32")
    # a same-padding network sees zeros at every tile edge, so tiles cannot equal one pass
    # exactly; the Gaussian blend keeps the interior close (documented tolerance: mean
    # absolute difference < 0.02; on the trained fast model 0.006 with 99.4 % equal masks)
    d = np.abs(tiled - whole)[:, 16:-16, 16:-16]
    assert d.mean() < 0.02
    assert ((tiled > 0.5) == (whole > 0.5))[:, 16:-16, 16:-16].mean() > 0.97


def test_tta_is_exactly_equivariant(rng):
    model = _paper_shaped(base=2)
    image = rng.random((40, 56)).astype(np.float32)
    base = probabilities(model, image, precision="fp32", tta=True)[0]
    for k, flip in ((1, False), (2, True), (3, False)):
        t = np.rot90(image, k)
        t = np.fliplr(t) if flip else t
        out = probabilities(model, np.ascontiguousarray(t), precision="fp32", tta=True)[0]
        ref = np.rot90(base, k)
        ref = np.fliplr(ref) if flip else ref
        np.testing.assert_allclose(out, ref, atol=1e-5)  # float rounding of conv kernels


def test_tta_of_a_symmetric_input_is_symmetric(rng):
    model = _paper_shaped(base=2)
    half = rng.random((30, 15)).astype(np.float32)
    image = np.concatenate([half, half[:, ::-1]], axis=1)  # left-right symmetric
    out = probabilities(model, image, precision="fp32", tta=True)[0]
    np.testing.assert_allclose(out, out[:, ::-1], atol=1e-6)


def test_auto_tile_fits_the_memory_budget_and_batches_small_tiles():
    from biounet.presets import PRESETS
    from biounet.tiling import activation_bytes

    paper = PRESETS["paper"].model
    plan = plan_tiles(paper, (8192, 8192), precision="bf16", memory_mb=1024)
    assert activation_bytes(paper, plan.tile, "bf16") <= 1024 * 2**20
    assert plan.tile >= 572 and (plan.tile - 124) % 16 == 0
    fast = PRESETS["fast"].model
    small = plan_tiles(fast, (512, 512), precision="bf16")
    assert small.tile == 512 and small.batch >= 1
    assert plan_tiles(fast, (4000, 4000), tile=500, precision="bf16").tile == 496


def test_gaussian_window_is_positive_and_peaks_in_the_centre():
    w = gaussian_window(64)
    assert w.min() >= 1e-3 and w[31, 31] == w.max() == 1.0 and w.dtype == np.float32


def test_overlap_is_configurable_and_checked(rng):
    model = _net("same")
    image = rng.random((100, 100)).astype(np.float32)
    a = plan_tiles(model.config, image.shape, tile=48, overlap=0.25)
    b = plan_tiles(model.config, image.shape, tile=48, overlap=0.5)
    assert b.stride < a.stride
    assert predict(model, image, tile=48, overlap=0.5, precision="fp32").shape == (100, 100)
    with pytest.raises(ValueError, match="overlap must be in"):
        plan_tiles(model.config, image.shape, overlap=1.0)


# ---------------------------------------------------------------------------------------
# The core over any predictor: predictors whose answers are known (MONAI's `data + 1`)

from dataclasses import replace  # noqa: E402

from biounet.tiling import TilePlan  # noqa: E402


def _small_plan(padding, shape, batch=None, overlap=0.25):
    """A depth-2 plan with the smallest usable tiles, so an odd image needs many of them."""
    cfg = tiny_config(padding)
    plan = plan_tiles(cfg, shape, tile=44 if padding == "valid" else 16, overlap=overlap)
    return plan if batch is None else replace(plan, batch=batch)


def _cropped(x, plan):
    """The centre (B, 1, out, out) of (B, 1, tile, tile) tiles: what a valid network sees."""
    b = (plan.tile - plan.out) // 2
    return x[:, :, b : b + plan.out, b : b + plan.out]


def _recording(fn, plan, calls):
    """``fn`` as a predictor that records the shape and dtype of every batch it is given."""

    def predictor(x):
        calls.append((tuple(x.shape), x.dtype))
        return fn(_cropped(x, plan))

    return predictor


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("shape", [(37, 53), (130, 97), (1, 41), (29, 1), (1, 1)])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_tiling_a_plus_one_predictor_gives_the_image_plus_one_exactly(rng, padding, shape, tta):
    # integer-valued float32: every sum and mean below is exact, so must be the result. Valid
    # tiles are copied; same-padding tiles are blended by a running weighted mean that adds
    # exactly 0 where a tile agrees with what is there, and here all tiles agree.
    image = rng.integers(-1000, 1000, shape).astype(np.float32)
    plan = _small_plan(padding, shape, batch=16)
    calls = []
    out = tiled_probabilities(_recording(lambda x: x + 1, plan, calls), image, plan, tta=tta)
    np.testing.assert_array_equal(out, (image + 1)[None])
    assert out.dtype == np.float32
    assert {dtype for _, dtype in calls} == {torch.float32}
    assert {s[1:] for s, _ in calls} == {(1, plan.tile, plan.tile)}
    if max(shape) > 100:  # many tiles, overlapping where the padding is same
        assert sum(s[0] for s, _ in calls) > (8 if tta else 1) * 20
        assert padding == "valid" or plan.stride < plan.tile


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_same_padding_plus_one_stays_exact_at_any_overlap(rng, overlap):
    image = rng.integers(0, 256, (61, 45)).astype(np.float32)
    plan = _small_plan("same", image.shape, overlap=overlap)
    assert plan.stride < plan.tile
    out = tiled_probabilities(lambda x: x + 1, image, plan)
    np.testing.assert_array_equal(out, (image + 1)[None])


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_channels_keep_their_order_and_place(rng, padding, tta):
    image = rng.integers(-50, 50, (45, 38)).astype(np.float32)
    plan = _small_plan(padding, image.shape, batch=4)
    three = lambda x: torch.cat([x + 1, 2 * x, -x], dim=1)  # noqa: E731
    out = tiled_probabilities(_recording(three, plan, []), image, plan, tta=tta)
    np.testing.assert_array_equal(out, np.stack([image + 1, 2 * image, -image]))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_constant_per_channel_is_returned_exactly_everywhere(padding):
    # not dyadic: only a blend that leaves agreeing tiles untouched returns these bits
    values = torch.tensor([0.1, 0.7, 0.2])
    plan = _small_plan(padding, (50, 71), batch=5)
    const = lambda x: values.view(1, 3, 1, 1).repeat(x.shape[0], 1, *x.shape[2:])  # noqa: E731
    out = tiled_probabilities(_recording(const, plan, []), np.zeros((50, 71), np.float32), plan)
    assert out.shape == (3, 50, 71)
    np.testing.assert_array_equal(out, np.broadcast_to(values.numpy()[:, None, None], out.shape))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_the_predictor_only_ever_gets_whole_tiles_in_full_batches(rng, padding):
    image = rng.random((83, 29)).astype(np.float32)
    plan = _small_plan(padding, image.shape, batch=4)
    calls = []
    tiled_probabilities(_recording(lambda x: x, plan, calls), image, plan)
    sizes = [s[0] for s, _ in calls]
    assert len(sizes) > 2 and all(s[1:] == (1, plan.tile, plan.tile) for s, _ in calls)
    assert sizes[:-1] == [4] * (len(sizes) - 1) and 1 <= sizes[-1] <= 4


def test_two_disagreeing_tiles_blend_smoothly_from_one_to_the_other():
    plan = _small_plan("same", (12, 24), batch=1)  # 16-px tiles, stride 12: two side by side
    calls = []

    def tile_index(x):  # 0 for the first tile, 1 for the second
        calls.append(x.shape)
        return torch.full(x.shape, float(len(calls) - 1))

    out = tiled_probabilities(tile_index, np.zeros((12, 24), np.float32), plan)[0]
    assert len(calls) == 2
    assert out[:, 0].max() == 0 and out[:, -1].min() == 1  # covered by one tile only
    assert np.all(np.diff(out, axis=1) >= 0) and 0 < out[0, 12] < 1  # a ramp, not a step
    np.testing.assert_allclose(out + out[:, ::-1], 1, atol=1e-6)  # the window is symmetric


def test_a_predictor_answering_the_wrong_shape_is_named():
    plan = _small_plan("valid", (30, 30))
    with pytest.raises(ValueError, match=r"predictor returned \(1, 1, 44, 44\) for tiles"):
        tiled_probabilities(lambda x: x + 1, np.zeros((30, 30), np.float32), replace(plan, batch=1))
    with pytest.raises(ValueError, match=r"or \(C, H, W\) image, got shape \(2, 3, 4, 5\)"):
        tiled_probabilities(lambda x: x, np.zeros((2, 3, 4, 5), np.float32), plan)


def test_a_tile_plan_refuses_gaps_and_inconsistent_edges():
    with pytest.raises(ValueError, match="stride must be in \\[1, out = 4\\] \\(no gaps\\), got 8"):
        TilePlan(tile=44, out=4, stride=8, batch=1, padding="valid")
    with pytest.raises(ValueError, match="same padding needs out == tile, got out 12, tile 16"):
        TilePlan(tile=16, out=12, stride=12, batch=1, padding="same")
    with pytest.raises(ValueError, match="valid padding needs 0 < out < tile"):
        TilePlan(tile=44, out=44, stride=4, batch=1, padding="valid")
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same', got 'full'"):
        TilePlan(tile=16, out=16, stride=12, batch=1, padding="full")
    with pytest.raises(ValueError, match="batch must be >= 1, got 0"):
        TilePlan(tile=16, out=16, stride=12, batch=0, padding="same")


# ---------------------------------------------------------------------------------------
# One engine: in memory is block-wise over one block; one declaration of each option

from biounet.mirror import mirrored_window  # noqa: E402
from biounet.tiling import TileOptions, blockwise_probabilities  # noqa: E402


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_in_memory_tiling_is_the_blockwise_engine_whatever_the_blocks(rng, padding):
    image = rng.random((2, 57, 83)).astype(np.float32)  # two channels in, three out
    plan = _small_plan(padding, image.shape[-2:], batch=3)
    wavy = lambda x: torch.cat([torch.sin(3 * x), x * x, x[:, :1] - x[:, 1:]], 1)  # noqa: E731
    predictor = lambda x: wavy(_cropped(x, plan))  # noqa: E731
    ref = tiled_probabilities(predictor, image, plan)
    for block in (None, 1, 30, 10_000):
        out = np.full(ref.shape, np.nan, np.float32)

        def write(y, x, p, out=out):
            assert np.isnan(out[:, y : y + p.shape[1], x : x + p.shape[2]]).all()  # once each
            out[:, y : y + p.shape[1], x : x + p.shape[2]] = p

        read = lambda y0, y1, x0, x1: mirrored_window(image, y0, y1, x0, x1)  # noqa: E731
        blockwise_probabilities(predictor, read, image.shape[-2:], plan, write, block=block)
        np.testing.assert_array_equal(out, ref)



def test_tile_options_hold_the_one_default_of_each_setting():
    import inspect

    from biounet.large import large_probabilities
    from biounet.segment import segment, segment_files

    for f in (predict, probabilities, plan_tiles, segment, segment_files, large_probabilities):
        assert not {"tile", "overlap", "memory_mb"} & set(inspect.signature(f).parameters)
    cfg = tiny_config("same")
    default = plan_tiles(cfg, (300, 300), tile=16)
    assert default == plan_tiles(cfg, (300, 300), TileOptions(tile=16, overlap=0.25))
    assert default != plan_tiles(cfg, (300, 300), tile=16, overlap=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'overlapp'"):
        predict(_net("same"), np.zeros((8, 8)), overlapp=0.5)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\), got -0.1"):
        TileOptions(overlap=-0.1)


@pytest.mark.parametrize("module", ["tiling", "large", "segment", "mirror", "normalization"])
def test_inference_does_not_import_the_training_modules(module):
    import ast
    from pathlib import Path

    import biounet

    tree = ast.parse((Path(biounet.__file__).parent / f"{module}.py").read_text())
    imported = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert not imported & {"dataset", "train", "losses", "targets", "weights"}
