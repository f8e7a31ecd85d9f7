import math

import numpy as np
import pytest
import torch

from biounet import metrics
from biounet.losses import segmentation_loss, weighted_bce, weighted_cross_entropy


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
