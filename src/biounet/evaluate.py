"""Scoring predictions against references: files or arrays in, an :class:`Evaluation` out.

Three kinds of prediction are scored, each by its own metrics (biounet.metrics):
probability maps (ISBI 2012: V_rand, V_info, the paper's pixel, Rand and warping errors,
IoU, Dice, SEG), class maps (IoU and Dice per class) and instance labels (DSB 2018 score,
AP@0.5, F1, SEG, merges, splits). ``biounet evaluate`` maps its flags onto
:func:`evaluate` and prints :meth:`Evaluation.lines` or :meth:`Evaluation.to_json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import (
    IMAGE_SUFFIXES,
    Images,
    as_instances,
    check_pairs,
    list_image_files,
    read_images,
    read_instances,
    read_masks,
)
from .labels import IGNORE_INDEX
from .metrics import (
    DEFAULT_THRESHOLDS,
    METRICS,
    class_scores_many,
    instance_scores_many,
    isbi_scores,
)
from .slices import parse_slices

INSTANCE_SUFFIX = "-instances"  # predict --instances writes NAME-instances.tif
PROBABILITIES_SUFFIX = "-probabilities"  # predict --probabilities writes NAME-probabilities.tif
INSTANCE_KEYS = ("ap50", "dsb_score", "f1", "seg", "precision50", "recall50", "merges",
                 "splits", "n_gt", "n_pred", "images", "thresholds", "tp", "fp", "fn")  # fmt: skip

Source = str | Path | np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class Evaluation:
    """Scores of predictions against references.

    ``kind``: "probabilities", "classes" or "instances"; ``overall``: the scores of the
    whole set (the keys of ``biounet evaluate --json``); ``per_image``: each scored image's
    scores, named by ``names``.
    """

    kind: str
    pred: str
    gt: str
    names: list[str]
    overall: dict
    per_image: list[dict] = field(default_factory=list)
    unscored: int = 0  # reference images without a prediction (instances)
    metrics: tuple[str, ...] = ()  # the probability maps' metrics, in the report's order

    def to_json(self) -> str:
        """One JSON object: the overall scores and ``per_image`` (each with its ``name``)."""
        per_image = [{"name": n, **s} for n, s in zip(self.names, self.per_image, strict=True)]
        return json.dumps({**self.overall, "per_image": per_image})

    def lines(self) -> list[str]:
        """The report ``biounet evaluate`` prints."""
        return {"probabilities": _probability_lines, "classes": _class_lines,
                "instances": _instance_lines}[self.kind](self)  # fmt: skip


def evaluate(
    pred: Source,
    gt: Source,
    *,
    instances: bool | None = None,
    classes: int | None = None,
    slices: str | None = None,
    metrics: Sequence[str] = METRICS,
    thresholds: Sequence[float] | None = None,
    label_threshold: float | None = None,
) -> Evaluation:
    """Score ``pred`` against ``gt``: files, folders or stacks as ``biounet predict`` and
    ``train`` read them, or arrays ((H, W) or (N, H, W); a list of (H, W)).

    ``instances``: both are instance labels (default: where ``pred`` is a predict output
    folder or file of ``NAME-instances`` labels); ``classes`` C: ``pred`` is a class map
    0..C-1 and ``gt`` a class mask (255 = not labelled); otherwise ``pred`` holds
    probabilities (1 = cell) and ``gt`` masks. ``slices``: only these slices ("25-29"), of
    both stacks or of ``gt`` alone when ``pred`` holds just those. ``metrics`` and
    ``thresholds`` choose the probability maps' scores; ``label_threshold`` binarises soft
    reference masks. Bad input is an InputError naming the file and the problem.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise InputError(f"--metrics: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(METRICS)}")  # fmt: skip
    if instances is None:
        instances = isinstance(pred, str | Path) and bool(instance_files(Path(pred)))
    if label_threshold is not None and (classes is not None or instances):
        raise InputError("--label-threshold binarises GT masks for probability maps; class "
                         "maps (--classes) and instance labels are scored as they are")  # fmt: skip
    if classes is not None:
        return _evaluate_classes(pred, gt, classes, slices, instances, thresholds)
    if instances:
        return _evaluate_instances(pred, gt, slices)
    return _evaluate_probabilities(pred, gt, slices, tuple(metrics),
                                   tuple(thresholds or DEFAULT_THRESHOLDS), label_threshold)


def _images(source: Source, reader, what: str) -> Images:
    """``source`` read by ``reader`` (a path), or arrays wrapped as Images."""
    if isinstance(source, str | Path):
        return reader(source)
    arrays = [source] if isinstance(source, np.ndarray) and source.ndim == 2 else list(source)
    return Images([np.asarray(a) for a in arrays], [f"{what}[{i}]" for i in range(len(arrays))],
                  Path(what))  # fmt: skip


