"""Learning from a few annotated objects: sparse labels, rounds of fine-tuning, an honest
estimate of how good a round is, and where to annotate next (napari's *Train* widget is a
form over these; the CLI trains from the same folders).

Sparse annotations. A user paints some objects and marks, with rectangles, the regions
they looked at completely:

- a painted object (label > 0) counts wherever it is;
- inside a rectangle, an unpainted pixel is background;
- elsewhere a pixel is *not annotated*: stored as :data:`UNANNOTATED` (65535) and left out
  of the loss, the weight map and the scores (``train --ignore-label 65535``).

An image given without rectangles counts as annotated everywhere (a complete label image,
e.g. a corrected prediction). A round's folder (:func:`save_round`) holds ``images/`` and
``labels/`` (uint16 TIFFs, 65535 not annotated) and ``annotations.json`` (the rectangles),
so that ``biounet train --images F/images --labels F/labels --ignore-label 65535`` trains
from it as the widget does.

Rectangles are ``(top, left, bottom, right)`` pixel bounds, bottom and right exclusive.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .checkpoint import model_from_checkpoint
from .config import Preset
from .errors import InputError, Stopped
from .io import read_images, write_text, write_tiff
from .metrics import instance_scores
from .presets import get_preset, init_preset
from .segment import segment
from .train import train

UNANNOTATED = 65535  # the stored label of a pixel nobody annotated (train --ignore-label)

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom and right exclusive


def box_of(corners: np.ndarray, shape: tuple[int, int]) -> Box:
    """The pixel bounds of a rectangle given by its corners ((N, 2) row, column: a napari
    Shapes rectangle's data), clipped to an image of ``shape``. ValueError if it holds no
    pixel of the image."""
    corners = np.asarray(corners, dtype=np.float64)[:, -2:]
    top, left = np.floor(corners.min(axis=0)).astype(int)
    bottom, right = np.ceil(corners.max(axis=0)).astype(int)
    top, left = max(int(top), 0), max(int(left), 0)
    bottom, right = min(int(bottom), shape[0]), min(int(right), shape[1])
    if bottom <= top or right <= left:
        raise ValueError(f"a rectangle at {corners.min(axis=0).tolist()} holds no pixel of the "
                         f"{shape[0]} x {shape[1]} image")  # fmt: skip
    return top, left, bottom, right


def annotated(labels: np.ndarray, boxes: Sequence[Box] | None) -> np.ndarray:
    """(H, W) bool: the pixels annotated by ``labels`` (painted objects) and ``boxes``
    (everything inside); everywhere when ``boxes`` is None. A label of -1 is not annotated
    wherever it is (:func:`without` marks held-out regions so)."""
    if boxes is None:
        return labels >= 0
    region = labels > 0
    for top, left, bottom, right in boxes:
        region[top:bottom, left:right] = True
    return region & (labels >= 0)


def sparse_labels(labels: np.ndarray, boxes: Sequence[Box] | None) -> np.ndarray:
    """The uint16 label image to store: ``labels`` where annotated, UNANNOTATED elsewhere
    (and where ``labels`` is -1). ValueError if ``labels`` holds ids below -1 or that do
    not fit below UNANNOTATED."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label image must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < -1 or labels.max() >= UNANNOTATED):
        raise ValueError(f"label ids must be in 0..{UNANNOTATED - 1}, got "
                         f"{labels.min()}..{labels.max()}")  # fmt: skip
    out = np.where(labels < 0, 0, labels).astype(np.uint16)
    out[~annotated(labels, boxes)] = UNANNOTATED
    return out


@dataclass
class Annotations:
    """Images with their (sparse) labels: ``labels[i]`` instance ids (0: background or
    not annotated), ``boxes[i]`` the rectangles annotated completely (None: the whole
    image). ``names``: file stems."""

    names: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]
    boxes: list[list[Box] | None] = field(default_factory=list)

    def __post_init__(self):
        if not self.boxes:
            self.boxes = [None] * len(self.names)
        if not (len(self.names) == len(self.images) == len(self.labels) == len(self.boxes)):
            raise ValueError("names, images, labels and boxes must have one entry per image")
        for name, image, lab in zip(self.names, self.images, self.labels, strict=True):
            if image.shape[-2:] != lab.shape:
                raise ValueError(f"{name}: image {image.shape[-2:]} and labels {lab.shape} "
                                 "differ in size")  # fmt: skip

    def objects(self) -> int:
        """The number of annotated objects (ids > 0)."""
        return sum(len(np.unique(lab[lab > 0])) for lab in self.labels)


