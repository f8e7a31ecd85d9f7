import numpy as np
import pytest
import torch

from biounet.io import normalize
from biounet.model import ModelConfig, UNet, valid_input_size
from biounet.tiling import padding_for, predict


def _net(padding, depth=2, out_channels=2, seed=0):
    torch.manual_seed(seed)
    return UNet(
        ModelConfig(
            depth=depth,
            base_channels=4,
            padding=padding,
            dropout=0.0,
            out_channels=out_channels,
            batch_norm=padding == "same",
        )
    ).eval()


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
    image = rng.random((32, 48)).astype(np.float32)
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
