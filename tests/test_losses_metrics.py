import math

import numpy as np
import pytest
import torch

from biounet import metrics
from biounet.losses import segmentation_loss, soft_dice_loss, weighted_bce, weighted_cross_entropy


def test_weighted_cross_entropy_matches_the_formula():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    weight = torch.tensor([[[1.0, 10.0]]])
    p0 = math.exp(2) / (math.exp(2) + 1)  # class 0 at pixel 0
    p1 = math.exp(1) / (1 + math.exp(1))  # class 1 at pixel 1
    expected = (-math.log(p0) * 1 - math.log(p1) * 10) / 2
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(
        expected, rel=1e-6
    )
    assert weighted_cross_entropy(logits, target).item() == pytest.approx(
        (-math.log(p0) - math.log(p1)) / 2, rel=1e-6
    )


def test_bce_matches_the_formula_and_two_class_softmax():
    z = torch.tensor([[[[0.5, -2.0]]]])
    t = torch.tensor([[[1, 0]]])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = -(math.log(s(0.5)) + math.log(1 - s(-2.0))) / 2
    assert weighted_bce(z, t).item() == pytest.approx(expected, rel=1e-6)
    # a 2-class softmax with logits (0, z) is a sigmoid of z
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert segmentation_loss(two, t).item() == pytest.approx(expected, rel=1e-6)
    prob = torch.sigmoid(z[0, 0]).numpy()
    assert metrics.binary_cross_entropy(prob, t[0].numpy()) == pytest.approx(expected, rel=1e-5)


def test_pixel_error_iou_dice_on_a_hand_computed_case():
    label = np.array([[1, 1, 0, 0]])
    prob = np.array([[0.9, 0.2, 0.7, 0.1]])
    assert metrics.pixel_error(prob, label) == 0.5
    pred = prob > 0.5  # {0, 2}; label {0, 1}: intersection 1, union 3
    assert metrics.iou(pred, label) == pytest.approx(1 / 3)
    assert metrics.dice(pred, label) == pytest.approx(2 * 1 / 4)
    empty = np.zeros((2, 2))
    assert metrics.iou(empty, empty) == metrics.dice(empty, empty) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.iou(empty, label)


def _slow_dice(fg: np.ndarray, t: np.ndarray, smooth: float = 1.0) -> float:
    """1 - soft Dice, tile by tile, written out with loops."""
    out = []
    for b in range(fg.shape[0]):
        inter = total = 0.0
        for i in range(fg.shape[1]):
            for j in range(fg.shape[2]):
                inter += fg[b, i, j] * t[b, i, j]
                total += fg[b, i, j] + t[b, i, j]
        out.append(1 - (2 * inter + smooth) / (total + smooth))
    return sum(out) / len(out)


def test_soft_dice_matches_a_slow_reference_for_softmax_and_sigmoid():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (3, 6, 5), generator=g)
    y[2] = 0  # an empty tile
    logits = torch.randn(3, 3, 6, 5, generator=g)
    fg = (1 - torch.softmax(logits, 1)[:, 0]).numpy().astype(np.float64)
    ref = _slow_dice(fg, (y > 0).numpy().astype(np.float64))
    assert soft_dice_loss(logits, y).item() == pytest.approx(ref, abs=1e-6)
    one = torch.randn(3, 1, 6, 5, generator=g)
    ref1 = _slow_dice(torch.sigmoid(one[:, 0]).numpy().astype(np.float64),
                      (y > 0).numpy().astype(np.float64))  # fmt: skip
    assert soft_dice_loss(one, y).item() == pytest.approx(ref1, abs=1e-6)
    # added to the cross entropy with its weight; 0 leaves the cross entropy alone
    ce = segmentation_loss(logits, y)
    assert segmentation_loss(logits, y, dice=0.5).item() == pytest.approx(
        ce.item() + 0.5 * ref, abs=1e-6
    )
    assert torch.equal(segmentation_loss(logits, y, dice=0.0), ce)


def test_soft_dice_is_zero_for_a_perfect_prediction_and_near_one_for_the_inverse():
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:6, 2:6] = 2
    sure = torch.full((1, 3, 8, 8), -30.0)
    sure[:, 0][y == 0] = 30.0  # background where it is
    sure[:, 2][y == 2] = 30.0
    assert soft_dice_loss(sure, y).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.full((1, 3, 8, 8), -30.0)
    wrong[:, 0][y > 0] = 30.0  # background on the object, an object everywhere else
    wrong[:, 1][y == 0] = 30.0
    # no overlap: 1 - smooth / (48 + 16 + smooth)
    assert soft_dice_loss(wrong, y).item() == pytest.approx(1 - 1 / 65, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_ignored_pixels_change_neither_the_loss_nor_its_gradient(channels):
    """A 1x1-conv network: each logit sees only its own pixel, so changing the image and the
    label under ignored pixels may change only their own logits, whose loss weight is 0."""
    from biounet.labels import IGNORE_INDEX

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Conv2d(1, channels, 1)
    x = torch.randn(2, 1, 12, 12, generator=g)
    y = torch.randint(0, max(2, channels), (2, 12, 12), generator=g)
    w = torch.rand(2, 12, 12, generator=g) + 0.5
    ignored = torch.zeros(2, 12, 12, dtype=torch.bool)
    ignored[0, :4] = ignored[1, :, 7:] = True

    def gradient(image, label):
        net.zero_grad()
        loss = segmentation_loss(net(image), label, w, dice=0.5, ignore_index=IGNORE_INDEX)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    labelled = torch.where(ignored, IGNORE_INDEX, y)
    other_x = torch.where(ignored[:, None], torch.randn(2, 1, 12, 12, generator=g) * 9, x)
    loss_a, grad_a = gradient(x, labelled)
    loss_b, grad_b = gradient(other_x, labelled)
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grad_a, grad_b, strict=True):
        assert torch.equal(a, b)
    # the reference: the labelled pixels alone, in the usual formulas (class 0 under the rest)
    logits = net(x).float()
    keep = (~ignored).float()
    y0 = torch.where(ignored, 0, y)
    if channels == 1:
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y0.float(),
                                                                  reduction="none")  # fmt: skip
        fg = torch.sigmoid(logits[:, 0])
    else:
        ce = torch.nn.functional.cross_entropy(logits, y0, reduction="none")
        fg = 1 - torch.softmax(logits, 1)[:, 0]
    t = (y0 > 0).float() * keep
    fg = fg * keep
    dice = 1 - (2 * (fg * t).sum((1, 2)) + 1) / (fg.sum((1, 2)) + t.sum((1, 2)) + 1)
    torch.testing.assert_close(loss_a, (ce * w * keep).mean() + 0.5 * dice.mean())
    # and without the ignore label the same change does move the gradient
    net.zero_grad()
    segmentation_loss(net(other_x), y, w).backward()
    moved = [p.grad.clone() for p in net.parameters()]
    assert not all(torch.allclose(a, b) for a, b in zip(grad_a, moved, strict=True))