def save_round(folder: str | Path, notes: Annotations) -> Path:
    """Write ``notes`` to ``folder``: images/NAME.tif, labels/NAME.tif (sparse, uint16)
    and annotations.json (the rectangles and the not-annotated value). Returns ``folder``."""
    folder = Path(folder)
    for name, image, lab, boxes in zip(notes.names, notes.images, notes.labels, notes.boxes,
                                       strict=True):  # fmt: skip
        write_tiff(folder / "images" / f"{name}.tif", np.asarray(image))
        write_tiff(folder / "labels" / f"{name}.tif", sparse_labels(lab, boxes))
    meta = {"unannotated": UNANNOTATED,
            "boxes": {n: None if b is None else [list(map(int, x)) for x in b]
                      for n, b in zip(notes.names, notes.boxes, strict=True)}}  # fmt: skip
    write_text(folder / "annotations.json", json.dumps(meta, indent=1) + "\n")
    return folder


def load_round(folder: str | Path) -> Annotations:
    """The annotations :func:`save_round` wrote (not-annotated pixels read as 0)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "annotations.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{folder / 'annotations.json'}: not a biounet annotation round "
                         f"({e})") from None  # fmt: skip
    images = read_images(folder / "images")
    labels = read_images(folder / "labels", mask=True)
    boxes = [None if meta["boxes"].get(n) is None else [tuple(b) for b in meta["boxes"][n]]
             for n in images.names]  # fmt: skip
    cleared = [np.where(lab == meta["unannotated"], 0, lab).astype(np.int32)
               for lab in labels.arrays]  # fmt: skip
    return Annotations(list(images.names), list(images.arrays), cleared, boxes)


def start_preset(start: str | Path | None, preset: str | None) -> Preset:
    """What a round starts from: the model ``start``'s preset (or ``preset``'s training
    around its network), or with no ``start`` the preset ``preset`` (default nuclei)."""
    if start is not None:
        return init_preset(str(start), preset)
    return get_preset(preset or "nuclei")


def round_preset(start: str | Path | None, preset: str | None, data: str | Path,
                 minutes: float, **changes) -> Preset:  # fmt: skip
    """The preset of a round: fine-tuning the model ``start`` (its own preset, or
    ``preset``'s training around its network) or, with no ``start``, ``preset`` from
    scratch; trained on ``data``'s images/ and labels/ (UNANNOTATED ignored, nothing held
    out: :func:`fold_estimate` says how good it is) for ``minutes``; ``changes``:
    TrainConfig fields (the form's)."""
    data = Path(data)
    return start_preset(start, preset).with_train(
        images=str(data / "images"), labels=str(data / "labels"), ignore_label=UNANNOTATED,
        val_slices="none", time_limit=float(minutes), **changes)  # fmt: skip


def train_round(notes: Annotations, out: str | Path, start: str | Path | None,
                preset: str | None, minutes: float, *, stop: threading.Event | None = None,
                on_step: Callable[..., None] | None = None, saved: bool = False,
                **changes) -> Path:  # fmt: skip
    """Save ``notes`` to ``out``/data (unless ``saved``: they are there) and train a round
    on them into ``out``/run (see :func:`round_preset`); returns the model file: best.pt,
    or last.pt where ``stop`` ended the run (it holds the weights of the step it stopped
    at). A signal (SIGTERM, SIGINT) ends it with :class:`biounet.errors.Stopped`, as it
    ends any training run."""
    out = Path(out)
    data = out / "data" if saved else save_round(out / "data", notes)
    run = out / "run"
    try:
        train(round_preset(start, preset, data, minutes, **changes), run, progress=False,
              stop=stop, on_step=on_step)  # fmt: skip
    except Stopped:  # by ``stop``: the step's model; by a signal: the caller's to handle
        if stop is None or not stop.is_set() or not (run / "last.pt").exists():
            raise
        return run / "last.pt"
    return run / "best.pt"


def _units(notes: Annotations) -> list[tuple[int, Box | None]]:
    """What folds deal out: every rectangle, and every image given whole."""
    units = []
    for i, boxes in enumerate(notes.boxes):
        units += [(i, None)] if boxes is None else [(i, b) for b in boxes]
    return units


def without(notes: Annotations, held: Sequence[tuple[int, Box | None]]) -> Annotations:
    """``notes`` less the held-out units: a held-out image leaves, a held-out rectangle
    becomes not annotated (label -1), objects reaching into it included, also where a kept
    rectangle overlaps them; an image left with nothing annotated leaves."""
    names, images, labels, boxes = [], [], [], []
    for i, name in enumerate(notes.names):
        mine = [b for k, b in held if k == i]
        if None in mine:
            continue
        lab = notes.labels[i].copy()
        kept = notes.boxes[i]
        if mine:
            for top, left, bottom, right in mine:
                ids = np.unique(lab[top:bottom, left:right])
                lab[np.isin(lab, ids[ids > 0])] = -1
                lab[top:bottom, left:right] = -1
            kept = [b for b in kept if b not in mine]
            if not annotated(lab, kept).any():
                continue
        names.append(name)
        images.append(notes.images[i])
        labels.append(lab)
        boxes.append(kept)
    return Annotations(names, images, labels, boxes)


def held_out_score(model: str | Path, notes: Annotations,
                   held: Sequence[tuple[int, Box | None]]) -> dict:  # fmt: skip
    """Pooled TP, FP, FN at IoU 0.5 of ``model`` on the held-out units (the image, or the
    rectangle's crop of both the prediction and the annotation)."""
    net = model_from_checkpoint(model, "cpu")
    tp = fp = fn = 0
    for i, box in held:
        pred = segment(net, notes.images[i], outputs=("instances",)).instances
        ref = notes.labels[i]
        if box is not None:
            top, left, bottom, right = box
            pred, ref = pred[top:bottom, left:right], ref[top:bottom, left:right]
        s = instance_scores(ref, pred, thresholds=(0.5,))
        tp, fp, fn = tp + s["tp"][0], fp + s["fp"][0], fn + s["fn"][0]
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn),
            "ap50": tp / (tp + fp + fn) if tp + fp + fn else 1.0}  # fmt: skip


