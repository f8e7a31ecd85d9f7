"""nnU-Net v2 (2D configuration) trained from scratch on biounet's split, stopped at a
wall-clock budget.

Run with the nnunet venv's python (benchmarks/peers/setup.sh nnunet). nnU-Net's own
pipeline, unchanged but for the stop:
- dataset in its raw format (imagesTr/CASE_0000.png, labelsTr/CASE.png, dataset.json;
  2D PNG through its NaturalImage2DIO), then its fingerprint, its default planner
  (ExperimentPlanner, what ``nnUNetv2_plan_and_preprocess`` uses without -pl) and its
  preprocessing, 2D configuration only, one process each;
- labels: dsb: 0 background, 1 interior, 2 boundary, made from the instances by biounet's
  own contour target (boundary width 1; ``nnunet_biounet.py targets`` writes them, run.sh
  passes them as ``--class-labels``); isbi: 1 membrane (the structure segmented, so that
  nnU-Net's foreground sampling and Dice treat it as foreground), 0 cell;
- nnUNetTrainer's recipe: fold 0 of its 5-fold split (80% trained, 20% its own
  validation), SGD Nesterov 0.01 with poly decay over 1000 epochs of 250 iterations, deep
  supervision, Dice + cross entropy, its augmentation; CPU, no torch.compile (it disables
  it on CPU itself), ``nnUNet_n_proc_DA`` = --threads (0, in the main process, for 1).
Training stops after the iteration at which ``--minutes`` run out (the clock starts at
its first iteration: planning, preprocessing and data-loader start-up are not counted);
the unfinished epoch is not validated, and checkpoint_final.pth holds the last weights
(nnU-Net's own end of training). ``--epochs`` / ``--iterations`` / ``--val-iterations``
change 1000 / 250 / 50 (a schedule fitted to the budget, so that its learning rate decays;
say so). Prediction: nnUNetPredictor (Gaussian-weighted
sliding window, step 0.5) with its mirroring TTA switched by ``--tta``; probabilities are
kept (OUT/work/probabilities/CASE.npz). isbi: OUT/pred/NAME.tif = P(cell) = P(class 0);
dsb: instances come from ``nnunet_biounet.py instances`` (biounet's seeded watershed
with the nuclei preset's settings), which run.sh calls in biounet's venv.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DATASET = {"dsb": (501, "Dataset501_DSBnuclei"), "isbi": (502, "Dataset502_ISBI2012")}


def flags(p) -> None:
    p.add_argument("--class-labels", type=Path,
                   help="dsb: class masks 0/1/2 by stem (nnunet_biounet.py targets)")
    p.add_argument("--epochs", type=int, default=1000, help="nnUNetTrainer: 1000")
    p.add_argument("--iterations", type=int, default=250,
                   help="iterations per epoch (nnUNetTrainer: 250)")
    p.add_argument("--val-iterations", type=int, default=50,
                   help="validation iterations per epoch (nnUNetTrainer: 50)")


def write_raw(a, raw: Path) -> tuple[int, list[str]]:
    """nnU-Net's raw dataset (PNG) for the task; returns (dataset id, test case names)."""
    import imageio.v3 as iio
    import numpy as np

    did, name = DATASET[a.task]
    root = raw / name
    shutil.rmtree(root, ignore_errors=True)
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (root / d).mkdir(parents=True)
    labels = a.class_labels if a.task == "dsb" else a.train_labels
    if a.task == "dsb" and labels is None:
        raise SystemExit("nnunet_driver: --task dsb needs --class-labels (nnunet_biounet.py)")
    cases = C.pairs(a.train_images, labels)
    for stem, img, lab in cases:
        if a.task == "isbi":
            lab = (lab == 0).astype(np.uint8)  # 1 = membrane
        iio.imwrite(root / "imagesTr" / f"{stem}_0000.png", img.astype(np.uint8))
        iio.imwrite(root / "labelsTr" / f"{stem}.png", lab.astype(np.uint8))
    tests = C.image_files(a.test_images)
    for f in tests:
        iio.imwrite(root / "imagesTs" / f"{f.stem}_0000.png", C.read(f).astype(np.uint8))
    classes = ({"background": 0, "interior": 1, "boundary": 2} if a.task == "dsb"
               else {"background": 0, "membrane": 1})
    channel = "fluorescence" if a.task == "dsb" else "EM"  # any name: z-score normalisation
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": classes,
        "numTraining": len(cases), "file_ending": ".png"}, indent=1))
    return did, [f.stem for f in tests]


