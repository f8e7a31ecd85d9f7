import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

import biounet
from biounet.instances import (
    binary_instances,
    contour_instances,
    filter_objects,
    peak_seeds,
    split_seeds,
)
from biounet.targets import binary_target, contour_target


def _discs(shape=(64, 64), centres=((20, 20), (20, 31), (45, 45)), r=6):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i  # discs 1 and 2 touch (overlap cut)
    return lab


def test_binary_instances_undo_the_carved_border_exactly():
    lab = _discs()
    assert (lab == 1).sum() and ((lab[:, 1:] == 1) & (lab[:, :-1] == 2)).sum() == 0
    prob = binary_target(lab).astype(np.float32)  # a perfect binary-target prediction
    out = binary_instances(prob)
    assert out.dtype == np.uint16 and out.max() == 3
    # every object comes back whole (each carved pixel to its own object); the only extra
    # pixels are where the two discs' outlines leave a natural 2-pixel gap, which looks
    # exactly like a carved one (rows 16 and 24, one pixel each side)
    for i in (1, 2, 3):
        ids = np.unique(out[lab == i])
        assert len(ids) == 1 and ids[0] > 0
        assert not ((lab == i) & (out != ids[0])).any()
        extra = np.argwhere((out == ids[0]) & (lab != i))
        assert len(extra) == (0 if i == 3 else 2) and set(extra[:, 0]) <= {16, 24}


def test_binary_instances_do_not_grow_objects_into_open_background():
    lab = _discs(centres=((20, 20), (45, 45)))
    out = binary_instances((lab > 0).astype(np.float32), gap=2)
    np.testing.assert_array_equal(out > 0, lab > 0)


def test_contour_instances_separate_touching_objects_from_class_probabilities():
    lab = _discs()
    t = contour_target(lab)
    probs = np.stack([(t == k).astype(np.float32) for k in range(3)])
    out = contour_instances(probs)
    assert out.max() == 3
    for i in (1, 2, 3):
        ids = np.unique(out[lab == i])
        assert len(ids) == 1 and ids[0] > 0
        np.testing.assert_array_equal(out == ids[0], lab == i)
    probs[1] = 0  # no seeds at all: each foreground component is one object
    assert contour_instances(probs).max() == 2  # the touching pair stays merged


def test_a_higher_seed_threshold_splits_objects_joined_by_an_unsure_neck():
    probs = np.zeros((3, 12, 24), np.float32)
    probs[1, 3:9, 2:10] = 0.95  # two confident interiors ...
    probs[1, 3:9, 14:22] = 0.95
    probs[1, 5:7, 10:14] = 0.6  # ... joined by a neck the network is unsure of
    probs[2] = np.where(probs[1] == 0.6, 0.4, 0)
    probs[0] = 1 - probs[1] - probs[2]
    assert contour_instances(probs).max() == 1
    out = contour_instances(probs, seed_threshold=0.7)
    assert out.max() == 2 and out[4, 5] != out[4, 18] and (out > 0).sum() == 2 * 48 + 8


def _confident(interior: np.ndarray) -> np.ndarray:
    """Contour probabilities: interior 0.95 on ``interior``, background elsewhere."""
    probs = np.zeros((3, *interior.shape), np.float32)
    probs[1] = 0.95 * interior
    probs[2] = 0.05 * interior
    probs[0] = 1 - probs[1] - probs[2]
    return probs


def test_a_seed_split_separates_two_nuclei_whose_interiors_meet_at_a_neck():
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 <= 81  # two discs of radius 9 overlapping by 2 px
    b = (yy - 20) ** 2 + (xx - 36) ** 2 <= 81
    probs = _confident(a | b)
    assert contour_instances(probs).max() == 1  # one seed: merged
    out = contour_instances(probs, split_solidity=0.9)
    assert out.max() == 2 and (out > 0).sum() == (a | b).sum()
    # each piece is one disc, up to the pixels of the overlap lens
    for disc, other in ((a, b), (b, a)):
        ids, counts = np.unique(out[disc & ~other], return_counts=True)
        assert len(ids) == 1 and counts[0] == (disc & ~other).sum()
    assert out[20, 20] != out[20, 36]
    # a solidity under the pair's (0.86) leaves it whole; so does a depth above its peaks
    assert contour_instances(probs, split_solidity=0.8).max() == 1
    assert contour_instances(probs, split_solidity=0.99, split_depth=20).max() == 1