def fold_estimate(notes: Annotations, out: str | Path, start: str | Path | None,
                  preset: str | None, minutes: float, *, k: int = 3, by: str = "auto",
                  stop: threading.Event | None = None, **changes) -> dict:  # fmt: skip
    """How good a round trained on ``notes`` is, measured where it did not train: the
    annotated images (``by="image"``) or their rectangles (``"box"``) dealt to ``k``
    folds; fold j's model is trained as the round is (same start, preset and minutes: k
    times the round's time) without fold j and scored on it (pooled AP@0.5). "auto":
    by image where 2 or more images are annotated, else by rectangle. Rectangles of the
    image a model trained on flatter it: they share its staining and its field, and
    images the model has never seen may differ more (docs/results-annotator.md). Returns
    {"k", "by", "units", "ap50" (per fold), "mean", "sd"}. ValueError with fewer than 2
    units: one annotated region cannot be both trained on and held out."""
    units = _units(notes)
    if by == "auto":
        by = "image" if len({i for i, _ in units}) >= 2 else "box"
    if by not in ("image", "box"):
        raise ValueError(f"by must be auto, image or box, got {by!r}")
    groups = sorted({i for i, _ in units}) if by == "image" else list(range(len(units)))
    if len(groups) < 2:
        raise ValueError(f"an estimate by {by} needs at least 2 annotated "
                         f"{'images' if by == 'image' else 'rectangles or images'}; there is "
                         f"{len(groups)}")  # fmt: skip
    k = min(k, len(groups))
    order = np.random.default_rng(0).permutation(len(groups))
    if by == "image":
        folds = [[u for u in units if u[0] in {groups[j] for j in order[f::k]}] for f in range(k)]
    else:
        folds = [[units[j] for j in order[f::k]] for f in range(k)]
    scores = []
    for f, held in enumerate(folds):
        if stop is not None and stop.is_set():
            break
        # by image, a held image leaves whole (its objects outside its rectangles too)
        rest = without(notes, sorted({(i, None) for i, _ in held}) if by == "image" else held)
        if rest.objects() == 0:
            continue
        model = train_round(rest, Path(out) / f"fold{f}", start, preset, minutes,
                            stop=stop, **changes)  # fmt: skip
        scores.append(held_out_score(model, notes, held)["ap50"])
    return {"k": k, "by": by, "units": len(units), "ap50": scores,
            "mean": float(np.mean(scores)) if scores else float("nan"),
            "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan")}  # fmt: skip


