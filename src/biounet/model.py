"""The U-Net and its shape arithmetic.

O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, doi:10.1007/978-3-319-24574-4_28.

The network returns raw logits; softmax / sigmoid live in the losses and in prediction.
With ``padding="valid"`` every 3x3 convolution is unpadded, as in the paper, so the output
is smaller than the input (572 -> 388 for depth 4) and only some input sizes are valid
(``16k + 124`` for depth 4). With ``padding="same"`` the output has the input's size, which
must be a multiple of ``2**depth``. The functions below do this arithmetic without
building a network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .settings import BOOLEAN, at_least, integers, one_of, setting, validate, within

PADDINGS = ("valid", "same")
NORMALIZATIONS = ("zscore", "zscore-bright", "zscore-invert")
# --invert: whether images are negated so that objects are bright (normalization.normalize)
INVERT = {"auto": "zscore-bright", "yes": "zscore-invert", "no": "zscore"}
INVERT_RULE = (
    "auto: negate each image whose median exceeds its mean (dark objects on a bright "
    "background), so the network sees bright objects; yes: negate every image; no: never"
)
UPSAMPLINGS = ("transpose", "bilinear")


def _invert(name: str, model) -> dict:
    """--invert NAME (a key of INVERT): the normalisation it stands for."""
    return {"normalization": INVERT[name]}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`UNet`. Stored in every checkpoint to rebuild the network."""

    in_channels: int = setting(1, rule=integers(1), help="input channels (1: gray-scale)")
    out_channels: int = setting(2, rule=integers(1), help="outputs: 2 = softmax over "
                                "{membrane/background, cell}; 1 = sigmoid")  # fmt: skip
    depth: int = setting(4, rule=integers(1, 8),
                         help="number of 2x2 max-poolings (the paper: 4)")
    base_channels: int = setting(64, rule=integers(1), help="feature channels at the top "
                                 "level, doubled per level")  # fmt: skip
    padding: str = setting("valid", rule=one_of(PADDINGS), help="valid (paper: unpadded "
                           "3x3) or same (zero-padded)")  # fmt: skip
    batch_norm: bool = setting(False, rule=BOOLEAN, help="conv -> BN -> ReLU (paper: no)")
    dropout: float = setting(0.5, rule=within(0, 1, "[)"), help="dropout at the end of the "
                             "contracting path (paper: 0.5)")  # fmt: skip
    upsample: str = setting("transpose", rule=one_of(UPSAMPLINGS), help="transpose (2x2 "
                            "up-conv, paper) or bilinear (+1x1 conv)")  # fmt: skip
    normalization: str = setting(
        "zscore", rule=one_of(NORMALIZATIONS), commands=("train",), flag="--invert",
        choices=tuple(INVERT), to_field=_invert,
        help="input normalisation (normalization.normalize), named by --invert: " + INVERT_RULE
        + "; the model stores it (default: the preset's; nuclei: auto, the others: no)")
    diameter: float = setting(
        0.0, rule=at_least(0, " pixels"),
        help="median equivalent diameter (pixels, sqrt(4 area / pi)) of the labelled objects "
        "the network was trained on, where it learnt instances; 0 = not known. Prediction "
        "with a diameter (InferenceConfig.diameter) rescales images so their objects have "
        "this size")
    channels: tuple[int, ...] | None = setting(
        None, help="feature channels of each level, top to bottleneck (depth + 1 values), "
        "where they should not simply double: e.g. (16, 32, 64, 256, 512) widens only the "
        "cheap low-resolution levels. None = base_channels doubled per level. base_channels "
        "follows channels[0]")

    def __post_init__(self):
        if isinstance(self.channels, (list, tuple)):  # a list from config.json
            object.__setattr__(self, "channels", tuple(self.channels))
            if self.channels and isinstance(self.channels[0], int):
                object.__setattr__(self, "base_channels", self.channels[0])
        check_model_config(self)

    @property
    def widths(self) -> list[int]:
        """Feature channels of each level, top (0) to bottleneck (depth)."""
        if self.channels is not None:
            return list(self.channels)
        return [self.base_channels * 2**level for level in range(self.depth + 1)]

    def to_dict(self) -> dict:
        return asdict(self)