def _ridge_pair() -> np.ndarray:
    """Contour probabilities of two nuclei (discs of radius 10, centres 18 px apart, one
    foreground region) whose P(interior) is 0.99 within 3 px of each centre and falls
    0.02 a pixel: the ridge between them peaks at 0.87, well above any seed threshold."""
    yy, xx = np.mgrid[:40, :60]
    d1 = np.hypot(yy - 20, xx - 20)
    d2 = np.hypot(yy - 20, xx - 38)
    inside = (d1 <= 10) | (d2 <= 10)
    interior = np.where(inside, 0.99 - 0.02 * np.maximum(np.minimum(d1, d2) - 3, 0), 0)
    probs = np.zeros((3, 40, 60), np.float32)
    probs[1] = interior
    probs[2] = np.where(inside, 1 - interior, 0)
    probs[0] = 1 - probs[1] - probs[2]
    return probs


def test_seed_dynamics_separates_nuclei_whose_interiors_meet_at_a_ridge():
    probs = _ridge_pair()
    foreground = probs[0] < 0.5
    assert contour_instances(probs).max() == 1  # thresholded seeds: one, merged
    assert contour_instances(probs, seed_threshold=0.85).max() == 1  # the ridge is 0.87
    out = contour_instances(probs, seed_dynamics=0.05)  # the peaks stand 0.12 above it
    assert out.max() == 2 and out[20, 20] != out[20, 38]
    np.testing.assert_array_equal(out > 0, foreground)  # the watershed fills the foreground
    # the cut is the ridge: every pixel nearer one centre (by 2 px or more) is that one's
    yy, xx = np.mgrid[:40, :60]
    near1 = np.hypot(yy - 20, xx - 20) + 2 < np.hypot(yy - 20, xx - 38)
    near2 = np.hypot(yy - 20, xx - 38) + 2 < np.hypot(yy - 20, xx - 20)
    assert (out[foreground & near1] == out[20, 20]).all()
    assert (out[foreground & near2] == out[20, 38]).all()
    # smoothed by 1 px the peaks are 0.990 and the ridge 0.883: a dip of 0.107 (0.12 unsmoothed)
    assert contour_instances(probs, seed_dynamics=0.1).max() == 2
    assert contour_instances(probs, seed_dynamics=0.11).max() == 1
    # a dynamics above the dip leaves the pair whole, as does one above the peaks themselves
    assert contour_instances(probs, seed_dynamics=0.2).max() == 1
    assert contour_instances(probs, seed_dynamics=0.999).max() == 1
    # off (0) is the thresholded seeds exactly
    np.testing.assert_array_equal(contour_instances(probs, seed_dynamics=0.0),
                                  contour_instances(probs))  # fmt: skip