VIEWS = [(k, flip) for flip in (False, True) for k in range(4)]  # the 8 dihedral views


def disagreement(model: str | Path | tuple, image: np.ndarray) -> np.ndarray:
    """(H, W) float32: the standard deviation of the foreground probability over the 8
    views (rotations by 90 degrees, with and without a flip) of ``image``: high where the
    model is unsure, where annotating teaches it most."""
    net = model_from_checkpoint(model, "cpu") if isinstance(model, str | Path) else model
    config = replace(net[1].inference, tta=False)
    views = []
    for k, flip in VIEWS:
        x = np.flip(image, -1) if flip else image
        x = np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))
        p = segment(net, x, config, outputs=("probabilities",)).probabilities
        p = np.rot90(p, -k, axes=(-2, -1))
        views.append(np.flip(p, -1) if flip else p)
    return np.std(np.stack(views), axis=0).astype(np.float32)


def next_box(uncertainty: np.ndarray, size: int, taken: Sequence[Box] = ()) -> Box:
    """The ``size`` x ``size`` rectangle (clipped to the image) of the highest mean
    ``uncertainty`` that overlaps none of ``taken``, on a grid of half-size steps."""
    H, W = uncertainty.shape
    step = max(1, size // 2)
    integral = np.pad(uncertainty.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, where = -1.0, None
    for top in range(0, max(H - size, 0) + 1, step):
        for left in range(0, max(W - size, 0) + 1, step):
            b, r = min(top + size, H), min(left + size, W)
            if any(top < t[2] and t[0] < b and left < t[3] and t[1] < r for t in taken):
                continue
            mean = (integral[b, r] - integral[top, r] - integral[b, left]
                    + integral[top, left]) / ((b - top) * (r - left))  # fmt: skip
            if mean > best:
                best, where = mean, (top, left, b, r)
    if where is None:
        raise ValueError("no free place for another rectangle")
    return where



def serve_round(spec: str | Path) -> int:
    """A round as a process of its own (``python -m biounet.annotate SPEC``), so that a
    viewer's thread never waits on it. SPEC (JSON): ``out`` (a folder whose data/ holds
    the round's annotations, :func:`save_round`), ``start``, ``preset``, ``minutes``,
    ``changes``, ``estimate`` (bool), ``uncertainty`` (an image name of data/, or None).
    Trains (:func:`train_round`), then optionally :func:`fold_estimate` and
    :func:`disagreement` (written to out/uncertainty.npy). Writes one JSON line per step
    (``{"step": progress}``) and a last line ``{"done": result}`` or ``{"error": kind,
    "message": text}`` to stdout; a line "stop" on stdin stops it at the next step."""
    import sys

    job = json.loads(Path(spec).read_text())
    out = Path(job["out"])
    stop = threading.Event()

    def listen() -> None:  # "stop", or stdin closed (the viewer went away): stop
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    def say(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    threading.Thread(target=listen, daemon=True).start()
    try:
        notes = load_round(out / "data")
        args = (job["start"], job["preset"], job["minutes"])
        model = train_round(notes, out, *args, stop=stop, on_step=lambda **p: say({"step": p}),
                            saved=True, **job["changes"])  # fmt: skip
        result: dict = {"model": str(model), "stopped": model.name == "last.pt"}
        if job["estimate"] and not stop.is_set():
            result["estimate"] = fold_estimate(notes, out / "estimate", *args, stop=stop,
                                               **job["changes"])  # fmt: skip
        if job["uncertainty"] is not None and not stop.is_set():
            k = notes.names.index(job["uncertainty"])
            np.save(out / "uncertainty.npy", disagreement(model, notes.images[k]))
            result["uncertainty"] = str(out / "uncertainty.npy")
        say({"done": result})
        return 0
    except Exception as e:  # told to the viewer in a line, whatever it is
        say({"error": type(e).__name__, "message": str(e)})
        return 1


if __name__ == "__main__":
    import sys

    raise SystemExit(serve_round(sys.argv[1]))