def _paired(preds: Images, gts: Images, slices: str | None, gt: str) -> tuple[list, list]:
    """(PRED indices, GT indices) to score against each other: every pair, or the slices
    of both stacks, or of GT alone when PRED holds just those slices. A GT folder is
    narrowed to the predicted names (check_pairs)."""
    gt_idx = list(range(len(gts)))
    if slices:
        gt_idx = parse_slices(slices, len(gts), f"{gt}: --slices", gts.names)
    if slices and len(preds) == len(gt_idx) < len(gts):
        return list(range(len(preds))), gt_idx  # PRED holds just the selected slices
    check_pairs(preds, gts)
    idx = gt_idx if slices else list(range(len(gts)))
    return idx, idx


def _check_shapes(preds: Images, gts: Images, idx, gt_idx, pred: str) -> None:
    for i, j in zip(idx, gt_idx, strict=True):
        p, g = preds.arrays[i], gts.arrays[j]
        if p.shape != g.shape:
            raise InputError(f"{pred}: slice {i} is {p.shape[0]} x {p.shape[1]}, "
                             f"its label {g.shape[0]} x {g.shape[1]}")  # fmt: skip


def _evaluate_probabilities(pred, gt, slices, metrics, thresholds, label_threshold):
    preds = _images(pred, read_images, "pred")
    hint = (" (instance labels? add --instances; classes 0..C-1? add --classes C; soft "
            "masks? add --label-threshold T)")  # fmt: skip
    gts = _images(gt, lambda p: read_masks(p, hint=hint, threshold=label_threshold), "gt")
    idx, gt_idx = _paired(preds, gts, slices, str(gt))
    _check_shapes(preds, gts, idx, gt_idx, str(pred))
    probs = [preds.arrays[i].astype(np.float32) for i in idx]
    for i, p in zip(idx, probs, strict=True):
        if p.min() < 0 or p.max() > 1:
            if preds.arrays[i].dtype == np.uint8:
                raise InputError(f"{pred}: 8-bit values; expected float probabilities "
                                 "in [0, 1] (1 = cell), as biounet predict writes (a class "
                                 "map: add --classes C)")  # fmt: skip
            raise InputError(f"{pred}: slice {i} has values outside [0, 1] "
                             f"({p.min():g} .. {p.max():g}); expected probabilities")  # fmt: skip
    result = isbi_scores(probs, [gts.arrays[j] for j in gt_idx], thresholds=thresholds,
                         metrics=metrics)  # fmt: skip
    per_image = result.pop("per_image")
    return Evaluation("probabilities", str(pred), str(gt), [preds.names[i] for i in idx],
                      result, per_image, metrics=metrics)  # fmt: skip


def _evaluate_classes(pred, gt, c, slices, instances, thresholds) -> Evaluation:
    if not 2 <= c <= IGNORE_INDEX:
        raise InputError(f"--classes must be in 2..{IGNORE_INDEX}, got {c}")
    if instances:
        raise InputError("--classes scores class maps, --instances instance labels: give one")
    if thresholds:
        raise InputError("--thresholds applies to probability maps; a class map (--classes) "
                         "has none")  # fmt: skip
    hint = f"; expected a class map 0..{c - 1} (predict's NAME.tif of a {c}-class model)"
    preds = _images(pred, lambda p: _class_maps(Path(p), c, hint), "pred")
    gts = _images(gt, lambda p: read_masks(p, c, f"; expected classes 0..{c - 1}, "
                  f"{IGNORE_INDEX} = not labelled", ignore=IGNORE_INDEX), "gt")  # fmt: skip
    idx, gt_idx = _paired(preds, gts, slices, str(gt))
    _check_shapes(preds, gts, idx, gt_idx, str(pred))
    pairs = [(preds.arrays[i], gts.arrays[j]) for i, j in zip(idx, gt_idx, strict=True)]
    r = class_scores_many(*zip(*pairs, strict=True), num_classes=c, ignore=IGNORE_INDEX)
    total = sum(g.size for _, g in pairs)
    result = {"classes": c, "images": len(idx), "pixels": r["pixels"],
              "ignored": total - r["pixels"], **_class_result(r)}
    per_image = []
    for p, g in pairs:
        one = class_scores_many([p], [g], num_classes=c, ignore=IGNORE_INDEX)
        per_image.append({"pixels": one["pixels"], **_class_result(one)})
    return Evaluation("classes", str(pred), str(gt), [preds.names[i] for i in idx], result,
                      per_image)  # fmt: skip


def _class_maps(src: Path, c: int, hint: str) -> Images:
    """A class map file, or a predict output folder's class maps (not its
    NAME-probabilities files)."""
    if not src.is_dir():
        return read_masks(src, c, hint)
    files = [f for f in list_image_files(src) if not f.stem.endswith(PROBABILITIES_SUFFIX)]
    parts = [read_masks(f, c, hint) for f in files]
    return Images([a for p in parts for a in p.arrays], [n for p in parts for n in p.names], src)


def _class_result(r: dict) -> dict:
    def score(v: float) -> float | None:  # NaN (no such class anywhere) -> null
        return None if v != v else round(v, 6)

    return {**{k: [score(v) for v in r[k]] for k in ("iou_per_class", "dice_per_class")},
            "mean_iou": score(r["mean_iou"]), "mean_dice": score(r["mean_dice"])}  # fmt: skip


