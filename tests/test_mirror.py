"""Mirrored context: indices, padded copies and windows are numpy's "reflect" padding,
even where a pad is longer than the image."""

import numpy as np
import pytest

from biounet.mirror import mirror_pad, mirrored, mirrored_window


def test_mirrored_indices_are_numpys_reflect_padding_even_past_the_image():
    for n in (1, 2, 3, 7):
        for pad in (0, 1, 5, 20):
            padded = np.pad(np.arange(n), (pad, pad + 3), mode="reflect")
            assert (mirrored(np.arange(-pad, n + pad + 3), n) == padded).all()


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (5, 3), (3, 40, 30)])
def test_mirror_pad_is_numpys_reflect_pad_and_a_copy(rng, shape):
    image = rng.integers(0, 255, shape).astype(np.uint8)
    lead = [(0, 0)] * (image.ndim - 2)
    for pads in ((0, 0, 0, 0), (7, 2, 4, 6), (50, 7, 3, 45)):
        out = mirror_pad(image, *pads)
        ref = np.pad(image, (*lead, pads[:2], pads[2:]), mode="reflect")
        assert out.dtype == image.dtype and (out == ref).all()
        assert not np.shares_memory(out, image)


def test_a_window_is_the_same_pixels_of_the_padded_image(rng):
    image = rng.random((2, 9, 13)).astype(np.float32)
    padded = mirror_pad(image, 20, 20, 20, 20)
    for y0, y1, x0, x1 in ((0, 9, 0, 13), (2, 5, 3, 11), (-20, 29, -3, 4), (-1, 1, 12, 33)):
        window = mirrored_window(image, y0, y1, x0, x1)
        assert (window == padded[:, y0 + 20 : y1 + 20, x0 + 20 : x1 + 20]).all()
