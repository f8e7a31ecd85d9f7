"""StarDist 2D trained from scratch on biounet's DSB split, stopped at a wall-clock budget.

Run with the stardist venv's python (benchmarks/peers/setup.sh stardist). Settings, as in
StarDist's 2D example notebooks (2_training.ipynb) for fluorescence nuclei:
- images normalised by their 1st-99.8th percentiles, label holes filled;
- 15% of the training images (seed 42) held back as StarDist's own validation set (its
  ReduceLROnPlateau, best-weights checkpoint and probability/NMS threshold optimisation
  use it); biounet's held-out images are never seen;
- Config2D(n_rays=32, grid=(2, 2), n_channel_in=1) and its defaults otherwise (U-Net
  backbone, 256 x 256 patches, batch 4, 100 steps per epoch, Adam 3e-4, 400 epochs);
- augmentation: a random flip/transpose (rot90 group), intensity x U(0.6, 2) + U(-0.2, 0.2)
  and Gaussian noise of sigma U(0, 0.02).
Training stops after the batch at which ``--minutes`` run out (the epoch's end still
validates and checkpoints); StarDist then reloads its best weights (validation loss) and
optimises its thresholds on the validation images (timed apart from training). StarDist
has no test-time augmentation of its own: ``--tta`` is recorded and has no effect.
Only ``--task dsb``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def augmenter(x, y):
    """StarDist notebook augmentation: flips/transposes, intensity change, Gaussian noise."""
    import numpy as np

    perm = tuple(np.random.permutation(2))
    x, y = x.transpose(perm), y.transpose(perm)
    for ax in (0, 1):
        if np.random.rand() > 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    x = x + np.random.uniform(0, 0.02) * np.random.normal(0, 1, x.shape)
    return x, y


def main() -> None:
    a = C.parse_args(__doc__.splitlines()[0])
    if a.task != "dsb":
        raise SystemExit("stardist_driver: StarDist segments star-convex objects; --task dsb only")
    C.limit_threads(a.threads)
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    import keras
    import stardist
    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    np.random.seed(a.seed)
    tf.random.set_seed(a.seed)
    data = C.pairs(a.train_images, a.train_labels)
    X = [normalize(img.astype(np.float32), 1, 99.8, axis=(0, 1)) for _, img, _ in data]
    Y = [fill_label_holes(lab.astype(np.int32)) for _, _, lab in data]
    ind = np.random.RandomState(42).permutation(len(X))
    n_val = max(1, int(round(0.15 * len(ind))))
    val, trn = ind[:n_val], ind[n_val:]

    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, use_gpu=False,
                    train_steps_per_epoch=5 if a.smoke else 100,
                    train_tensorboard=False)  # logging only (TensorBoard is not installed)
    model = StarDist2D(conf, name="stardist", basedir=str(a.out / "work"))
    budget = C.Budget(a.minutes)
    steps = {"n": 0, "epochs": 0}

    class TimeLimit(keras.callbacks.Callback):
        """Ends training after the batch at which the budget runs out."""

        def on_train_begin(self, logs=None):
            budget.start = time.monotonic()  # the budget counts training only

        def on_train_batch_end(self, batch, logs=None):
            steps["n"] += 1
            if budget.over():
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            steps["epochs"] = epoch + 1

    model.prepare_for_training()
    model.callbacks.append(TimeLimit())
    model.train([X[i] for i in trn], [Y[i] for i in trn],
                validation_data=([X[i] for i in val], [Y[i] for i in val]),
                augmenter=augmenter, epochs=conf.train_epochs,
                steps_per_epoch=conf.train_steps_per_epoch, seed=a.seed)
    train_s = budget.elapsed()
    t0 = time.monotonic()
    model.optimize_thresholds([X[i] for i in val], [Y[i] for i in val])
    thresholds_s = time.monotonic() - t0

    t0 = time.monotonic()
    tests = C.image_files(a.test_images)
    for f in tests:
        img = normalize(C.read(f).astype(np.float32), 1, 99.8, axis=(0, 1))
        labels, _ = model.predict_instances(img)
        C.write_prediction(a.out, a.task, f.stem, labels)
    C.write_log(a.out, peer="stardist", version=stardist.__version__,
                tensorflow=tf.__version__, steps=steps["n"], epochs=steps["epochs"],
                steps_per_epoch=conf.train_steps_per_epoch, batch_size=conf.train_batch_size,
                patch=conf.train_patch_size, train_images=len(trn), val_images=len(val),
                train_seconds=round(train_s, 1), threshold_opt_seconds=round(thresholds_s, 1),
                predict_seconds=round(time.monotonic() - t0, 1), test_images=len(tests),
                thresholds=model.thresholds._asdict(), tta="none (StarDist has none)",
                threads=a.threads, minutes=a.minutes, smoke=a.smoke)


if __name__ == "__main__":
    main()
