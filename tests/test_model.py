import math

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from biounet.model import (
    ModelConfig,
    UNet,
    border,
    count_parameters,
    is_valid_input_size,
    min_input_size,
    nearest_valid_input_sizes,
    output_size,
    valid_input_size,
)
from biounet.presets import PRESETS


@pytest.mark.slow
def test_paper_preset_is_572_to_388_with_31030658_parameters():
    p = PRESETS["paper"]
    model = UNet(p.model)
    assert count_parameters(model) == 31_030_658
    assert p.train.tile == 572
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


@pytest.mark.slow
def test_blog_preset_is_512_to_512_with_one_output():
    p = PRESETS["blog"]
    model = UNet(p.model).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 512, 512))
    assert out.shape == (1, 1, 512, 512)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_valid_sizes_for_depth_4_are_16k_plus_124_and_lose_184():
    valid = [s for s in range(1, 1200) if is_valid_input_size(s, 4, "valid")]
    assert valid == [16 * k + 124 for k in range(4, (1200 - 124) // 16 + 1) if 16 * k + 124 < 1200]
    assert all(output_size(s) == s - 184 for s in valid)
    assert border(4) == 92 and min_input_size(4) == 188
    assert valid_input_size(388) == 572 and valid_input_size(389) == 588


def test_invalid_size_error_names_the_nearest_valid_sizes():
    with pytest.raises(ValueError, match="nearest valid: 556 or 572"):
        output_size(570)
    with pytest.raises(ValueError, match="500 is not a multiple of 2\\*\\*depth = 16.*496 or 512"):
        output_size(500, 4, "same")
    assert nearest_valid_input_sizes(572) == [572]


def test_forward_rejects_small_and_invalid_inputs_with_one_line():
    model = UNet(ModelConfig(base_channels=2, depth=4))
    with pytest.raises(ValueError, match="smaller than the network's minimum 188"):
        model(torch.zeros(1, 1, 100, 188))
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        model(torch.zeros(1, 3, 188, 188))


def _raw_forward(model, x):
    """Forward without the size check, to compare arithmetic against real layers."""
    skips = [model.inc(x)]
    for down in model.downs:
        skips.append(down(skips[-1]))
    h = skips.pop()
    for up in model.ups:
        h = up(h, skips.pop())
    return model.head(h)


@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(1, 4), extra=st.integers(0, 40), padding=st.sampled_from(["valid", "same"])
)
def test_shape_arithmetic_matches_real_forward_passes(depth, extra, padding):
    model = UNet(ModelConfig(depth=depth, base_channels=1, padding=padding, dropout=0.0)).eval()
    size = min_input_size(depth, padding) + extra
    valid = is_valid_input_size(size, depth, padding)
    if valid:
        with torch.no_grad():
            out = _raw_forward(model, torch.zeros(1, 1, size, size))
        assert out.shape[-1] == output_size(size, depth, padding)
    else:
        with pytest.raises(ValueError):
            output_size(size, depth, padding)
    # valid_input_size is the smallest valid input reaching a wanted output
    wanted = 1 + extra
    s = valid_input_size(wanted, depth, padding)
    assert output_size(s, depth, padding) >= wanted
    assert not any(
        is_valid_input_size(t, depth, padding) and output_size(t, depth, padding) >= wanted
        for t in range(1, s)
    )


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_variants_keep_the_shape_arithmetic(upsample, batch_norm):
    cfg = ModelConfig(depth=3, base_channels=4, upsample=upsample, batch_norm=batch_norm)
    size = valid_input_size(20, 3)
    with torch.no_grad():
        out = UNet(cfg).eval()(torch.zeros(2, 1, size, size))
    assert out.shape == (2, 2, output_size(size, 3), output_size(size, 3))


def test_he_init_std_is_sqrt_2_over_fan_in():
    model = UNet(PRESETS["paper"].model)
    checked = 0
    for m in model.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            fan_in = m.in_channels  # 2x2 stride 2: each output pixel sees one input pixel
        elif isinstance(m, torch.nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            continue
        w = m.weight.detach().double()
        expected = math.sqrt(2.0 / fan_in)
        n = w.numel()
        # the sample std of n Gaussian draws has relative standard error 1 / sqrt(2n)
        assert abs(w.std().item() / expected - 1) < 5 / math.sqrt(2 * n) + 1e-3
        assert abs(w.mean().item()) < 5 * expected / math.sqrt(n)
        assert torch.count_nonzero(m.bias) == 0
        checked += 1
    assert checked == 18 + 1 + 4  # 3x3 convs, the 1x1 head, the up-convolutions


def test_dropout_is_active_in_training_only():
    model = UNet(tiny_config("valid", dropout=0.5))
    x = torch.randn(1, 1, valid_input_size(8, 2), valid_input_size(8, 2))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"padding": "reflect"}, "padding must be one of"),
        ({"depth": 0}, "depth must be in 1..8"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"upsample": "nearest"}, "upsample must be one of"),
    ],
)
def test_bad_model_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_per_level_channels_build_those_layers_and_keep_the_shapes():
    cfg = ModelConfig(depth=2, channels=[3, 5, 11], padding="same", dropout=0.0)
    assert cfg.channels == (3, 5, 11) and cfg.base_channels == 3 and cfg.widths == [3, 5, 11]
    model = UNet(cfg).eval()
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    convs = [m for m in model.modules() if isinstance(m, kinds)]
    # inc 1->3, 3->3; down 3->5, 5->5; down 5->11, 11->11; up-convs 11->5 and 5->3; up convs
    # (5+5)->5, 5->5 and (3+3)->3, 3->3; head 3->2
    assert [(m.in_channels, m.out_channels) for m in convs] == [
        (1, 3), (3, 3), (3, 5), (5, 5), (5, 11), (11, 11), (11, 5), (10, 5), (5, 5),
        (5, 3), (6, 3), (3, 3), (3, 2),
    ]  # fmt: skip
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 12, 12)).shape == (1, 2, 12, 12)
    # the doubling rule written out is the same network
    a, b = ModelConfig(depth=2, base_channels=4), ModelConfig(depth=2, channels=(4, 8, 16))
    assert count_parameters(UNet(a)) == count_parameters(UNet(b))


