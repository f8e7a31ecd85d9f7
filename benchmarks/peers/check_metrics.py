"""biounet's instance scores beside StarDist's and cellpose's own, on the same predictions.

    PYTHON benchmarks/peers/check_metrics.py PRED GT [--biounet-json FILE]

PRED: a folder of NAME-instances.tif (or, without any, NAME.tif) instance labels, GT: a folder of
NAME.tif / NAME.png reference instances. Run it with the stardist venv's python
(stardist.matching.matching_dataset) or the cellpose venv's (cellpose.metrics
.average_precision); each library that imports is compared. biounet's numbers come from
``biounet evaluate PRED GT --instances --json`` (biounet's .venv, run here unless
``--biounet-json`` gives its output). Compared, at IoU 0.5 and over the DSB 2018
thresholds 0.5, 0.55, ..., 0.95: the mean over images of TP / (TP + FP + FN) (biounet's
"AP@0.5" and "DSB score"), the pooled TP / (TP + FP + FN) of the summed counts, and each
image's AP@0.5. biounet matches by IoU > t, StarDist and cellpose by IoU >= t: the two
differ only for a pair whose IoU is exactly t.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def load(pred: Path, gt: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names and (gt, pred) instance arrays paired by stem (NAME-instances pairs NAME)."""
    refs = {f.stem: f for f in C.image_files(gt)}
    names, gts, preds = [], [], []
    files = C.image_files(pred)
    if any(f.stem.endswith("-instances") for f in files):  # a biounet predict folder
        files = [f for f in files if f.stem.endswith("-instances")]
    for f in files:
        stem = f.stem.removesuffix("-instances")
        if stem in refs:
            names.append(stem)
            gts.append(C.read(refs[stem]).astype(np.int32))
            preds.append(C.read(f).astype(np.int32))
    if not names:
        raise SystemExit(f"{pred}: no predictions named like the references in {gt}")
    return names, gts, preds


def ties(gts, preds, t: float = 0.5) -> int:
    """Pairs (reference, predicted object) whose IoU is exactly ``t`` (counted in integers),
    the only pairs that IoU > t and IoU >= t treat differently."""
    n = 0
    for g, p in zip(gts, preds, strict=True):
        P = int(p.max()) + 1
        inter = np.bincount(g.ravel().astype(np.int64) * P + p.ravel(),
                            minlength=(int(g.max()) + 1) * P).reshape(-1, P)
        union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
        num, den = round(t * 100), 100
        n += int(((inter * den == union * num) & (inter > 0))[1:, 1:].sum())
    return n


def biounet_scores(pred: Path, gt: Path, given: Path | None) -> dict:
    if given:
        return json.loads(given.read_text())
    out = subprocess.run([str(REPO / ".venv/bin/biounet"), "evaluate", str(pred), str(gt),
                          "--instances", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def stardist_scores(gts, preds) -> dict | None:
    try:
        from stardist.matching import matching_dataset
    except ImportError:
        return None
    per = [matching_dataset([g], [p], thresh=0.5, show_progress=False).accuracy
           for g, p in zip(gts, preds, strict=True)]
    by_image = matching_dataset(gts, preds, thresh=list(THRESHOLDS), by_image=True,
                                show_progress=False)
    pooled = matching_dataset(gts, preds, thresh=0.5, by_image=False, show_progress=False)
    return {"ap50": by_image[0].accuracy, "dsb": float(np.mean([m.accuracy for m in by_image])),
            "pooled50": pooled.accuracy, "per_image": per}


def cellpose_scores(gts, preds) -> dict | None:
    try:
        from cellpose.metrics import average_precision
    except ImportError:
        return None
    ap, tp, fp, fn = average_precision(gts, preds, threshold=list(THRESHOLDS))  # (N, T)
    return {"ap50": float(ap[:, 0].mean()), "dsb": float(ap.mean()),
            "pooled50": float(tp[:, 0].sum() / (tp[:, 0].sum() + fp[:, 0].sum() + fn[:, 0].sum())),
            "per_image": [float(v) for v in ap[:, 0]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pred", type=Path)
    p.add_argument("gt", type=Path)
    p.add_argument("--biounet-json", type=Path)
    a = p.parse_args()
    names, gts, preds = load(a.pred, a.gt)
    b = biounet_scores(a.pred, a.gt, a.biounet_json)
    tp, fp, fn = b["tp"][0], b["fp"][0], b["fn"][0]
    ours = {"ap50": b["ap50"], "dsb": b["dsb_score"], "pooled50": tp / max(1, tp + fp + fn),
            "per_image": {s["name"]: s["ap50"] for s in b["per_image"]}}
    ours["per_image"] = [ours["per_image"][n] for n in names]
    peers = {"stardist": stardist_scores(gts, preds), "cellpose": cellpose_scores(gts, preds)}
    peers = {k: v for k, v in peers.items() if v is not None}
    if not peers:
        raise SystemExit("neither stardist nor cellpose imports: run with a peer venv's python")
    print(f"{len(names)} images, {a.pred} against {a.gt}")
    print(f"{'score':<30}{'biounet':>10}" + "".join(f"{k:>10}" for k in peers))
    for key, label in (("ap50", "AP@0.5, mean over images"), ("pooled50", "AP@0.5, pooled"),
                       ("dsb", "DSB score (0.5..0.95)")):
        shown = "".join(f"{v[key]:>10.4f}" for v in peers.values())
        print(f"{label:<30}{ours[key]:>10.4f}{shown}")
    for k, v in peers.items():
        d = np.abs(np.array(v["per_image"]) - np.array(ours["per_image"]))
        print(f"per-image AP@0.5, biounet vs {k}: max |difference| {d.max():.2e} "
              f"({int((d > 1e-6).sum())} of {len(d)} images differ by more than 1e-6)")
    print(f"pairs with IoU exactly 0.5 (matched by >= 0.5, not by > 0.5): {ties(gts, preds)}")


if __name__ == "__main__":
    main()