def _slow_peak_seeds(levels: np.ndarray, threshold: int, h: int) -> tuple[np.ndarray, int]:
    """The definition by flooding, pixel by pixel, in each 8-connected component of the
    region (levels > threshold) alone, the rest reading 0: the floor of its pixel p is the
    highest t <= levels[p] at which the 8-connected set of pixels >= t holding p reaches
    t + h, the dome of p is levels[p] minus that floor, and each 8-connected set of pixels
    with a dome that holds a dome of h is a seed (a component whose top is under h is all
    one dome of h: one seed)."""
    eight = np.ones((3, 3), bool)
    parts, m = ndimage.label(levels > threshold, structure=eight)
    seeds = np.zeros(levels.shape, bool)
    count = 0
    for k in range(1, m + 1):
        own = np.where(parts == k, levels, 0)
        values = np.unique(own)
        dome = np.zeros(levels.shape, np.int64)
        for y, x in zip(*np.nonzero(parts == k), strict=True):
            v = own[y, x]
            for t in sorted({*values, *(values - h)}, reverse=True):
                if not v - h <= t <= v:
                    continue
                above, _ = ndimage.label(own >= t, structure=eight)
                if own[above == above[y, x]].max() >= t + h:
                    dome[y, x] = v - t
                    break
        domes, j = ndimage.label(dome > 0, structure=eight)
        tall = [i for i in range(1, j + 1) if dome[domes == i].max() >= h]
        seeds |= np.isin(domes, tall)
        count += len(tall)
    return seeds, count


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int32, st.tuples(st.integers(3, 12), st.integers(3, 12)),
           elements=st.integers(0, 10)),
    st.integers(1, 4),
    st.integers(0, 5),
)  # fmt: skip
def test_peak_seeds_match_their_definition(steps, h, threshold):
    """Unsmoothed, on P(interior) in steps of 0.1: the seeds are exactly the slow
    definition's, one label per seed."""
    module = importlib.import_module("biounet.instances")  # biounet.instances: the function
    old = module.PEAK_SMOOTHING
    module.PEAK_SMOOTHING = 0.0  # the Gaussian of sigma 0 is the identity
    try:
        seeds, n = peak_seeds(steps / 10.0, threshold / 10.0, h / 10.0)
    finally:
        module.PEAK_SMOOTHING = old
    want, count = _slow_peak_seeds(steps * 100, threshold * 100, h * 100)
    np.testing.assert_array_equal(seeds > 0, want)
    assert n == count and set(np.unique(seeds[seeds > 0])) == set(range(1, n + 1))


def test_a_seed_split_leaves_convex_and_elongated_nuclei_whole():
    yy, xx = np.mgrid[:40, :80]
    disc = (yy - 20) ** 2 + (xx - 15) ** 2 <= 100
    ellipse = ((yy - 20) / 6.0) ** 2 + ((xx - 55) / 18.0) ** 2 <= 1  # 3:1, convex
    out = contour_instances(_confident(disc | ellipse), split_solidity=0.9)
    assert out.max() == 2
    # split_seeds itself: labels kept, nothing new, input untouched
    seeds = (disc * 1 + ellipse * 2).astype(np.int32)
    before = seeds.copy()
    split, n = split_seeds(seeds, 2, solidity=0.95, depth=1.0)
    assert n == 2 and np.array_equal(split, seeds) and np.array_equal(seeds, before)
    assert split_seeds(seeds, 2, solidity=0.0)[1] == 2


def test_small_objects_are_dropped_and_ids_stay_consecutive():
    prob = np.zeros((20, 20), np.float32)
    prob[2:8, 2:8] = 1
    prob[15, 15] = 1  # one pixel of noise
    prob[12:16, 2:6] = 1
    out = binary_instances(prob, min_size=4)
    assert sorted(np.unique(out)) == [0, 1, 2]


def test_faint_objects_are_dropped_by_their_peak_probability():
    lab = _discs(centres=((20, 20), (45, 45)))
    t = contour_target(lab)
    probs = np.stack([(t == k).astype(np.float32) for k in range(3)])
    probs[1][lab == 2] *= 0.7  # the second nucleus is faint: P(interior) peaks at 0.7
    probs[2][lab == 2] += 0.3 * (t[lab == 2] == 1)
    assert contour_instances(probs, min_peak=0.69).max() == 2
    out = contour_instances(probs, min_peak=0.71)
    assert sorted(np.unique(out)) == [0, 1]
    np.testing.assert_array_equal(out == 1, lab == 1)
    # binary: the peak is the foreground probability's
    prob = (lab == 1) * 0.95 + (lab == 2) * 0.6
    assert binary_instances(prob.astype(np.float32), min_peak=0.9).max() == 1
    assert binary_instances(prob.astype(np.float32), min_peak=0.5).max() == 2
    # both filters at once, ids renumbered: big + faint, small + bright, big + bright
    prob = np.zeros((30, 30), np.float32)
    prob[2:12, 2:12], prob[20:22, 2:4], prob[15:25, 15:25] = 0.6, 0.99, 0.97
    out = binary_instances(prob, gap=0, min_size=10, min_peak=0.9)
    assert sorted(np.unique(out)) == [0, 1] and (out == 1).sum() == 100 and out[20, 20] == 1


