"""Inference speed and peak memory of one trained model on one large image.

    python speed.py image OUT.tif [--size 2048]          # make the image (biounet's .venv)
    python speed.py time PEER WORK IMAGE [--tta/--no-tta] [--threads 2] [--probs FILE]

``image``: a SIZE x SIZE uint8 nuclei image, a mosaic of 256 x 256 crops of the 40 held-out
DSB images (data/splits/dsb2018-fluo-holdout.txt; their top-left corners, cycled, each
dark-on-bright one negated so that the mosaic has one polarity), so that every peer
segments objects like those it was trained on.

``time``: run with PEER's own python (biounet: .venv; stardist / cellpose / nnunet: the venv
of benchmarks/peers/setup.sh), on the model a run.sh cell left in WORK (OUT/work): load it,
segment a 256 x 256 crop once (untimed: lazy initialisation, kernel selection), then the
whole image once, timed; prints one JSON line with the seconds, megapixels per second and
the process's peak resident memory (ru_maxrss: libraries, model and the prediction).
What is timed is what each peer's own prediction does for an image (biounet: `segment`
with its stored post-processing; StarDist: ``predict_instances``; cellpose: ``eval``;
nnU-Net: ``predict_single_npy_array``, which gives probabilities; ``--probs FILE`` keeps
them for the instance step, timed apart in biounet's venv by nnunet_biounet.py). ``--tta``:
each peer's own test-time augmentation (biounet 8 views, cellpose ``augment``, nnU-Net
mirroring; StarDist has none).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def make_image(out: Path, size: int) -> None:
    """The SIZE x SIZE mosaic of held-out crops (module docstring)."""
    import numpy as np

    from biounet.io import read_images

    from split import holdout_ids

    names = sorted(holdout_ids())
    crops = []
    for name in names:
        img = read_images(REPO / "data/dsb2018-fluo/images" / f"{name}.png").arrays[0]
        crop = np.asarray(img[:256, :256], np.float32)
        if crop.shape != (256, 256):
            continue
        if np.median(crop) > crop.mean():  # dark objects on a bright background
            crop = crop.max() - crop
        lo, hi = np.percentile(crop, (0.5, 99.8))
        crops.append(np.clip((crop - lo) / max(hi - lo, 1e-6), 0, 1) * 255)
    n = size // 256
    rows = [np.hstack([crops[(r * n + c) % len(crops)] for c in range(n)]) for r in range(n)]
    mosaic = np.vstack(rows).astype(np.uint8)
    import tifffile

    tifffile.imwrite(out, mosaic)
    print(f"{out}: {mosaic.shape[1]} x {mosaic.shape[0]} mosaic of {len(crops)} held-out crops")


def loader(peer: str, work: Path, tta: bool, threads: int):
    """A function image -> segmentation for PEER's model in WORK."""
    import numpy as np

    if peer == "biounet":
        from dataclasses import replace

        import torch

        from biounet import model_from_checkpoint, segment

        torch.set_num_threads(threads)
        path = work / "best.pt" if (work / "best.pt").exists() else work / "last.pt"
        net, preset = model_from_checkpoint(path)
        config = replace(preset.inference, tta=tta)
        outputs = ["instances"] if preset.train.target == "contour" else ["probabilities"]

        def run(img):
            seg = segment((net, preset), img, config, outputs=outputs)
            return seg.instances if seg.instances is not None else seg.probabilities

        return run
    if peer == "stardist":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        from csbdeep.utils import normalize
        from stardist.models import StarDist2D

        model = StarDist2D(None, name="stardist", basedir=str(work))  # best weights, thresholds
        return lambda img: model.predict_instances(
            normalize(img.astype(np.float32), 1, 99.8, axis=(0, 1)))[0]
    if peer == "cellpose":
        import torch
        from cellpose import models

        torch.set_num_threads(threads)
        model = models.CellposeModel(gpu=False, nchan=2,
                                     pretrained_model=str(work / "models" / "cellpose_scratch"))
        return lambda img: model.eval(img.astype(np.float32), channels=[0, 0], augment=tta)[0]
    if peer == "nnunet":
        return nnunet_loader(work, tta, threads)
    raise SystemExit(f"speed.py: unknown peer {peer!r}")


def nnunet_loader(work: Path, tta: bool, threads: int):
    """nnU-Net's predictor for the network nnunet_driver.py trained (its trainer class is
    the driver's own, so the network is rebuilt from the stored plans, as the driver does)."""
    import os

    for k in ("raw", "preprocessed", "results"):
        os.environ.setdefault(f"nnUNet_{k}", str(work / f"nnUNet_{k}"))
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(threads)
    folds = sorted((work / "nnUNet_results").glob("*/*__2d/fold_0"))
    if not folds:
        raise SystemExit(f"speed.py: no nnU-Net 2d fold_0 under {work / 'nnUNet_results'}")
    fold = folds[0]
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    plans = PlansManager(load_json(str(fold.parent / "plans.json")))
    dataset_json = load_json(str(fold.parent / "dataset.json"))
    config = plans.get_configuration("2d")
    net = nnUNetTrainer.build_network_architecture(
        plans, config, determine_num_input_channels(plans, config, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"])
    net.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(net, plans, config, [ckpt["network_weights"]],
                                    dataset_json, "nnUNetTrainer",
                                    ckpt.get("inference_allowed_mirroring_axes"))

    def run(img):
        x = img.astype(np.float32)[None, None]  # (channels, z = 1, y, x): its 2D PNG reader
        _, probs = predictor.predict_single_npy_array(x, {"spacing": [999, 1, 1]}, None,
                                                      None, True)
        return probs

    return run


def time_peer(a) -> None:
    C.limit_threads(a.threads)
    import numpy as np

    image = C.read(a.image)
    run = loader(a.peer, a.work, a.tta, a.threads)
    t0 = time.monotonic()
    run(np.ascontiguousarray(image[:256, :256]))
    warm = time.monotonic() - t0
    t0 = time.monotonic()
    result = np.asarray(run(image))
    seconds = time.monotonic() - t0
    if a.probs:
        np.savez_compressed(a.probs, probabilities=result.astype(np.float16))
    mpx = image.size / 1e6
    record = {"peer": a.peer, "tta": a.tta, "threads": a.threads,
              "image": f"{image.shape[1]} x {image.shape[0]}", "seconds": round(seconds, 2),
              "mpx_per_s": round(mpx / seconds, 4), "warm_up_256_seconds": round(warm, 2),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "output": list(result.shape), "objects": int(result.max())
              if result.dtype.kind in "iu" else None}  # fmt: skip
    print(json.dumps(record))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("image")
    m.add_argument("out", type=Path)
    m.add_argument("--size", type=int, default=2048)
    t = sub.add_parser("time")
    t.add_argument("peer", choices=("biounet", "stardist", "cellpose", "nnunet"))
    t.add_argument("work", type=Path, help="a run.sh cell's OUT/work")
    t.add_argument("image", type=Path)
    t.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--probs", type=Path, help="nnunet: keep its probabilities here (.npz)")
    a = p.parse_args()
    if a.cmd == "image":
        make_image(a.out, a.size)
    else:
        time_peer(a)


if __name__ == "__main__":
    main()
