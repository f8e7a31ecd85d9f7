"""The napari plugin (manifest: ``biounet/napari.yaml``; install ``biounet[napari]``).

- Widget *Segment* (Plugins > biounet): choose a model (a shipped one or a file: a
  checkpoint, ONNX or TorchScript), an image layer and the inference options; *Segment*
  runs :func:`biounet.segment` in a worker thread (the viewer stays responsive, a progress
  bar runs) and adds the probability as an Image layer and the instances (or a
  multi-class model's class map) as a Labels layer.
- Sample data (File > Open Sample > biounet): an ISBI 2012 EM slice, a DSB 2018 nuclei
  image.

:func:`segment_layers` is the work itself, without Qt: the layers for an image array.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import napari  # this module is the plugin: only napari imports it (the [napari] extra)
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, PushButton
from napari.qt.threading import thread_worker

SHIPPED = {"nuclei (models/dsb2018-nuclei.pt)": "dsb2018-nuclei.pt",
           "EM membranes (models/isbi2012.pt)": "isbi2012.pt"}  # fmt: skip
FILE = "a model file..."


def shipped_path(name: str) -> Path:
    """The shipped model file of a SHIPPED choice."""
    from .checkpoint import shipped_model
    from .errors import InputError

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
        self.model = ComboBox(label="model", choices=[*SHIPPED, FILE])
        self.file = FileEdit(label="model file", filter="*.pt *.onnx *.ts", visible=False)
        self.tta = CheckBox(text="test-time averaging (8 views)", value=True)
        self.objects = CheckBox(text="instances", value=True)
        self.diameter = LineEdit(label="diameter (px, auto, 0)", value="0")
        self.invert = ComboBox(label="invert", choices=["model's", "auto", "yes", "no"])
        self.run = PushButton(text="Segment")
        super().__init__(widgets=[self.model, self.file, self.images, self.tta, self.objects,
                                  self.diameter, self.invert, self.run])  # fmt: skip
        self.status = ""  # "", "running", "done" or "error: ..."
        self.model.changed.connect(lambda v: setattr(self.file, "visible", v == FILE))
        viewer.layers.events.inserted.connect(lambda _: self.images.reset_choices())
        viewer.layers.events.removed.connect(lambda _: self.images.reset_choices())
        self.run.changed.connect(self.start)

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
