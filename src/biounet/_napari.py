"""The napari plugin (manifest: ``biounet/napari.yaml``; install ``biounet[napari]``).

- Widget *Segment* (Plugins > biounet): choose a model (a shipped one or a file: a
  checkpoint, ONNX or TorchScript), an image layer and the inference options; *Segment*
  runs :func:`biounet.segment` in a worker thread (the viewer stays responsive, a progress
  bar runs) and adds the probability as an Image layer and the instances (or a
  multi-class model's class map) as a Labels layer.
- Widget *Train* (Plugins > biounet): fine-tune a model (or train one from scratch) on
  the objects painted in a labels layer, inside the rectangles of a Shapes layer
  (:mod:`biounet.annotate`: unpainted pixels inside are background, pixels outside are
  not annotated), for a time budget; its form comes from the training settings'
  declarations (:func:`biounet.settings.form_options`). Training runs in a worker thread
  with a live loss; *Stop* ends it at the next step and keeps the model. Every round is a
  folder (its annotations and its run); its model joins Segment's model list, can be saved
  (checkpoint, ONNX, TorchScript or bioimage.io package) and is the start of the next
  round. Optionally a k-fold estimate over the annotated rectangles and an uncertainty
  layer (disagreement of the 8 views) that shows where to annotate next.
- Sample data (File > Open Sample > biounet): an ISBI 2012 EM slice, a DSB 2018 nuclei
  image.

:func:`segment_layers` is the work itself, without Qt: the layers for an image array.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

import napari  # this module is the plugin: only napari imports it (the [napari] extra)
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.qt.threading import thread_worker

from . import settings
from .annotate import Annotations, box_of, load_round, save_round, start_preset
from .config import TrainConfig
from .errors import InputError
from .io import write_text
from .presets import PRESETS

SHIPPED = {"nuclei (models/dsb2018-nuclei.pt)": "dsb2018-nuclei.pt",
           "EM membranes (models/isbi2012.pt)": "isbi2012.pt"}  # fmt: skip
FILE = "a model file..."
TRAINED: dict[str, Path] = {}  # the rounds trained or loaded since napari started: name -> file
_SEGMENT_WIDGETS: weakref.WeakSet = weakref.WeakSet()  # their model lists follow TRAINED


def _models_changed() -> None:
    """Refresh every Segment widget's model list (those closed are forgotten)."""
    for widget in list(_SEGMENT_WIDGETS):
        try:
            widget.model.reset_choices()
        except RuntimeError:  # its Qt widget was deleted with its dock
            _SEGMENT_WIDGETS.discard(widget)


def model_choices(_=None) -> list[str]:
    """Segment's model list: the shipped models, the rounds' models, a file."""
    return [*SHIPPED, *TRAINED, FILE]


def shipped_path(name: str) -> Path:
    """The model file of a SHIPPED (or TRAINED) choice."""
    from .checkpoint import shipped_model

    if name in TRAINED:
        return TRAINED[name]
    path = shipped_model(SHIPPED[name])
    if path is None:
        raise InputError(f"models/{SHIPPED[name]}: not found beside biounet or here")
    return path


@lru_cache(maxsize=4)
def _loaded(path: str):
    from .exported import load_model

    return load_model(path, "cpu")


def segment_layers(
    model: str | Path,
    image: np.ndarray,
    *,
    name: str = "image",
    tta: bool | None = None,
    instances: bool = True,
    diameter: float | str = 0.0,
    invert: str | None = None,
) -> list[tuple]:
    """napari layer data tuples for ``image`` segmented by ``model`` (a path; loaded once
    and kept): ``(P(foreground), {"name": ...}, "image")`` and, with ``instances``, the
    instance labels as ``"labels"``; a multi-class model gives its class map as labels
    and the class probabilities as a C-channel image. ``tta`` None: the model's setting."""
    from dataclasses import replace

    from .segment import segment

    net, preset = _loaded(str(model))
    config = preset.inference
    if tta is not None:
        config = replace(config, tta=tta)
    if diameter:
        config = replace(config, diameter=diameter)
    multiclass = net.config.out_channels > 2 and preset.train.target == "mask"
    outputs = ("probabilities", "classes") if multiclass else (
        ("probabilities", "instances") if instances else ("probabilities",))  # fmt: skip
    seg = segment((net, preset), np.asarray(image), config, outputs=outputs, invert=invert)
    layers = [(seg.probabilities, {"name": f"{name} probabilities", "colormap": "magma",
                                   "contrast_limits": (0.0, 1.0)}, "image")]  # fmt: skip
    if multiclass:
        layers.append((seg.classes, {"name": f"{name} classes"}, "labels"))
    elif instances:
        layers.append((seg.instances, {"name": f"{name} instances"}, "labels"))
    return layers


