"""cellpose 3 (its CNN, CPnet) trained from scratch on biounet's DSB split, stopped at a
wall-clock budget.

Run with the cellpose venv's python (benchmarks/peers/setup.sh cellpose). Why cellpose 3
and not 4: cellpose 4's only network is the SAM ViT-L encoder (cpsam, 305 M parameters),
whose training step on one 256 x 256 crop took 46-51 s on one (loaded) core here
(cellpose4_step.py), about 16 times cellpose 3's cost per crop; from scratch it would see
a few dozen crops in 15 minutes.

Settings: the training defaults of cellpose 3's own command line for a model trained from
scratch (``python -m cellpose --train --pretrained_model None``): SGD, learning rate 0.2
(linear warm-up over 10 epochs), momentum 0.9, weight decay 1e-5, batch 8 of 224 x 224
crops, 500 epochs, images with fewer than 5 objects left out, its own augmentation (random
rotation, scaling by the objects' diameter, flips) and normalisation (1st-99th percentile);
gray images as channels [0, 0] (two input channels, the second empty); ``--diam-mean 17``,
the size cellpose's docs give for nuclei (its `nuclei` model's; the CLI's default is 30).
An epoch is one pass over the training images (156 of the 160 have 5 objects or more:
20 steps), and the learning rate of epoch k < 10 is 0.2 k / 9: the first epoch does not
learn (``--nimg-per-epoch``, its --nimg_per_epoch, shortens epochs; ``--epochs``, its
--n_epochs, then fits the whole schedule, decay included, to the budget: a departure,
docs/peers.md says where). Training stops at the first step after ``--minutes`` (the clock
starts at the first step: flow computation is not counted), keeping the weights of the
last step. Up to epoch 100 the schedule of any planned length is the same (warm-up, then
constant), so the stop loses no decay for budgets that end sooner. Prediction:
``CellposeModel.eval`` with its defaults (diameter from the training labels, flow threshold
0.4, cell probability threshold 0); ``--tta`` is its ``augment=True`` (overlapping tiles,
flipped). Only ``--task dsb``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


class TimeUp(Exception):
    """Raised from the network's forward pass once the budget is spent."""


def flags(p) -> None:
    p.add_argument("--diam-mean", type=float, default=17.0,
                   help="diameter objects are rescaled to in training (cellpose: 17 for nuclei)")
    p.add_argument("--nimg-per-epoch", type=int, default=None,
                   help="images per epoch (cellpose's --nimg_per_epoch; default: all); fewer "
                        "shorten its 10-epoch learning-rate warm-up")
    p.add_argument("--epochs", type=int, default=500,
                   help="cellpose's --n_epochs (500); over 100, its last 50 (over 300: 100) "
                        "halve the learning rate 10 times")


def main() -> None:
    a = C.parse_args(__doc__.splitlines()[0], flags)
    if a.task != "dsb":
        raise SystemExit("cellpose_driver: cellpose segments cells/nuclei; --task dsb only")
    C.limit_threads(a.threads)
    from importlib.metadata import version

    import numpy as np
    import torch
    from cellpose import models, train

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    data = C.pairs(a.train_images, a.train_labels)
    images = [img.astype(np.float32) for _, img, _ in data]
    labels = [lab.astype(np.int32) for _, _, lab in data]

    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None,
                                 diam_mean=a.diam_mean, nchan=2)
    budget = C.Budget(a.minutes)
    state = {"steps": 0, "prep_s": None}

    def deadline(module, inputs):
        """Counts training steps; starts the clock at the first, stops it when spent."""
        if not module.training:
            return
        if state["steps"] == 0:
            state["prep_s"] = budget.elapsed()
            budget.start = time.monotonic()
        elif budget.over():
            raise TimeUp
        state["steps"] += 1

    hook = model.net.register_forward_pre_hook(deadline)
    work = a.out / "work"
    n_epochs = a.epochs  # its command line's default 500; the budget ends training sooner
    try:
        train.train_seg(model.net, train_data=images, train_labels=labels, channels=[0, 0],
                        normalize=True, SGD=True, learning_rate=0.2, weight_decay=1e-5,
                        momentum=0.9, n_epochs=n_epochs, batch_size=8, min_train_masks=5,
                        nimg_per_epoch=a.nimg_per_epoch,
                        save_path=str(work), save_every=100, model_name="cellpose_scratch")
        finished = True
    except TimeUp:
        finished = False
    train_s = budget.elapsed()
    hook.remove()
    path = work / "models" / "cellpose_scratch"
    model.net.save_model(str(path))  # the weights of the last step taken
    n_used = sum(len(np.unique(lab)) - 1 >= 5 for lab in labels)  # min_train_masks
    steps_per_epoch = -(-(a.nimg_per_epoch or n_used) // 8)

    model = models.CellposeModel(gpu=False, pretrained_model=str(path), nchan=2)
    t0 = time.monotonic()
    tests = C.image_files(a.test_images)
    for f in tests:
        masks, _, _ = model.eval(C.read(f).astype(np.float32), channels=[0, 0],
                                 augment=a.tta)
        C.write_prediction(a.out, a.task, f.stem, masks)
    C.write_log(a.out, peer="cellpose", version=version("cellpose"), torch=torch.__version__,
                steps=state["steps"], steps_per_epoch=steps_per_epoch,
                epochs=round(state["steps"] / steps_per_epoch, 2), planned_epochs=n_epochs,
                finished=finished, batch_size=8, train_images=n_used,
                nimg_per_epoch=a.nimg_per_epoch,
                diam_mean=a.diam_mean, diam_labels=float(model.diam_labels),
                prep_seconds=round(state["prep_s"] or 0, 1), train_seconds=round(train_s, 1),
                predict_seconds=round(time.monotonic() - t0, 1), test_images=len(tests),
                tta=a.tta, threads=a.threads, minutes=a.minutes, smoke=a.smoke)


if __name__ == "__main__":
    main()
