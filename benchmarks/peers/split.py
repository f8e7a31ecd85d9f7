"""Make the folders every peer trains and predicts from: biounet's data and fixed split.

    python benchmarks/peers/split.py dsb|isbi OUT [--smoke N]

OUT/train-images, OUT/train-labels, OUT/test-images, OUT/test-labels, paired by file stem:
- dsb: data/dsb2018-fluo/{images (PNG), labels (uint16 TIFF instances)}; test = the 40
  ids of data/splits/dsb2018-fluo-holdout.txt, train = the other 160 (symbolic links);
- isbi: data/isbi2012/train-volume.tif and train-labels.tif (0 = membrane, 255 = cell);
  slices 0-24 train, 25-29 test, one TIFF per slice (isbi-NN.tif).
``--smoke N``: the first N training and N/2 test images only (a plumbing check).
Needs numpy and tifffile (biounet's .venv has both); existing folders are replaced.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import tifffile

REPO = Path(__file__).resolve().parents[2]


def holdout_ids() -> set[str]:
    lines = (REPO / "data/splits/dsb2018-fluo-holdout.txt").read_text().splitlines()
    return {s.strip() for s in lines if s.strip() and not s.startswith("#")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=("dsb", "isbi"))
    p.add_argument("out", type=Path)
    p.add_argument("--smoke", type=int, default=0, metavar="N")
    a = p.parse_args()
    dirs = {k: a.out / k for k in ("train-images", "train-labels", "test-images", "test-labels")}
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    if a.task == "dsb":
        src = REPO / "data/dsb2018-fluo"
        test = holdout_ids()
        images = sorted((src / "images").glob("*.png"))
        assert len(test) == 40 and all((src / "images" / f"{t}.png").exists() for t in test)
        train_ids = [f.stem for f in images if f.stem not in test]
        test_ids = sorted(test)
        if a.smoke:
            train_ids, test_ids = train_ids[: a.smoke], test_ids[: max(1, a.smoke // 2)]
        for part, ids in (("train", train_ids), ("test", test_ids)):
            for i in ids:
                (dirs[f"{part}-images"] / f"{i}.png").symlink_to(src / "images" / f"{i}.png")
                (dirs[f"{part}-labels"] / f"{i}.tif").symlink_to(src / "labels" / f"{i}.tif")
    else:
        vol = tifffile.imread(REPO / "data/isbi2012/train-volume.tif")
        lab = tifffile.imread(REPO / "data/isbi2012/train-labels.tif")
        train, test = list(range(25)), list(range(25, 30))
        if a.smoke:
            train, test = train[: a.smoke], test[: max(1, a.smoke // 2)]
        for part, idx in (("train", train), ("test", test)):
            for i in idx:
                tifffile.imwrite(dirs[f"{part}-images"] / f"isbi-{i:02d}.tif", vol[i])
                tifffile.imwrite(dirs[f"{part}-labels"] / f"isbi-{i:02d}.tif", lab[i])
    n = {k: len(list(d.iterdir())) for k, d in dirs.items()}
    print(f"split {a.task} -> {a.out}: {n}")


if __name__ == "__main__":
    main()