def sample_isbi() -> list[tuple]:
    """Slice 0 of the bundled ISBI 2012 EM stack."""
    from .io import find_data, read_images

    image = read_images(find_data("isbi2012") / "train-volume.tif").arrays[0]
    return [(image, {"name": "ISBI 2012 slice 0"}, "image")]


def sample_nuclei() -> list[tuple]:
    """A bundled DSB 2018 fluorescence image with touching nuclei."""
    from .io import find_data, read_images

    image = read_images(find_data("dsb2018-fluo") / "images" / "0ea221716cf13710.png")
    return [(image.arrays[0], {"name": "DSB 2018 nuclei"}, "image")]


class SegmentWidget(Container):
    """The *Segment* dock widget (napari passes its viewer as ``napari_viewer``)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = viewer = napari_viewer
        self.images = ComboBox(label="image", choices=lambda _: [
            layer.name for layer in viewer.layers if isinstance(layer, napari.layers.Image)])
        self.model = ComboBox(label="model", choices=model_choices)
        self.file = FileEdit(label="model file", filter="*.pt *.onnx *.ts", visible=False)
        self.tta = CheckBox(text="test-time averaging (8 views)", value=True)
        self.objects = CheckBox(text="instances", value=True)
        self.diameter = LineEdit(label="diameter (px, auto, 0)", value="0")
        self.invert = ComboBox(label="invert", choices=["model's", "auto", "yes", "no"])
        self.about = Label(value="")  # what the chosen model says of its training
        self.run = PushButton(text="Segment")
        super().__init__(widgets=[self.model, self.file, self.about, self.images, self.tta,
                                  self.objects, self.diameter, self.invert, self.run])  # fmt: skip
        self.status = ""  # "", "running", "done" or "error: ..."
        self.model.changed.connect(lambda v: setattr(self.file, "visible", v == FILE))
        self.model.changed.connect(self._show_about)
        self.file.changed.connect(self._show_about)
        self._show_about()
        viewer.layers.events.inserted.connect(lambda _: self.images.reset_choices())
        viewer.layers.events.removed.connect(lambda _: self.images.reset_choices())
        self.run.changed.connect(self.start)
        _SEGMENT_WIDGETS.add(self)

    def _show_about(self, *_) -> None:
        """The chosen model's record (trained on, command, hardware, scores), if it has one."""
        from .checkpoint import about_lines, model_record

        try:
            path = self.file.value if self.model.value == FILE else shipped_path(self.model.value)
            lines = (about_lines(model_record(path), ("trained_on", "scores"))
                     if Path(path).is_file() else [])  # fmt: skip
        except (InputError, OSError, KeyError, RuntimeError):
            lines = []
        self.about.value = "\n".join(lines)

    def _add(self, layers: list[tuple]) -> None:
        for data, kwargs, kind in layers:
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.status = "done"
        self.run.enabled = True

    def _failed(self, error) -> None:
        self.status = f"error: {error}"
        napari.utils.notifications.show_error(str(error))
        self.run.enabled = True

    def start(self, *_) -> None:
        """Segment the chosen layer in a worker thread; the layers follow when it ends."""
        if not self.images.value:
            self._failed("no image layer to segment")
            return
        try:
            path = self.file.value if self.model.value == FILE else shipped_path(self.model.value)
            d = self.diameter.value.strip() or "0"
            diameter = d if d == "auto" else float(d)
        except (ValueError, OSError) as e:
            self._failed(e)
            return
        layer = self.viewer.layers[self.images.value]
        worker = thread_worker(segment_layers, progress={"desc": "biounet: segmenting"})(
            path, layer.data, name=layer.name, tta=self.tta.value,
            instances=self.objects.value, diameter=diameter,
            invert=None if self.invert.value == "model's" else self.invert.value)  # fmt: skip
        worker.returned.connect(self._add)
        worker.errored.connect(self._failed)
        self.run.enabled = False
        self.status = "running"
        self.worker = worker
        worker.start()


SCRATCH = "scratch (the preset's network)"
OWN = "the model's own"
REGIONS_ALL = "whole image (complete labels)"


TRAIN_FORM = settings.form_options(TrainConfig, "train")  # the declarations the form shows


def _typed(name: str, spec: dict) -> bool:
    """Whether a setting is typed as text: numbers of any size (a spin box rounds 3e-5 to
    its decimals) and settings that may be None (not given)."""
    rule = settings.about(next(f for f in fields(TrainConfig) if f.name == name)).rule
    return spec["annotation"] is float or (rule is not None and rule.test(None))