def main() -> None:
    a = C.parse_args(__doc__.splitlines()[0], flags)
    C.limit_threads(a.threads)
    work = a.out / "work"
    for k in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{k}"] = str(work / f"nnUNet_{k}")
        (work / f"nnUNet_{k}").mkdir(parents=True, exist_ok=True)
    # nnU-Net's own variable names; its planner sets torch's threads to nnUNet_n_proc_DA
    os.environ["nnUNet_n_proc_DA"] = str(a.threads)  # noqa: SIM112
    os.environ["nnUNet_compile"] = "f"  # noqa: SIM112
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    did, test_cases = write_raw(a, work / "nnUNet_raw")
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    t0 = time.monotonic()
    extract_fingerprints([did], num_processes=1, check_dataset_integrity=True)
    plans_name = plan_experiments([did])
    preprocess([did], plans_name, configurations=("2d",), num_processes=(1,))
    plan_s = time.monotonic() - t0
    os.environ["nnUNet_n_proc_DA"] = str(a.threads if a.threads > 1 else 0)  # noqa: SIM112
    torch.set_num_threads(a.threads)
    name = DATASET[a.task][1]
    plans = load_json(os.path.join(nnUNet_preprocessed, name, f"{plans_name}.json"))
    dataset_json = load_json(os.path.join(nnUNet_preprocessed, name, "dataset.json"))
    budget = C.Budget(a.minutes)
    state = {"steps": 0, "epochs": 0.0}

    class BudgetTrainer(nnUNetTrainer):
        """nnUNetTrainer whose loop ends after the iteration at which the budget runs out."""

        def __init__(self, plans, configuration, fold, dataset_json, device):
            # nnUNetTrainer records its init arguments by these names
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch = a.epochs, a.iterations
            self.num_val_iterations_per_epoch = a.val_iterations
            if a.smoke:
                self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 3, 2

        def run_training(self):
            self.on_train_start()
            budget.start = time.monotonic()
            for _ in range(self.current_epoch, self.num_epochs):
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    state["steps"] += 1
                    if budget.over():
                        break
                state["epochs"] = state["steps"] / self.num_iterations_per_epoch
                self.on_train_epoch_end(outputs)
                if budget.over() and len(outputs) < self.num_iterations_per_epoch:
                    self.current_epoch += 1  # as on_epoch_end would (on_train_end undoes it)
                    break  # an unfinished epoch: no validation
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
                if budget.over():
                    break
            self.on_train_end()

    plans["continue_training"] = False  # what nnU-Net's run_training adds for a fresh run
    trainer = BudgetTrainer(plans=plans, configuration="2d", fold=0,
                            dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.run_training()
    train_s = budget.elapsed()

    t0 = time.monotonic()
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=a.tta,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager,
                                    trainer.configuration_manager,
                                    [trainer.network.state_dict()], trainer.dataset_json,
                                    "nnUNetTrainer", trainer.inference_allowed_mirroring_axes)
    probs_dir = work / "probabilities"
    shutil.rmtree(probs_dir, ignore_errors=True)
    predictor.predict_from_files(str(work / "nnUNet_raw" / name / "imagesTs"), str(probs_dir),
                                 save_probabilities=True, overwrite=True,
                                 num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)
    if a.task == "isbi":
        for stem in test_cases:
            p = np.load(probs_dir / f"{stem}.npz")["probabilities"]  # (C, 1, H, W)
            C.write_prediction(a.out, a.task, stem, p[0, 0])  # P(cell) = P(class 0)
    cfg = plans["configurations"]["2d"]
    splits = load_json(os.path.join(nnUNet_preprocessed, name, "splits_final.json"))
    from importlib.metadata import version
    C.write_log(a.out, peer="nnunet", version=version("nnunetv2"), torch=torch.__version__,
                steps=state["steps"], epochs=round(state["epochs"], 3),
                iterations_per_epoch=trainer.num_iterations_per_epoch,
                val_iterations_per_epoch=trainer.num_val_iterations_per_epoch,
                planned_epochs=trainer.num_epochs, batch_size=cfg["batch_size"],
                patch_size=cfg["patch_size"], plans=plans_name,
                train_cases=len(splits[0]["train"]), val_cases=len(splits[0]["val"]),
                plan_preprocess_seconds=round(plan_s, 1), train_seconds=round(train_s, 1),
                predict_seconds=round(time.monotonic() - t0, 1), test_images=len(test_cases),
                tta=a.tta, n_proc_DA=os.environ["nnUNet_n_proc_DA"],  # noqa: SIM112
                threads=a.threads,
                minutes=a.minutes, smoke=a.smoke)


if __name__ == "__main__":
    main()