def _squares(sizes, shape=(24, 128)):
    """A label image of squares with these pixel counts (perfect squares), ids 1..n."""
    lab = np.zeros(shape, np.int32)
    x = 1
    for i, area in enumerate(sizes, start=1):
        side = int(round(area**0.5))
        assert side * side == area
        lab[1 : 1 + side, x : x + side] = i
        x += side + 2
    return lab


@pytest.mark.parametrize(
    ("sizes", "fraction", "kept"),
    [
        # an image of small nuclei: median of the objects >= 40 px is 64, 0.3 x 64 = 19.2
        ((64, 64, 64, 25, 16), 0.3, (64, 64, 64, 25)),
        ((64, 64, 64, 25, 16), 0.0, (64, 64, 64)),  # off: the absolute 40 px alone
        ((64, 64, 64, 25, 16), 0.5, (64, 64, 64)),  # 0.5 x 64 = 32 > 25
        # large nuclei: 0.3 x 400 = 120, but no image demands more than min_size (40)
        ((400, 400, 400, 49, 36), 0.3, (400, 400, 400, 49)),
        # no object reaches min_size: the median of all of them sets the scale (0.3 x 25)
        ((25, 25, 16, 4), 0.3, (25, 25, 16)),
    ],
)
def test_the_size_limit_can_follow_each_images_own_scale(sizes, fraction, kept):
    lab = _squares(sizes)
    prob = (lab > 0).astype(np.float32)
    for out in (
        binary_instances(prob, gap=0, min_size=40, min_fraction=fraction),
        contour_instances(np.stack([1 - prob, prob, 0 * prob]), min_size=40, min_fraction=fraction),
    ):
        assert sorted(np.bincount(out.ravel())[1:].tolist(), reverse=True) == list(kept)
        assert out.max() == len(kept)  # ids renumbered 1..N


def test_the_image_scale_counts_only_objects_that_pass_the_peak_filter():
    # three faint 400-px blobs would lift the median to 400 (limit 40 px) if they counted;
    # the bright objects' median, 64, gives 0.3 x 64 = 19.2 px and keeps the 25-px nucleus
    lab = _squares((64, 64, 25, 400, 400, 400))
    prob = np.where(lab > 0, 0.99, 0.0).astype(np.float32)
    prob[lab >= 4] = 0.6
    out = binary_instances(prob, gap=0, min_size=40, min_peak=0.9, min_fraction=0.3)
    assert sorted(np.bincount(out.ravel())[1:].tolist()) == [25, 64, 64]