def train_form() -> dict:
    """name -> magicgui widget for every training setting a napari form shows, built from
    their declarations (:func:`biounet.settings.form_options`): a check box, a choice, a
    whole-number box, or a text field for other numbers and for settings that may be
    empty (:func:`form_value` reads them)."""
    form = {}
    for name, spec in TRAIN_FORM.items():
        label = "time budget (min)" if name == "time_limit" else name.replace("_", " ")
        tip = spec["options"]["tooltip"]
        if _typed(name, spec):
            form[name] = LineEdit(value=_shown(spec["value"]), name=name, label=label,
                                  tooltip=tip)  # fmt: skip
            continue
        kind = spec.get("widget_type")
        kwargs = {"widget_type": kind} if kind else {}
        form[name] = create_widget(value=spec["value"], annotation=spec["annotation"],
                                   name=name, label=label, options=dict(spec["options"]),
                                   **kwargs)  # fmt: skip
    return form


def _shown(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def form_value(name: str, widget):
    """The setting's value in ``widget`` (text: "" is None). InputError naming the setting
    for text that is not a number."""
    spec = TRAIN_FORM[name]
    if not _typed(name, spec):
        return widget.value
    text = str(widget.value).strip()
    if not text:
        return None
    try:
        return spec["annotation"](float(text) if spec["annotation"] is int else text)
    except ValueError:
        raise InputError(f"{name.replace('_', ' ')}: {text!r} is not a number") from None


def set_form_value(name: str, widget, value) -> None:
    widget.value = _shown(value) if _typed(name, TRAIN_FORM[name]) else value


def _with_layers(viewer, kind) -> list[str]:
    return [layer.name for layer in viewer.layers if isinstance(layer, kind)]


class TrainWidget(Container):
    """The *Train* dock widget: rounds of training on the annotated layers."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, folder: str | Path | None = None):
        self.viewer = viewer = napari_viewer
        layers = napari.layers
        self.image = ComboBox(label="image", choices=lambda _: _with_layers(viewer, layers.Image))
        self.label_layer = ComboBox(label="labels", choices=lambda _: _with_layers(viewer,
                                                                               layers.Labels))
        self.regions = ComboBox(label="annotated regions", choices=lambda _: [
            REGIONS_ALL, *_with_layers(viewer, layers.Shapes)], tooltip=(
            "rectangles of a Shapes layer: inside, unpainted pixels are background; outside, "
            "pixels are not annotated (only painted objects count)"))  # fmt: skip
        self.start_from = ComboBox(label="start from", choices=lambda _: [
            *reversed(TRAINED), *SHIPPED, FILE, SCRATCH])  # fmt: skip
        self.file = FileEdit(label="model file", filter="*.pt", visible=False)
        self.preset = ComboBox(label="preset", choices=[OWN, *PRESETS], tooltip=(
            "the training settings: the start model's own, or a preset's around its network"))
        self.form = train_form()
        self.minutes = self.form.pop("time_limit")
        self.minutes.value = "2"  # 5 or 10 scored no better (docs/results-annotator.md)
        self.more = CheckBox(text="all training settings", value=False)
        self.advanced = Container(widgets=list(self.form.values()), visible=False)
        self.estimate = CheckBox(text="estimate: up to 3 folds over the annotated images, or "
                                 "over the rectangles of one (k x the time)")  # fmt: skip
        self.uncertainty = CheckBox(text="uncertainty layer (where to annotate next)",
                                    value=True)  # fmt: skip
        self.run = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.report = Label(value="")
        self.save_to = FileEdit(label="save model as", mode="w",
                                filter="*.pt *.onnx *.ts *.zip")  # fmt: skip
        self.save = PushButton(text="Save model")
        self.round_folder = FileEdit(label="a round's folder", mode="d")
        self.reload = PushButton(text="Load round")
        super().__init__(widgets=[
            self.image, self.label_layer, self.regions, self.start_from, self.file, self.preset,
            self.minutes, self.more, self.advanced, self.estimate, self.uncertainty, self.run,
            self.stop_button, self.progress, self.report, self.save_to, self.save,
            self.round_folder, self.reload])  # fmt: skip
        self.folder = Path(folder) if folder else Path.home() / "biounet-rounds" / time.strftime(
            "%Y%m%d-%H%M%S")
        self.notes: dict[str, tuple] = {}  # image layer name -> (image, labels, boxes)
        self.rounds: list[dict] = []  # per round: folder, model, objects, estimate
        self.status = ""  # "", "running", "done", "stopped" or "error: ..."
        self.job = None  # the running round's process
        self.losses: list[float] = []
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(lambda _: self.reset_choices())
        self.start_from.changed.connect(self._start_changed)
        self.preset.changed.connect(self._start_changed)
        self.file.changed.connect(self._start_changed)
        self.more.changed.connect(lambda v: setattr(self.advanced, "visible", v))
        self.run.changed.connect(self.start)
        self.stop_button.changed.connect(self.request_stop)
        self.save.changed.connect(self.save_model)
        self.reload.changed.connect(lambda _: self._reload())
        self._start_changed()

    # -- the form ------------------------------------------------------------------------

    def start_model(self) -> Path | None:
        """The model file the round starts from (None: scratch)."""
        choice = self.start_from.value
        if choice == SCRATCH:
            return None
        if choice == FILE:
            return Path(self.file.value)
        return shipped_path(choice)

    def _base(self):
        return start_preset(self.start_model(),
                            None if self.preset.value == OWN else self.preset.value)

    def _start_changed(self, *_) -> None:
        """Show the chosen start's (or preset's) training settings in the form."""
        self.file.visible = self.start_from.value == FILE
        try:
            cfg = self._base().train
        except Exception:  # a model file not chosen yet: the form keeps its values
            return
        for name, widget in self.form.items():
            set_form_value(name, widget, getattr(cfg, name))

    def changes(self) -> dict:
        """The settings the form changes from the start's (or preset's)."""
        cfg = self._base().train
        values = {name: form_value(name, w) for name, w in self.form.items()}
        return {name: v for name, v in values.items() if v != getattr(cfg, name)}

    def annotations(self) -> Annotations:
        """The current image's annotation (recorded) with those of earlier rounds."""
        image = self.viewer.layers[self.image.value]
        labels = self.viewer.layers[self.label_layer.value]
        boxes = None
        if self.regions.value != REGIONS_ALL:
            shapes = self.viewer.layers[self.regions.value]
            boxes = [box_of(corners, labels.data.shape) for corners in shapes.data]
        self.notes[image.name] = (np.asarray(image.data), np.asarray(labels.data).copy(), boxes)
        names = list(self.notes)
        return Annotations([_stem(n) for n in names], [self.notes[n][0] for n in names],
                           [self.notes[n][1] for n in names],
                           [self.notes[n][2] for n in names])  # fmt: skip

    # -- a round -------------------------------------------------------------------------

    def start(self, *_) -> None:
        """Train a round in a worker thread; its model, estimate and layers follow."""
        if not (self.image.value and self.label_layer.value):
            self._failed("choose an image layer and a labels layer")
            return
        try:
            notes = self.annotations()
            start, changes = self.start_model(), self.changes()
            minutes = form_value("time_limit", self.minutes)
            if notes.objects() == 0:
                raise ValueError("the labels hold no painted object to learn from")
        except Exception as e:
            self._failed(e)
            return
        preset = None if self.preset.value == OWN else self.preset.value
        n = len(self.rounds) + 1
        while (self.folder / f"round-{n}").exists():  # a failed round keeps its folder
            n += 1
        out = self.folder / f"round-{n}"
        job = dict(notes=notes, out=out, start=start, preset=preset,
                   minutes=float(minutes or 0.0), changes=changes,
                   estimate=self.estimate.value,
                   uncertainty=_stem(self.image.value) if self.uncertainty.value else None)
        self.losses = []
        worker = thread_worker(self._work, progress=False)(**job)
        worker.yielded.connect(self._step)
        worker.returned.connect(self._done)
        worker.errored.connect(self._failed)
        self.run.enabled, self.stop_button.enabled = False, True
        self.status = "running"
        self.report.value = f"round {len(self.rounds) + 1}: {notes.objects()} objects in " \
                            f"{len(notes.names)} image(s), training..."
        self.worker = worker
        worker.start()

    def _work(self, notes, out, start, preset, minutes, changes, estimate, uncertainty):
        """A generator (napari's worker thread): saves the round's annotations, runs the
        round in a process of its own (``python -m biounet.annotate``: a training thread in
        this process would hold the interpreter lock for long stretches and stall the
        viewer), yields each step's progress and returns the round's record."""
        import json
        import subprocess
        import sys

        save_round(out / "data", notes)
        spec = dict(out=str(out), start=None if start is None else str(start), preset=preset,
                    minutes=minutes, changes=changes, estimate=estimate,
                    uncertainty=uncertainty)  # fmt: skip
        write_text(out / "round.json", json.dumps(spec, indent=1) + "\n")
        command = [sys.executable, "-m", "biounet.annotate", str(out / "round.json")]
        job = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.job = job
        result = None
        try:
            for line in job.stdout:
                message = json.loads(line) if line.startswith("{") else {}
                if "step" in message:
                    yield message["step"]
                elif "error" in message:
                    kind = InputError if message["error"] == "InputError" else RuntimeError
                    raise kind(message["message"])
                elif "done" in message:
                    result = message["done"]
        finally:
            if job.poll() is None:
                job.stdin.close()  # the round stops at its next step
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
        if result is None:
            raise RuntimeError(f"the training process ended (exit code {job.returncode}) "
                               "before its round")  # fmt: skip
        result["model"] = Path(result["model"])
        if "uncertainty" in result:
            result["uncertainty"] = np.load(result["uncertainty"])
        result.update(folder=out, objects=notes.objects())
        return result

    def request_stop(self, *_) -> None:
        """Stop the running round at its next step (it keeps the model of that step)."""
        if self.job is not None and self.job.poll() is None:
            try:
                self.job.stdin.write("stop\n")
                self.job.stdin.flush()
            except OSError:  # it has just ended
                pass

    def _step(self, p: dict) -> None:
        self.losses.append(p["loss"])
        self.progress.max = p["epochs"] * p["steps"]
        self.progress.value = (p["epoch"] - 1) * p["steps"] + p["step"]
        self.progress.label = f"epoch {p['epoch']}/{p['epochs']}, loss {p['loss']:.4f}"

    def _done(self, result: dict) -> None:
        n = len(self.rounds) + 1
        name = f"round {n} ({Path(result['folder']).parent.name})"  # the folder's own number
        # may be higher, after a failed round
        TRAINED[name] = result["model"]
        self.rounds.append(result)
        _models_changed()
        self.start_from.reset_choices()
        self.start_from.value = name
        text = f"round {n}: {result['objects']} objects; model {result['model']}"
        if result["stopped"]:
            text += " (stopped: the weights of the last step)"
        if "estimate" in result:
            e = result["estimate"]
            text += (f"; held-out AP@0.5 {e['mean']:.2f} +- {e['sd']:.2f} over {len(e['ap50'])} "
                     f"folds by {e['by']}")  # fmt: skip
        self.report.value = text
        if "uncertainty" in result:
            self.viewer.add_image(result["uncertainty"], name=f"round {n} uncertainty",
                                  colormap="inferno", blending="additive")  # fmt: skip
        if not result["stopped"]:
            self.progress.value = self.progress.max
        self.status = "stopped" if result["stopped"] else "done"
        self.run.enabled, self.stop_button.enabled = True, False

    def _failed(self, error) -> None:
        self.status = f"error: {error}"
        napari.utils.notifications.show_error(str(error))
        self.run.enabled, self.stop_button.enabled = True, False

    # -- saving and reloading ------------------------------------------------------------

    def save_model(self, *_) -> Path | None:
        """Write the latest round's model to the chosen file: .pt (a biounet checkpoint),
        .onnx, .ts (TorchScript) or .zip (a bioimage.io package)."""
        if not self.rounds:
            self._failed("no round trained yet")
            return None
        source, dest = self.rounds[-1]["model"], Path(self.save_to.value)
        try:
            if dest.suffix == ".zip":
                from .bioimageio import export_bioimageio

                return export_bioimageio(source, dest)
            from .exported import export

            fmt = {".onnx": "onnx", ".ts": "torchscript"}.get(dest.suffix, "biounet")
            return export(source, dest, fmt)
        except Exception as e:
            self._failed(e)
            return None

    def _reload(self) -> None:
        try:
            self.load(self.round_folder.value)
        except Exception as e:
            self._failed(e)

    def load(self, folder: str | Path) -> None:
        """Reload a round's folder: its images, labels and rectangles as layers, its model
        into the model lists."""
        folder = Path(folder)
        notes = load_round(folder / "data")
        for name, image, lab, boxes in zip(notes.names, notes.images, notes.labels,
                                           notes.boxes, strict=True):  # fmt: skip
            self.viewer.add_image(image, name=name)
            self.viewer.add_labels(lab, name=f"{name} labels")
            if boxes is not None:
                rects = [np.array([[t, c], [b, r]], dtype=float) for t, c, b, r in boxes]
                self.viewer.add_shapes(rects, shape_type="rectangle", name=f"{name} regions",
                                       face_color="transparent", edge_color="yellow")  # fmt: skip
        for model in ("best.pt", "last.pt"):
            if (folder / "run" / model).exists():
                TRAINED[f"{folder.name} ({folder.parent.name})"] = folder / "run" / model
                break
        _models_changed()
        self.start_from.reset_choices()


def _stem(name: str) -> str:
    """A layer name as a file stem."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"
