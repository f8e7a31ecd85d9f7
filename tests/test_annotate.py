"""Learning from a few annotated objects (biounet.annotate): sparse labels mean what the
user painted and boxed, a round's folder trains from the CLI as from napari, tiles are
drawn where there is something to learn, a stop request keeps a usable model, the k-fold
estimate holds out what it scores, and the uncertainty map is the views' disagreement."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import tifffile
from conftest import run, tiny_checkpoint, tiny_unet
from hypothesis import given, settings
from hypothesis import strategies as st

from biounet.annotate import (
    UNANNOTATED,
    Annotations,
    annotated,
    box_of,
    disagreement,
    fold_estimate,
    held_out_score,
    load_round,
    next_box,
    round_preset,
    save_round,
    sparse_labels,
    train_round,
    without,
)
from biounet.config import InferenceConfig, TrainConfig
from biounet.dataset import TileSampler, load_data
from biounet.errors import Stopped
from biounet.labels import IGNORE_INDEX
from biounet.train import train


def _labels() -> np.ndarray:
    lab = np.zeros((40, 50), dtype=np.int32)
    lab[2:8, 2:8] = 1  # inside the box
    lab[30:36, 40:46] = 2  # painted outside any box
    return lab


def test_sparse_labels_keep_painted_objects_and_boxes_and_ignore_the_rest():
    lab = _labels()
    out = sparse_labels(lab, [(0, 0, 20, 20)])
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[:20, :20], lab[:20, :20])  # box: objects + background
    np.testing.assert_array_equal(out[30:36, 40:46], 2)  # a painted object counts anywhere
    rest = np.ones(lab.shape, bool)
    rest[:20, :20] = False
    rest[30:36, 40:46] = False
    assert (out[rest] == UNANNOTATED).all()
    np.testing.assert_array_equal(sparse_labels(lab, None), lab)  # no boxes: all annotated


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 39), st.integers(0, 49), st.integers(1, 20),
                          st.integers(1, 20)), max_size=4))  # fmt: skip
def test_the_annotated_region_is_the_boxes_and_the_painted_pixels(spec):
    lab = _labels()
    boxes = [(t, c, min(t + h, 40), min(c + w, 50)) for t, c, h, w in spec]
    expected = lab > 0
    for t, c, b, r in boxes:
        for y in range(t, b):
            for x in range(c, r):
                expected[y, x] = True
    np.testing.assert_array_equal(annotated(lab, boxes), expected)
    np.testing.assert_array_equal(sparse_labels(lab, boxes) != UNANNOTATED, expected)


def test_sparse_labels_refuse_ids_that_collide_with_not_annotated():
    with pytest.raises(ValueError, match="label ids must be in 0..65534"):
        sparse_labels(np.full((4, 4), 70000), None)
    with pytest.raises(ValueError, match="2-D"):
        sparse_labels(np.zeros((2, 4, 4), int), None)


def test_a_napari_rectangle_becomes_clipped_pixel_bounds():
    corners = np.array([[2.4, 3.6], [2.4, 9.2], [7.5, 9.2], [7.5, 3.6]])  # napari's order
    assert box_of(corners, (40, 50)) == (2, 3, 8, 10)
    assert box_of(np.array([[-5, -5], [-5, 60], [10, 60], [10, -5]]), (40, 50)) == (0, 0, 10, 50)
    with pytest.raises(ValueError, match="holds no pixel of the 40 x 50 image"):
        box_of(np.array([[50, 60], [55, 70]]), (40, 50))


def test_a_round_folder_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    notes = Annotations(["a", "b"], [rng.random((40, 50), dtype=np.float32),
                                     rng.integers(0, 255, (40, 50), dtype=np.uint8)],
                        [_labels(), _labels()], [[(0, 0, 20, 20), (20, 30, 40, 50)], None])
    save_round(tmp_path, notes)
    stored = tifffile.imread(tmp_path / "labels" / "a.tif")
    assert stored.dtype == np.uint16 and (stored == UNANNOTATED).any()
    back = load_round(tmp_path)
    assert back.names == ["a", "b"] and back.boxes == notes.boxes
    for x, y in zip(back.images + back.labels, notes.images + notes.labels, strict=True):
        np.testing.assert_array_equal(x, y)
    assert notes.objects() == back.objects() == 4


def test_a_round_folder_trains_from_the_cli_with_the_not_annotated_pixels_left_out(tmp_path):
    lab = _labels()
    save_round(tmp_path / "data", Annotations(["a"], [np.zeros((40, 50), np.float32)],
                                              [lab], [[(0, 0, 20, 20)]]))  # fmt: skip
    preset = round_preset(None, "nuclei", tmp_path / "data", 1.0)
    assert preset.train.ignore_label == UNANNOTATED and preset.train.val_slices == "none"
    data = load_data(preset.train, None)
    stored = tifffile.imread(tmp_path / "data" / "labels" / "a.tif")
    np.testing.assert_array_equal(data.train_masks[0] == IGNORE_INDEX, stored == UNANNOTATED)
    assert set(np.unique(data.train_masks[0][:20, :20])) == {0, 1, 2}  # bg, interior, boundary


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([(16, 16), (8, 16), (12, 12)]))
def test_tiles_of_sparse_labels_always_hold_labelled_pixels(seed, sizes):
    out_size, in_size = sizes
    mask = np.full((60, 70), IGNORE_INDEX, np.uint8)
    mask[40:43, 5:9] = 1  # a small annotated corner
    dense = np.zeros((30, 30), np.uint8)
    sampler = TileSampler([np.zeros((60, 70), np.float32), np.zeros((30, 30), np.float32)],
                          [mask, dense], in_size, out_size, np.random.default_rng(seed),
                          margin=3, by="area")  # fmt: skip
    assert sampler.p[0] == pytest.approx(12 / (12 + 900))  # labelled pixels count
    b = (sampler.region - out_size) // 2
    for _ in range(10):
        _, y, _ = sampler.sample(1)
        tile = y[0, b : b + out_size, b : b + out_size].numpy()
        assert (tile != IGNORE_INDEX).any()


def _contour_start(tmp_path, **train):
    cfg = TrainConfig(target="contour", tile=32, batch_size=2, steps_per_epoch=3, epochs=2,
                      precision="fp32", sample_by="area", select_by="last", **train)
    return tiny_checkpoint(tmp_path / "start.pt", tiny_unet(out_channels=3), cfg,
                           InferenceConfig(tta=False))  # fmt: skip


def _dsb_notes(dsb_crops, n=3, boxes=True) -> Annotations:
    images, labels = dsb_crops
    names = sorted(p.stem for p in images.iterdir())[:n]
    from PIL import Image

    imgs = [np.asarray(Image.open(images / f"{x}.png")) for x in names]
    labs = [tifffile.imread(labels / f"{x}.tif").astype(np.int32) for x in names]
    bx = [[(0, 0, 48, 48), (48, 48, 80, 96)] if boxes else None for _ in names]
    return Annotations(names, imgs, labs, bx)


def test_a_stop_request_ends_training_at_the_next_step_and_keeps_last_pt(tmp_path, dsb_crops):
    start = _contour_start(tmp_path)
    stop, seen = threading.Event(), []

    def on_step(**p):
        seen.append(p)
        if len(seen) == 2:
            stop.set()

    model = train_round(_dsb_notes(dsb_crops), tmp_path / "r1", start, None, 5.0, stop=stop,
                        on_step=on_step)  # fmt: skip
    assert model == tmp_path / "r1" / "run" / "last.pt"
    assert [(p["epoch"], p["step"], p["steps"]) for p in seen] == [(1, 1, 3), (1, 2, 3)]
    assert all(np.isfinite(p["loss"]) for p in seen)
    from biounet.checkpoint import load_checkpoint

    assert load_checkpoint(model)["step"] == 2
    with pytest.raises(Stopped, match="stopped by request at epoch 1, step 1"):
        stop.clear()
        train(round_preset(start, None, tmp_path / "r1" / "data", 1.0), tmp_path / "r2",
              progress=False, stop=stop, on_step=lambda **_: stop.set())  # fmt: skip


def test_a_held_out_rectangle_leaves_training_with_the_objects_reaching_into_it():
    lab = _labels()
    lab[18:24, 18:24] = 3  # crosses the edge of the held-out box
    notes = Annotations(["a", "b"], [np.zeros((40, 50))] * 2, [lab, lab.copy()],
                        [[(0, 0, 20, 20), (20, 20, 40, 50)], None])  # fmt: skip
    rest = without(notes, [(0, (20, 20, 40, 50)), (1, None)])
    assert rest.names == ["a"] and rest.boxes == [[(0, 0, 20, 20)]]
    assert set(np.unique(rest.labels[0])) == {-1, 0, 1}  # 2 (inside), 3 (reaching in): -1
    stored = sparse_labels(rest.labels[0], rest.boxes[0])
    assert not (stored[20:, 20:] != UNANNOTATED).any()
    # the part of object 3 inside the kept box is not annotated either (not background)
    assert (stored[18:20, 18:20] == UNANNOTATED).all()
    # an image whose every rectangle is held out, with nothing painted outside, leaves
    one = Annotations(["c"], [np.zeros((40, 50))], [np.where(lab == 2, 0, lab)],
                      [[(0, 0, 30, 30)]])  # fmt: skip
    assert without(one, [(0, (0, 0, 30, 30))]).names == []


def test_an_image_with_no_labelled_pixel_is_never_drawn():
    empty = np.full((40, 40), IGNORE_INDEX, np.uint8)
    some = np.full((40, 40), IGNORE_INDEX, np.uint8)
    some[5:9, 5:9] = 1
    sampler = TileSampler([np.zeros((40, 40), np.float32), np.ones((40, 40), np.float32)],
                          [empty, some], 16, 16, np.random.default_rng(0))  # fmt: skip
    assert list(sampler.p) == [0.0, 1.0]
    for _ in range(20):
        x, y, _ = sampler.sample(1)
        assert (x == 1).all() and (y != IGNORE_INDEX).any()


@pytest.mark.slow
def test_the_fold_estimate_trains_without_each_fold_and_scores_it(tmp_path, dsb_crops):
    notes = _dsb_notes(dsb_crops, n=2)
    start = _contour_start(tmp_path)
    est = fold_estimate(notes, tmp_path / "est", start, None, 1.0, k=2, by="box")
    assert est["k"] == 2 and est["units"] == 4 and len(est["ap50"]) == 2
    assert all(0.0 <= a <= 1.0 for a in est["ap50"])
    assert est["mean"] == pytest.approx(np.mean(est["ap50"]))
    for f in range(2):  # each fold's training labels leave its held-out rectangles out
        assert (tmp_path / "est" / f"fold{f}" / "run" / "last.pt").exists()
    # the score is the crop's: a model scored on a held-out box of perfect predictions
    perfect = held_out_score(start, replace(notes), [(0, (0, 0, 48, 48))])
    assert perfect["tp"] + perfect["fn"] == len(np.unique(notes.labels[0][:48, :48])) - 1
    # one rectangle per image: each fold holds an image's only one, and that image leaves
    pair = Annotations(notes.names, notes.images, notes.labels,
                       [[(0, 0, 48, 48)], [(0, 0, 48, 48)]])  # fmt: skip
    assert len(fold_estimate(pair, tmp_path / "pair", start, None, 1.0, k=2,
                             by="box")["ap50"]) == 2  # fmt: skip
    # by image (auto with 2 images): each fold trains on one image, scores the other
    est = fold_estimate(notes, tmp_path / "img", start, None, 1.0)
    assert est["by"] == "image" and est["k"] == 2 and len(est["ap50"]) == 2
    assert len(load_round(tmp_path / "img" / "fold0" / "data").names) == 1
    with pytest.raises(ValueError, match="at least 2 annotated rectangles or images"):
        fold_estimate(Annotations(["a"], notes.images[:1], notes.labels[:1], [None]),
                      tmp_path / "e2", start, None, 1.0)  # fmt: skip


def test_disagreement_is_zero_where_every_view_is_the_same_image(tmp_path):
    start = _contour_start(tmp_path)
    assert disagreement(start, np.full((32, 32), 7.0, np.float32)).max() < 1e-6  # rounding
    rng = np.random.default_rng(1)
    u = disagreement(start, rng.random((32, 40), dtype=np.float32))
    assert u.shape == (32, 40) and u.max() > 1e-3


def test_the_next_box_is_the_most_uncertain_free_one():
    u = np.zeros((64, 64), np.float32)
    u[40:56, 8:24] = 1.0
    u[0:16, 0:16] = 0.5
    assert next_box(u, 16) == (40, 8, 56, 24)
    assert next_box(u, 16, taken=[(40, 8, 56, 24)]) == (0, 0, 16, 16)


@pytest.mark.slow
def test_the_cli_trains_a_saved_round_as_the_widget_does(tmp_path, dsb_crops, capsys):
    notes = _dsb_notes(dsb_crops)
    start = _contour_start(tmp_path)
    save_round(tmp_path / "data", notes)
    data = tmp_path / "data"
    code, _, err = run(["train", "--init", str(start), "--images", str(data / "images"),
                        "--labels", str(data / "labels"), "--ignore-label", "65535",
                        "--val-slices", "none", "--out", str(tmp_path / "cli")],
                       capsys)  # fmt: skip
    assert code == 0, err
    model = train_round(notes, tmp_path / "api", start, None, 5.0)
    from biounet.checkpoint import load_checkpoint

    a, b = load_checkpoint(tmp_path / "cli" / "best.pt"), load_checkpoint(model)
    for k, v in a["model"].items():  # the same data, settings and seed: the same weights
        np.testing.assert_array_equal(v.numpy(), b["model"][k].numpy())


def test_a_signal_stops_a_round_as_it_stops_any_run(tmp_path, dsb_crops):
    import os
    import signal

    start = _contour_start(tmp_path)
    with pytest.raises(Stopped, match="stopped by SIGTERM"):  # not a model to score
        train_round(_dsb_notes(dsb_crops), tmp_path / "r", start, None, 5.0,
                    on_step=lambda **_: os.kill(os.getpid(), signal.SIGTERM))  # fmt: skip