def instance_files(path: Path) -> list[Path]:
    """The ``NAME-instances.*`` files at ``path`` (a folder, or one such file)."""
    if not path.exists():
        return []
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [f for f in files
            if f.suffix.lower() in IMAGE_SUFFIXES and f.stem.endswith(INSTANCE_SUFFIX)]  # fmt: skip


def _predicted_instances(source: Source) -> Images:
    """Instance labels of a predict output folder (its NAME-instances files, not the
    probability maps), a file, or arrays; a binary mask becomes its components."""
    if isinstance(source, str | Path) and Path(source).is_dir() and instance_files(Path(source)):
        files = instance_files(Path(source))
        parts = [read_images(f, mask=True) for f in files]
        preds = Images([a for p in parts for a in p.arrays], [f.stem for f in files],
                       Path(source))  # fmt: skip
    else:
        preds = _images(source, lambda p: read_images(p, mask=True), "pred")
    return as_instances(preds)  # a binary mask: its connected components, with one warning


def _evaluate_instances(pred, gt, slices) -> Evaluation:
    preds = _predicted_instances(pred)
    gts = _images(gt, read_instances, "gt")
    if not isinstance(gt, str | Path):
        gts = as_instances(gts)
    for images in (preds, gts):  # NAME-instances pairs with NAME
        images.names = [n[: -len(INSTANCE_SUFFIX)] if n.endswith(INSTANCE_SUFFIX) else n
                        for n in images.names]  # fmt: skip
    unscored = len(gts) - len(preds)
    check_pairs(preds, gts)  # GT is narrowed to the predicted names
    idx = list(range(len(gts)))
    if slices:
        idx = parse_slices(slices, len(gts), f"{gt}: --slices", gts.names)
    r = instance_scores_many([gts.arrays[i] for i in idx], [preds.arrays[i] for i in idx])
    result = {k: r[k] for k in INSTANCE_KEYS}
    result["thresholds"] = [round(float(t), 4) for t in result["thresholds"]]
    per_image = [{k: v for k, v in s.items() if k != "thresholds"} for s in r["per_image"]]
    return Evaluation("instances", str(pred), str(gt), [gts.names[i] for i in idx], result,
                      per_image, max(unscored, 0))  # fmt: skip


def _probability_lines(e: Evaluation) -> list[str]:
    r, t = e.overall, e.overall["thresholds"]["thresholds"]
    lines = [f"{e.pred} against {e.gt}: {len(e.names)} slice(s), thresholds "
             f"{t[0]:g}..{t[-1]:g}"]  # fmt: skip
    for key in e.metrics:
        at = r.get(f"{key}_threshold")
        extra = ""
        if key in ("v_rand", "v_info"):
            extra = f"  split {r[key + '_split']:.4f}  merge {r[key + '_merge']:.4f}"
        where = f"  (threshold {at:g})" if at is not None else ""
        lines.append(f"  {key:<14} {r[key]:.6f}{extra}{where}")
    return lines


def _class_lines(e: Evaluation) -> list[str]:
    r = e.overall
    lines = [f"{e.pred} against {e.gt}: {len(e.names)} image(s), {r['classes']} classes, "
             f"{r['pixels']} pixels scored ({r['ignored']} not labelled)"]  # fmt: skip
    for name, key in (("IoU ", "iou"), ("Dice", "dice")):
        shown = "  ".join(f"class {k} " + ("n/a" if v is None else f"{v:.4f}")
                          for k, v in enumerate(r[f"{key}_per_class"], start=1))  # fmt: skip
        mean = r[f"mean_{key}"]
        lines.append(f"  {name}  {shown}  mean {'n/a' if mean is None else f'{mean:.4f}'}")
    return lines


def _instance_lines(e: Evaluation) -> list[str]:
    r = e.overall
    unscored = (f"; {e.unscored} reference images without a prediction not scored"
                if e.unscored > 0 else "")  # fmt: skip
    shown = [(t, tp, fp, fn) for t, tp, fp, fn in zip(r["thresholds"], r["tp"], r["fp"],
             r["fn"], strict=True) if round(t, 4) in (0.5, 0.75, 0.9)]  # fmt: skip
    return [
        f"{e.pred} against {e.gt}: {r['images']} image(s), {r['n_gt']} reference and "
        f"{r['n_pred']} predicted objects (matched by IoU > t){unscored}",
        f"  AP@0.5 {r['ap50']:.4f}  DSB score {r['dsb_score']:.4f}  F1@0.5 {r['f1']:.4f}  "
        f"SEG {r['seg']:.4f}  precision@0.5 {r['precision50']:.4f}  recall@0.5 "
        f"{r['recall50']:.4f}  merges {r['merges']}  splits {r['splits']}",
        "  TP / FP / FN " + "  ".join(f"at IoU > {t:g}: {tp} / {fp} / {fn}"
                                      for t, tp, fp, fn in shown),  # fmt: skip
    ]