def check_model_config(cfg: ModelConfig) -> None:
    """Raise ValueError with the bad value if ``cfg`` cannot describe a network."""
    validate(cfg)
    if cfg.channels is not None:
        c = cfg.channels  # a tuple after __post_init__; anything else (one number) is wrong
        ok = isinstance(c, tuple) and len(c) == cfg.depth + 1
        if not ok or not all(isinstance(n, int) and n >= 1 for n in c):
            raise ValueError(
                f"channels must be {cfg.depth + 1} positive integers (depth {cfg.depth} + 1 "
                f"levels), got {list(c) if isinstance(c, tuple) else c!r}"
            )


# ---------------------------------------------------------------------------------------
# Shape arithmetic (pure integer functions; hypothesis-tested against real forward passes)


def _valid_output(size: int, depth: int) -> int | None:
    """Output edge of a valid-padding U-Net for input edge ``size``; None if invalid."""
    for _ in range(depth):  # contracting path: two unpadded convs, then a 2x2 pool
        size -= 4
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= 4  # bottleneck convs
    if size < 1:
        return None
    for _ in range(depth):  # expanding path: 2x up-conv, then two unpadded convs
        size = 2 * size - 4
        if size < 1:
            return None
    return size


def check_input_size(size: int, depth: int = 4, padding: str = "valid", what: str = "input size"):
    """ValueError, naming the nearest valid sizes, unless ``size`` is a valid input edge."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if is_valid_input_size(size, depth, padding):
        return
    minimum = min_input_size(depth, padding)
    if size < minimum:
        problem = f"is smaller than the network's minimum {minimum}"
    elif padding == "same":
        problem = f"is not a multiple of 2**depth = {2**depth}"
    else:
        problem = f"is not valid (valid sizes are {2**depth}k + {8 * 2**depth - 4})"
    raise ValueError(
        f"{what} {size} {problem} (depth {depth}, {padding} padding); "
        f"nearest valid: {_nearest_text(size, depth, padding)}"
    )


def output_size(input_size: int, depth: int = 4, padding: str = "valid") -> int:
    """Output edge (pixels) of the network for a square input edge ``input_size``.

    Raises ValueError naming the nearest valid input sizes if ``input_size`` is not valid.
    """
    check_input_size(input_size, depth, padding)
    return input_size if padding == "same" else _valid_output(input_size, depth)


def border(depth: int = 4, padding: str = "valid") -> int:
    """Pixels lost on each side by a valid-padding network: (input - output) / 2.

    92 for depth 4 (572 -> 388). 0 for same padding.
    """
    if padding == "same":
        return 0
    # Each conv at level l (0 = top) removes 2**l pixels of top-level resolution per side;
    # level l < depth has 4 convs (2 down, 2 up), the bottleneck 2.
    return sum(4 * 2**level for level in range(depth)) + 2 * 2**depth


def is_valid_input_size(size: int, depth: int = 4, padding: str = "valid") -> bool:
    """True if a square input of edge ``size`` passes through the network unchanged in shape."""
    if padding == "same":
        return size >= 1 and size % 2**depth == 0
    return _valid_output(size, depth) is not None


def min_input_size(depth: int = 4, padding: str = "valid") -> int:
    """Smallest valid input edge (188 for depth 4 valid, 16 for depth 4 same)."""
    if padding == "same":
        return 2**depth
    size = 1
    while not is_valid_input_size(size, depth, padding):
        size += 1
    return size


def valid_input_size(output: int, depth: int = 4, padding: str = "valid") -> int:
    """Smallest valid input edge whose output edge is at least ``output`` pixels.

    For depth 4 valid padding: ``valid_input_size(388) == 572`` and in general the result
    is 16k + 124 with output = input - 184.
    """
    if output < 1:
        raise ValueError(f"output size must be >= 1, got {output}")
    size = max(output, min_input_size(depth, padding))
    if padding == "valid":
        size = max(size, output + 2 * border(depth))
    while not is_valid_input_size(size, depth, padding):
        size += 1
    return size


def nearest_valid_input_sizes(size: int, depth: int = 4, padding: str = "valid") -> list[int]:
    """The valid input edges just below and just above ``size`` (one if ``size`` is valid)."""
    if is_valid_input_size(size, depth, padding):
        return [size]
    below = size - 1
    while below >= 1 and not is_valid_input_size(below, depth, padding):
        below -= 1
    above = max(size + 1, min_input_size(depth, padding))
    while not is_valid_input_size(above, depth, padding):
        above += 1
    return ([below] if below >= 1 else []) + [above]


def nearest_valid_input_size(size: int, depth: int = 4, padding: str = "valid") -> int:
    """The valid input edge closest to ``size`` (ties go to the larger)."""
    return min(nearest_valid_input_sizes(size, depth, padding), key=lambda s: (abs(s - size), -s))


def _nearest_text(size: int, depth: int, padding: str) -> str:
    return " or ".join(str(s) for s in nearest_valid_input_sizes(size, depth, padding))


# ---------------------------------------------------------------------------------------
# Network


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (BN and) ReLU: (B, Cin, H, W) -> (B, Cout, H', W').

    H' = H - 4 for valid padding, H for same padding.
    """

    def __init__(self, cin: int, cout: int, padding: str, batch_norm: bool):
        pad = 1 if padding == "same" else 0
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, 3, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Down(nn.Module):
    """2x2 max-pool then :class:`DoubleConv`: (B, C, H, W) -> (B, 2C, H/2 - 4, W/2 - 4) (valid)."""

    def __init__(self, cin: int, cout: int, padding: str, batch_norm: bool):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(cin, cout, padding, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


def _layout(t: torch.Tensor) -> torch.memory_format:
    """channels_last if ``t`` is stored so (and not also plain contiguous), else contiguous."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _CropConcat(torch.autograd.Function):
    """``cat([skip[..., dy:dy + h, dx:dx + w], x], dim=1)`` with (h, w) = x's size.

    The same values and gradients as slicing and concatenating with autograd, but the
    skip's gradient keeps the skip's memory layout. Autograd's slice backward writes into a
    plain contiguous zero tensor, so with channels_last features (bf16 on the CPU, GPUs)
    the gradient flowing into the contracting path changed layout at every level and the
    additions, ReLU backwards and convolutions behind it ran on mixed strides. Reverse mode
    only: forward-mode autodiff (``torch.func.jvp``) is not defined for it.
    """

    @staticmethod
    def forward(ctx, skip, x, dy: int, dx: int):
        ctx.skip_shape, ctx.crop = skip.shape, (dy, dx)
        ctx.skip_layout = _layout(skip)
        h, w = x.shape[-2:]
        return torch.cat([skip[..., dy : dy + h, dx : dx + w], x], dim=1)

    @staticmethod
    def backward(ctx, grad):
        cs = ctx.skip_shape[1]
        g_skip, g_x = grad[:, :cs], grad[:, cs:]
        (dy, dx), (h, w) = ctx.crop, grad.shape[-2:]
        if not ctx.needs_input_grad[0]:
            g_skip = None
        elif tuple(g_skip.shape) != tuple(ctx.skip_shape):
            full = torch.empty(ctx.skip_shape, dtype=grad.dtype, device=grad.device,
                               memory_format=ctx.skip_layout).zero_()  # fmt: skip
            full[..., dy : dy + h, dx : dx + w] = g_skip
            g_skip = full
        return g_skip, g_x, None, None


class Up(nn.Module):
    """Up-sample x2 halving channels, crop the skip to match, concatenate, :class:`DoubleConv`.

    ``x``: (B, C, h, w) from below; ``skip``: (B, C/2, H, W) with H >= 2h from the
    contracting path; returns (B, C/2, 2h - 4, 2w - 4) for valid padding.
    """

    def __init__(self, cin: int, cout: int, padding: str, batch_norm: bool, upsample: str):
        super().__init__()
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cout, 1),
            )
        self.conv = DoubleConv(2 * cout, cout, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = (skip.shape[-2] - x.shape[-2]) // 2
        dx = (skip.shape[-1] - x.shape[-1]) // 2
        if torch.is_grad_enabled() and (skip.requires_grad or x.requires_grad):
            return self.conv(_CropConcat.apply(skip, x, dy, dx))  # centre crop, concatenate
        # no gradient (inference, export to ONNX / TorchScript): the same values, plain ops
        h, w = x.shape[-2:]
        return self.conv(torch.cat([skip[..., dy : dy + h, dx : dx + w], x], dim=1))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015), Fig. 1 generalised to any depth and width.

    Args (all in :class:`ModelConfig`):
        in_channels: input channels (default 1).
        out_channels: logit channels; 2+ for softmax classes, 1 for a sigmoid (default 2).
        depth: number of poolings (default 4, the paper's).
        base_channels: channels of the first level, doubled at each level (default 64).
        channels: or each level's channels, top to bottleneck (depth + 1 values).
        padding: "valid" (default, unpadded convs, output smaller than input) or "same".
        batch_norm: BatchNorm after every conv (default False, as in the paper).
        dropout: drop probability at the end of the contracting path (default 0.5). Applied,
            as in the authors' released Caffe model, to the deepest encoder level and to the
            bottleneck.
        upsample: "transpose" (2x2 up-convolution, default) or "bilinear" + 1x1 conv.

    Input (B, in_channels, H, W) float; output (B, out_channels, H', W') logits with
    H' = ``output_size(H, depth, padding)``. Weights are drawn from a Gaussian with
    std sqrt(2 / N), N the number of inputs of one unit (He et al.), biases are zero.
    The paper configuration has exactly 31,030,658 parameters.
    """

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        super().__init__()
        cfg = config if config is not None else ModelConfig(**kwargs)
        self.config = cfg
        c = cfg.widths
        self.inc = DoubleConv(cfg.in_channels, c[0], cfg.padding, cfg.batch_norm)
        self.downs = nn.ModuleList(
            Down(c[i], c[i + 1], cfg.padding, cfg.batch_norm) for i in range(cfg.depth)
        )
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            Up(c[i + 1], c[i], cfg.padding, cfg.batch_norm, cfg.upsample)
            for i in reversed(range(cfg.depth))
        )
        self.head = nn.Conv2d(c[0], cfg.out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He initialisation as in the paper: N(0, sqrt(2 / N)), zero biases.

        N is the number of incoming connections of one unit: k*k*in_channels for a k x k
        convolution; in_channels for the 2x2 stride-2 up-convolution, where each output
        pixel sees exactly one input pixel.
        """
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                fan_in = m.in_channels * (m.kernel_size[0] // m.stride[0]) ** 2
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            else:
                continue
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
                if m.bias is not None:
                    m.bias.zero_()

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError with a one-line reason if ``x`` cannot pass through the network."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected input (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        for edge in x.shape[-2:]:
            check_input_size(edge, cfg.depth, cfg.padding, what="input edge")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = [self.inc(x)]  # x0: (B, c0, H - 4, W - 4) for valid padding
        for i, down in enumerate(self.downs):
            feat = down(skips[-1])  # x_{i+1}: (B, c_{i+1}, ...)
            if i >= len(self.downs) - 2:  # end of the contracting path
                feat = self.dropout(feat)
            skips.append(feat)
        x = skips.pop()  # bottleneck
        for up in self.ups:  # u_depth .. u_1
            x = up(x, skips.pop())
        return self.head(x)  # (B, out_channels, H', W') logits


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
