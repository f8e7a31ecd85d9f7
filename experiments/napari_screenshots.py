"""The screenshots of the README's napari section, taken from the real viewer: a dark-on-
bright nuclei image of data/dsb2018-fluo-more that the shipped model handles badly, 25
nuclei painted in 2 boxes, a round of fine-tuning in the Train widget, and Segment with
the round's model.

    xvfb-run -a env QT_QPA_PLATFORM=xcb QT_API=pyqt6 .venv/bin/python \\
        experiments/napari_screenshots.py [--minutes 2] [--out docs/images]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotator import place_boxes, the_group  # noqa: E402

from biounet.io import find_data  # noqa: E402


def wait(app, widget, timeout: float = 1800) -> None:
    t0 = time.time()
    while widget.status == "running" and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.02)
    if widget.status not in ("done", "stopped"):
        raise SystemExit(f"the widget ended with {widget.status!r}")


def shot(viewer, app, path: Path) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--out", default="docs/images")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    names, images, labels = the_group(find_data("dsb2018-fluo-more"))
    name = names[0]
    notes = place_boxes(25, [name], images, labels, 128, "random", None)
    viewer = napari.Viewer(title="biounet")
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    viewer.add_image(images[name], name="nuclei")
    viewer.add_labels(notes.labels[0], name="painted")
    rects = [np.array([[t, c], [b, r]], dtype=float) for t, c, b, r in notes.boxes[0]]
    viewer.add_shapes(rects, shape_type="rectangle", name="boxes", face_color="transparent",
                      edge_color="yellow", edge_width=4)  # fmt: skip
    _, segmenter = viewer.window.add_plugin_dock_widget("biounet", "Segment")
    _, trainer = viewer.window.add_plugin_dock_widget("biounet", "Train")
    trainer.folder = Path(tempfile.mkdtemp()) / "rounds"
    trainer.image.value, trainer.regions.value = "nuclei", "boxes"
    trainer.label_layer.value = "painted"
    trainer.minutes.value = args.minutes
    viewer.camera.center = (0, 680, 540)  # the lower half, where the boxes are dense
    viewer.camera.zoom = 1.6 * viewer.camera.zoom
    shot(viewer, app, out / "napari-annotate.png")

    trainer.run.changed.emit(True)
    while len(trainer.losses) < 40 and trainer.status == "running":
        app.processEvents()
        time.sleep(0.02)
    shot(viewer, app, out / "napari-training.png")
    wait(app, trainer)

    segmenter.model.value = next(c for c in segmenter.model.choices if c.startswith("round 1"))
    segmenter.images.value = "nuclei"
    segmenter.run.changed.emit(True)
    wait(app, segmenter)
    viewer.layers["painted"].visible = False
    viewer.layers["nuclei probabilities"].visible = False
    shot(viewer, app, out / "napari-segmented.png")
    viewer.close()


if __name__ == "__main__":
    main()