def _filtered_slowly(labels, peak, min_size, min_peak, fraction):
    """The documented filters, one object at a time: drop objects whose peak stays below
    min_peak; of the rest, drop those under min(min_size, fraction x the median area of
    the rest that reach min_size, or of all the rest if none does); renumber in id order."""
    ids = [i for i in np.unique(labels) if i]
    area = {i: int((labels == i).sum()) for i in ids}
    alive = [i for i in ids if min_peak <= 0 or peak[labels == i].max() >= min_peak]
    limit = float(min_size)
    if fraction > 0 and alive:
        large = [area[i] for i in alive if area[i] >= min_size]
        limit = min(limit, fraction * float(np.median(large or [area[i] for i in alive])))
    out = np.zeros_like(labels)
    for new, i in enumerate([i for i in alive if area[i] >= max(1.0, limit)], start=1):
        out[labels == i] = new
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filtering_the_unfiltered_objects_gives_the_filtered_call(seed):
    # experiments/tune_validation.py sweeps the filters over one watershed per seed setting
    rng = np.random.default_rng(seed)
    raw = ndimage.gaussian_filter(rng.random((3, 96, 96)), (0, 3, 3))
    e = np.exp(12 * (raw - raw.mean(0)))
    probs = (e / e.sum(0)).astype(np.float32)  # blobs of interior, boundary, background
    unfiltered = contour_instances(probs, seed_threshold=0.5, split_solidity=0.9)
    assert unfiltered.max() >= 5  # enough objects for the filters to choose between
    counts = set()
    for size, peak, fraction in [(0, 0.0, 0.0), (200, 0.0, 0.0), (0, 0.56, 0.0), (400, 0.53, 0.3),
                                 (2000, 0.0, 0.5)]:  # fmt: skip
        whole = contour_instances(probs, seed_threshold=0.5, split_solidity=0.9, min_size=size,
                                  min_peak=peak, min_fraction=fraction)  # fmt: skip
        after = filter_objects(unfiltered, probs[1], size, peak, fraction)
        # contour_instances ends with filter_objects: equal while the filters stay its last
        # stage; the slow reference is the independent check of the filters themselves
        np.testing.assert_array_equal(after, whole)
        np.testing.assert_array_equal(after, _filtered_slowly(unfiltered, probs[1], size, peak,
                                                              fraction))  # fmt: skip
        assert after.dtype == whole.dtype == np.uint16
        assert set(np.unique(after)) == set(range(int(after.max()) + 1))  # ids 1..N
        counts.add(int(after.max()))
    assert len(counts) >= 3  # the settings drop different objects


def test_the_api_dispatches_on_shape_and_rejects_others():
    assert biounet.instances(np.zeros((8, 8))).max() == 0
    assert biounet.instances(np.zeros((3, 8, 8))).shape == (8, 8)
    with pytest.raises(ValueError, match=r"got \(2, 8, 8\)"):
        biounet.instances(np.zeros((2, 8, 8)))


def test_a_model_carries_its_seed_split_setting():
    from biounet.config import InferenceConfig

    off = InferenceConfig().instance_options("contour")
    assert "split_solidity" not in off  # older models and the default: no split
    on = InferenceConfig(split_solidity=0.85, split_depth=2.0).instance_options("contour")
    assert (on["split_solidity"], on["split_depth"]) == (0.85, 2.0)
    assert "split_solidity" not in InferenceConfig(split_solidity=0.85).instance_options("binary")
    with pytest.raises(ValueError, match=r"split_solidity must be in \[0, 1\], got 1.5"):
        InferenceConfig(split_solidity=1.5)
    with pytest.raises(ValueError, match="split_depth must be > 0 pixels, got 0"):
        InferenceConfig(split_depth=0)
    assert "min_fraction" not in off
    assert InferenceConfig(min_fraction=0.3).instance_options("binary")["min_fraction"] == 0.3
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_fraction must be in"):
            InferenceConfig(min_fraction=bad)


def test_instance_options_are_the_keywords_each_method_reads():
    from biounet.config import InferenceConfig

    cfg = InferenceConfig(threshold=0.6, min_size=25, min_peak=0.9, min_fraction=0.3,
                          seed_threshold=0.4, seed_dynamics=0.25, split_solidity=0.8,
                          split_depth=4.0)  # fmt: skip
    common = {"threshold": 0.6, "min_size": 25, "min_peak": 0.9, "min_fraction": 0.3}
    assert cfg.instance_options("components") == {**common, "gap": 0}  # nothing to grow back
    assert cfg.instance_options("binary") == common
    assert cfg.instance_options("contour") == {**common, "seed_threshold": 0.4,
                                               "seed_dynamics": 0.25, "split_solidity": 0.8,
                                               "split_depth": 4.0}  # fmt: skip
    # each method's options are what instances() accepts for its input
    probs = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    for method, x in (("components", 1 - probs[0]), ("binary", 1 - probs[0]),
                      ("contour", probs)):  # fmt: skip
        assert biounet.instances(x, **cfg.instance_options(method)).shape == (16, 16)