@pytest.mark.parametrize("channels", [(4, 8), (4, 8, 16, 0), (4, 8.5, 16), 16])
def test_per_level_channels_must_match_the_depth(channels):
    with pytest.raises(ValueError, match="channels must be 3 positive integers"):
        ModelConfig(depth=2, channels=channels)


def test_forward_flops_count_the_paper_network():
    from biounet.bench import forward_flops

    tiny = UNet(ModelConfig(depth=1, base_channels=2, padding="same", dropout=0.0))
    # inc: 1->2 and 2->2 3x3 convs at 8x8; down: 2->4, 4->4 at 4x4; up-conv 4->2 (2x2) from
    # 4x4; up: 4->2, 2->2 at 8x8; head 2->2 (1x1) at 8x8
    macs = (64 * 2 * 1 * 9 + 64 * 2 * 2 * 9 + 16 * 4 * 2 * 9 + 16 * 4 * 4 * 9
            + 16 * 4 * 2 * 4 + 64 * 2 * 4 * 9 + 64 * 2 * 2 * 9 + 64 * 2 * 2)  # fmt: skip
    assert forward_flops(tiny, torch.zeros(1, 1, 8, 8)) == 2 * macs


def test_layout_is_channels_last_only_where_it_is_fast():
    from biounet.device import memory_format

    cpu = torch.device("cpu")
    assert memory_format(cpu, "bf16") == torch.channels_last
    assert memory_format(cpu, "fp32") == torch.contiguous_format  # 1.8x faster on Zen 3
    assert memory_format(torch.device("cuda"), "fp32") == torch.channels_last


def _reference_crop_concat(skip, x):
    """The plain autograd version: centre-crop by slicing, then concatenate."""
    dy = (skip.shape[-2] - x.shape[-2]) // 2
    dx = (skip.shape[-1] - x.shape[-1]) // 2
    return torch.cat([skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]], x], dim=1)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [9, 14])  # cropped (9 < 14) and not (14)
def test_crop_concat_matches_autograd_slicing_and_keeps_the_gradient_layout(layout, dtype, size):
    from biounet.model import _CropConcat

    g = torch.Generator().manual_seed(0)
    skip0 = torch.randn(2, 5, 14, 14, generator=g).to(dtype).contiguous(memory_format=layout)
    x0 = torch.randn(2, 3, size, size, generator=g).to(dtype).contiguous(memory_format=layout)
    upstream = torch.randn(2, 8, size, size, generator=g).to(dtype)
    upstream = upstream.contiguous(memory_format=layout)
    grads, outs, layouts = [], [], []
    for fn in (lambda s, x: _CropConcat.apply(s, x, (14 - size) // 2, (14 - size) // 2),
               _reference_crop_concat):  # fmt: skip
        skip, x = skip0.clone().requires_grad_(), x0.clone().requires_grad_()
        inner = skip * 1  # not a leaf: its gradient arrives as the function returns it
        inner.register_hook(lambda g: layouts.append(g.is_contiguous(memory_format=layout)))
        out = fn(inner, x)
        out.backward(upstream)
        outs.append(out)
        grads.append((skip.grad, x.grad))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    # cropped: the skip's gradient is stored as the skip is, where autograd's slice
    # backward makes it plain contiguous
    if size < 14:
        assert layouts[0]
        assert layouts[1] == (layout == torch.contiguous_format)


def test_crop_concat_of_mixed_dtypes_returns_each_gradient_in_its_input_dtype_and_layout():
    from biounet.model import _CropConcat

    cl = torch.channels_last
    skip = torch.randn(1, 4, 12, 12).contiguous(memory_format=cl).requires_grad_()
    x = torch.randn(1, 2, 8, 8).to(torch.bfloat16).contiguous(memory_format=cl).requires_grad_()
    inner = skip * 1
    seen = []
    inner.register_hook(lambda g: seen.append((g.dtype, g.is_contiguous(memory_format=cl))))
    out = _CropConcat.apply(inner, x, 2, 2)
    assert out.dtype == torch.float32 and out.shape == (1, 6, 8, 8)
    out.backward(torch.ones_like(out))
    assert seen == [(torch.float32, True)]
    assert x.grad.dtype == torch.bfloat16
    expected = torch.zeros(1, 4, 12, 12)
    expected[..., 2:10, 2:10] = 1
    assert torch.equal(skip.grad, expected) and torch.equal(x.grad.float(), torch.ones(1, 2, 8, 8))


def test_valid_padding_network_gradients_stay_channels_last():
    """Every gradient reaching a skip connection keeps the features' channels_last layout
    (a mixed layout there made the paper network's backward pass slow on the CPU)."""
    from biounet.model import Up

    model = UNet(tiny_config("valid"))
    model = model.to(memory_format=torch.channels_last)
    seen = []
    original = Up.forward

    def forward(self, x, skip):
        cl = torch.channels_last
        skip.register_hook(lambda g: seen.append(g.is_contiguous(memory_format=cl)))
        return original(self, x, skip)

    x = torch.randn(1, 1, 44, 44).contiguous(memory_format=torch.channels_last)
    try:
        Up.forward = forward
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().sum().backward()
    finally:
        Up.forward = original
    assert seen == [True, True]
