"""The ``biounet`` command: thin wrappers over the Python API.

Bad input ends with one line, ``biounet: error: <file>: <problem>``, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .config import (
    CLASS_BALANCES,
    CONTOUR_OPTIONS,
    HIGHER_IS_BETTER,
    SAMPLE_BY,
    SELECT_BY,
    TARGETS,
    InferenceConfig,
    Preset,
)
from .errors import InputError, RankLost
from .exported import ENGINES, FORMATS, ONNX_OPSET
from .metrics import METRICS as ALL_METRICS
from .model import INVERT

log = logging.getLogger("biounet")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # under torchrun the ranks but 0 log warnings only (rank 0 speaks for the run)
    quiet = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args) or 0
    except (InputError, ValueError) as e:
        print(f"biounet: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # missing, unreadable or unwritable files, full disks
        where = f"{e.filename}: " if e.filename else ""
        print(f"biounet: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except RankLost as e:  # under torchrun: another rank failed or stopped answering
        print(f"biounet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("biounet: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    from .presets import DEFAULT, PRESETS

    p = argparse.ArgumentParser(prog="biounet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="show a preset or a model: parameters, tile sizes, "
                       "input channels, training settings")  # fmt: skip
    s.add_argument("model", nargs="?", help="a checkpoint (.pt): show its configuration "
                   "instead of a preset's")  # fmt: skip
    s.add_argument("--preset", default=DEFAULT, choices=list(PRESETS))
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("train", help="train a U-Net (default: fast preset on bundled ISBI 2012)")
    s.add_argument("--preset", choices=list(PRESETS), help=f"default: {DEFAULT}")
    s.add_argument("--images", help="image stack (TIFF) or folder of PNG/TIFF images")
    s.add_argument("--labels", help="mask stack or folder of masks paired by file name")
    s.add_argument(
        "--target",
        choices=TARGETS,
        help="mask: labels are class masks (ISBI 0/255); binary / contour: labels are instance "
        "images, learned as foreground with carved borders / background-interior-boundary",
    )
    s.add_argument(
        "--val-slices",
        help="held-out images: auto (a seeded 15%% of them, at least one; the preset's own "
        "list for its bundled data), indices such as 25-29 or 28,29, none, or @FILE naming "
        "them; a run stores the chosen ones in config.json",
    )
    s.add_argument("--train-slices", help="training slice indices (default: all others)")
    s.add_argument("--channels", metavar="SPEC", help=CHANNELS_HELP + "; the network takes "
                   "the channels read, and the model stores them")  # fmt: skip
    s.add_argument("--out", help="run directory (default: runs/latest)")
    s.add_argument("--epochs", type=int, help="at most this many epochs")
    s.add_argument(
        "--time-limit",
        type=float,
        metavar="MIN",
        help="minutes of training: plan as many epochs as fit (at most --epochs) and end the "
        "learning-rate schedule with them (0: no limit)",
    )
    s.add_argument("--steps-per-epoch", type=int)
    s.add_argument("--batch-size", type=int, help="tiles per step (per process under "
                   "torchrun: the global batch is this times the processes)")  # fmt: skip
    s.add_argument("--tile", type=int, help="input tile edge in pixels")
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    s.add_argument("--precision", choices=("auto", "bf16", "fp32"))
    s.add_argument(
        "--select-by",
        choices=SELECT_BY,
        help="what best.pt minimises/maximises (train_loss keeps validation slices out of "
        "model selection; last: the last epoch)",
    )
    s.add_argument("--isbi-every", type=int, help="validation V_rand / V_info every N epochs")
    s.add_argument("--tensorboard", action="store_const", const=True, help="also write the "
                   "epoch scalars and validation panels to RUN/tensorboard/ (pip install "
                   "biounet[tensorboard])")  # fmt: skip
    s.add_argument("--val-every", type=int, help="validate every N epochs (0: never)")
    s.add_argument(
        "--ema",
        type=float,
        help="keep an exponential moving average of the weights with this decay (e.g. 0.999); "
        "validation, best.pt and predict use it (0: off)",
    )
    s.add_argument(
        "--weight-map",
        action=argparse.BooleanOptionalAction,
        help="weight the loss by the paper's border weight map w(x)",
    )
    s.add_argument(
        "--dice",
        type=float,
        metavar="W",
        help="add W x a soft Dice loss of the foreground (per tile) to the cross entropy",
    )
    s.add_argument("--w0", type=float, help="the weight map's border term w0 (paper: 10)")
    s.add_argument(
        "--class-balance",
        choices=CLASS_BALANCES,
        help="the weight map's w_c: each image's own class frequencies (the paper), the "
        "training set's, or none",
    )
    s.add_argument(
        "--sample-by",
        choices=SAMPLE_BY,
        help="draw training tiles from every image equally often, or in proportion to its "
        "pixels (for sets of very different image sizes)",
    )
    s.add_argument(
        "--touch-width",
        type=int,
        metavar="PX",
        help="contour target: boundary class this many pixels deep where objects touch or "
        "come within PX pixels (0: off)",
    )
    s.add_argument(
        "--zoom",
        type=float,
        metavar="R",
        help="random zoom by a factor log-uniform in [1/(1+R), 1+R] (0: off)",
    )
    s.add_argument(
        "--invert-tiles",
        type=float,
        metavar="P",
        help="augmentation: negate a training tile's gray values with probability P "
        "(contrast inversion; 0: off)",
    )
    s.add_argument("--invert", choices=tuple(INVERT), help=INVERT_HELP + "; the model stores "
                   "it (default: the preset's; nuclei: auto, the others: no)")  # fmt: skip
    s.add_argument(
        "--label-threshold",
        type=float,
        metavar="T",
        help="binarise soft or anti-aliased masks: value > T is foreground (instance targets: "
        "the components of that mask)",
    )
    s.add_argument(
        "--ignore-label",
        type=int,
        metavar="V",
        help="pixels of mask value V are not labelled: no loss, left out of the weight map "
        "and of validation scores (V must not be a class)",
    )
    s.add_argument(
        "--classes",
        type=int,
        metavar="C",
        help="mask target: the masks hold classes 0..C-1, learned with a C-way softmax "
        "(default: found from the masks, largest class + 1, at least 2)",
    )
    s.add_argument(
        "--init",
        metavar="MODEL",
        help="start from the weights of MODEL (a shipped model or any checkpoint) with a fresh "
        "optimiser and schedule; its preset unless --preset is given (then that preset's "
        "training settings around the model's network)",
    )
    s.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last.pt with its own settings "
        "(only --epochs, --time-limit and --device may change them)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "predict",
        help="overlap-tile prediction: probability TIFFs (1 = cell); class maps for "
        "multi-class models",
        description="Predict every image: NAME.tif is float32 P(foreground) for binary and "
        "contour models; for a multi-class model (a mask model of C > 2 classes) it is the "
        "uint8 class map 0..C-1 (the most probable class), and --probabilities adds the C "
        "class probabilities.",
    )
    s.add_argument("checkpoint", help="a biounet checkpoint (.pt)")
    s.add_argument("input", help="image, TIFF stack, or folder of images; or one image larger "
                   "than memory: a Zarr / OME-Zarr (.zarr), or a TIFF with --out NAME.zarr")
    s.add_argument(
        "--out",
        help="output TIFF (file input) or folder (folder input); "
        "default: <input name>-prob.tif / <input>-prob/ in the current folder "
        "(multi-class models: -classes)",
    )
    s.add_argument("--slices", help="only these slices of a stack, e.g. 25-29")
    s.add_argument("--channels", metavar="SPEC", help=CHANNELS_HELP + "; they must be as "
                   "many as the model's input channels (biounet info MODEL)")  # fmt: skip
    s.add_argument(
        "--tile",
        type=int,
        help="input tile edge in pixels (rounded to a valid "
        "size); default: the largest that fits --memory-mb",
    )
    s.add_argument(
        "--memory-mb",
        type=int,
        default=1024,
        help="activation memory budget per forward pass (default 1024)",
    )
    s.add_argument(
        "--overlap",
        type=float,
        default=0.25,
        help="tile overlap for same-padding networks (default 0.25)",
    )
    s.add_argument(
        "--instances",
        action="store_true",
        help="also write instance labels (uint16; uint32 past 65535) as *-instances.tif (mask "
        "models: connected "
        "components; binary: components grown over the carved borders; contour: seeded "
        "watershed)",
    )
    s.add_argument(
        "--roi-zip",
        action="store_true",
        help="with --instances, also write the objects' outlines as an ImageJ ROI set, "
        "*-rois.zip (one polygon per object, named by label; Fiji's ROI Manager opens it)",
    )
    s.add_argument(
        "--probabilities",
        action="store_true",
        help="multi-class models: also write the class probabilities as *-probabilities.tif, "
        "float32, C pages per image (P(class 0) .. P(class C-1)); for a stack input, image "
        "i's class c is page i*C+c (an ImageJ hyperstack: Fiji shows slices and channels)",
    )
    s.add_argument("--invert", choices=tuple(INVERT), help=INVERT_HELP + "; default: as "
                   "the model was trained (biounet info MODEL)")  # fmt: skip
    add_inference_flags(s, stored=False)
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    s.add_argument("--engine", default="auto", choices=ENGINES,
                   help="how a checkpoint runs: torch, onnxruntime (its ONNX export, made "
                   "once and cached; needs biounet[onnx]) or auto (default: onnxruntime on "
                   "a CPU without native bf16 where it is installed, else torch)")  # fmt: skip
    s.add_argument("--shard", metavar="K/N", help="predict every N-th image from the K-th "
                   "(0-based) of the sorted inputs, e.g. $SLURM_ARRAY_TASK_ID/8; under torchrun "
                   "RANK/WORLD_SIZE unless given")  # fmt: skip
    s.add_argument("--skip-existing", action="store_true", help="skip the images whose outputs "
                   "all exist (to resume an interrupted run)")  # fmt: skip
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="a checkpoint for sharing: configuration + weights, or "
                       "ONNX / TorchScript for other tools")  # fmt: skip
    s.add_argument("checkpoint", help="a checkpoint (e.g. runs/NAME/best.pt)")
    s.add_argument("out", help="the file to write (e.g. models/NAME.pt, NAME.onnx)")
    s.add_argument("--format", default="biounet", metavar="{" + ",".join(FORMATS) + "}",
                   help="biounet (default): a stripped checkpoint; onnx (opset "
                   f"{ONNX_OPSET}, dynamic batch, height and width; needs biounet[onnx]) or "
                   "torchscript (traced): the network with its configuration as metadata, "
                   "which biounet predict runs like a checkpoint; bioimageio: a model zoo "
                   "package (.zip; needs biounet[bioimageio])")  # fmt: skip
    s.add_argument("--author", action="append", metavar="NAME",
                   help="bioimageio: an author of the model (repeat for more; default biounet)")
    s.add_argument("--license", default="MIT", help="bioimageio: SPDX license id (default MIT)")
    s.add_argument("--cite", action="append", metavar="'TEXT|DOI'",
                   help="bioimageio: a further citation, 'TEXT|DOI' or 'TEXT|URL' (the U-Net "
                   "paper and the bundled training data are cited already)")  # fmt: skip
    s.add_argument("--sample", metavar="IMAGE", help="bioimageio: the image whose crop makes "
                   "the package's test tensors (default: the model's training data)")
    add_inference_flags(s, stored=True)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="training and inference speed against same-run baselines")
    s.add_argument("--preset", default=DEFAULT, choices=list(PRESETS))
    s.add_argument(
        "--checkpoint",
        help="measure this model instead of the preset's (predict "
        "speed: default the shipped models/isbi2012.pt where present)",
    )
    s.add_argument(
        "--image-size",
        type=int,
        default=2048,
        help="edge of the image for predict speed (0: skip; default 2048)",
    )
    s.add_argument("--no-tta", action="store_true", help="skip the --tta inference timing")
    s.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="interleaved rounds of the training step, baseline and conv peaks "
        "(medians; default 5)",
    )
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("evaluate", help="ISBI 2012 metrics, the paper's errors, IoU, Dice, SEG")
    s.add_argument("pred", help="probability TIFF / stack / folder (1 = cell); with --classes "
                   "a class map")  # fmt: skip
    s.add_argument("gt", help="label TIFF / stack / folder (255 or 1 = cell, 0 = membrane)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument(
        "--instances",
        action="store_true",
        help="PRED and GT are instance labels (0 = background): DSB 2018 score, AP@0.5, F1, "
        "SEG, merges, splits, TP / FP / FN per IoU threshold (automatic for a folder "
        "of predict --instances output, whose NAME-instances.tif files it scores)",
    )
    s.add_argument(
        "--classes",
        type=int,
        metavar="C",
        help="PRED is a class map 0..C-1 (predict's output of a C-class model) and GT a "
        "class mask: IoU and Dice of each class 1..C-1 and their means, over all pixels "
        "together; GT pixels of the ignore value 255 are left out; a class in neither map "
        "has no score (null in --json) and is left out of the means",
    )
    s.add_argument(
        "--metrics",
        default=",".join(ALL_METRICS),
        help=f"comma-separated subset of {','.join(ALL_METRICS)}",
    )
    s.add_argument("--thresholds", help="comma-separated thresholds (default 0, 0.1, ..., 1)")
    s.add_argument("--label-threshold", type=float, metavar="T", help="GT masks are soft or "
                   "anti-aliased: value > T is cell (as train --label-threshold)")  # fmt: skip
    s.add_argument(
        "--slices",
        help="only these slices, e.g. 25-29: of both stacks, or of GT "
        "alone when PRED holds just those slices",
    )
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("weight-map", help="write the paper's border weight maps w(x)")
    s.add_argument("labels", help="label TIFF / stack / folder: binary masks or instance labels")
    s.add_argument("--out", required=True, help="output TIFF (file input) or folder")
    s.add_argument("--w0", type=float, default=10.0, help="border weight (default 10)")
    s.add_argument("--sigma", type=float, default=5.0, help="border width in px (default 5)")
    s.add_argument(
        "--png",
        action="store_true",
        help="also write a figure like the paper's Fig. 3 (first image) as .png",
    )
    s.add_argument("--images", help="the matching images, shown in the figure")
    s.set_defaults(func=cmd_weight_map)

    s = sub.add_parser("augment-preview", help="a grid of augmented training tiles")
    s.add_argument("--preset", default=DEFAULT, choices=list(PRESETS))
    s.add_argument("--images", help="image stack or folder (default: bundled ISBI 2012)")
    s.add_argument("--labels", help="mask stack or folder")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--channels", metavar="SPEC", help=CHANNELS_HELP)
    s.add_argument("-n", type=int, default=12, help="number of tiles (default 12)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_augment_preview)
    return p


# InferenceConfig fields with a flag of the same name: (type, metavar, what it does); the
# instance options apply with --instances
INFERENCE_FLAGS = {
    "min_size": (int, "PX", "drop objects under PX pixels"),
    "min_peak": (float, "P", "drop objects whose highest interior / foreground probability "
                 "stays under P"),
    "min_fraction": (float, "F", "in each image, drop objects under F x the median size of "
                     "its objects of at least --min-size pixels where that is less than "
                     "--min-size (an image of small nuclei keeps them); 0: --min-size alone"),
    "seed_threshold": (float, "P", "P(interior) above which a pixel seeds an object"),
    "seed_dynamics": (float, "H", "one seed per peak of P(interior) (smoothed 1 px) standing "
                      "H above the saddle to a higher one, where it exceeds --seed-threshold: "
                      "nuclei whose interiors meet at a ridge get a seed each; 0: the "
                      "thresholded region's components"),
    "split_solidity": (float, "S", "split a seed whose solidity (area / convex hull area) is "
                       "under S at its distance-transform peaks; 0: never"),
    "split_depth": (float, "PX", "where seeds are split (--split-solidity or the model's "
                    "setting above 0), the peaks that split a seed stand at least PX pixels "
                    "above the saddle between them"),
}  # fmt: skip


def flag(field: str) -> str:
    """The command-line flag of an InferenceConfig field: min_size -> --min-size."""
    return "--" + field.replace("_", "-")


def add_inference_flags(parser: argparse.ArgumentParser, stored: bool) -> None:
    """--tta / --no-tta, --threshold and the instance options: settings for one call
    (predict), or ``stored`` in the model as its defaults (export). None: not given."""
    if stored:
        tta = ("store whether predict averages the 8 flips / quarter turns by default (for "
               "post-processing tuned on averaged probabilities)")  # fmt: skip
        threshold = "store this foreground threshold in the model (predict --instances)"
    else:
        tta = ("average the 8 flips / quarter turns (test-time augmentation); default: the "
               "model's setting (off unless exported with --tta)")  # fmt: skip
        threshold = ("also write a binary mask (0/255) of probability > T as *-mask.tif; with "
                     "--instances, also their foreground threshold (default there: the "
                     "model's setting, 0.5 unless stored)")  # fmt: skip
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help=tta)
    parser.add_argument("--threshold", type=float, metavar="T", help=threshold)
    diameter = ("the objects' diameter in the images, in pixels: each image is rescaled so "
                "they have the size the model was trained on (biounet info MODEL), and every "
                "output back to its size; auto: measured in each image by a first pass; 0: "
                "images as they are")  # fmt: skip
    diameter += " (stored in the model as predict's default)" if stored else (
        " (default: the model's setting, 0 unless stored)")  # fmt: skip
    parser.add_argument("--diameter", type=diameter_value, metavar="D|auto", help=diameter)
    for field, (kind, metavar, what) in INFERENCE_FLAGS.items():
        scope = "--instances, contour models" if field in CONTOUR_OPTIONS else "--instances"
        what = (f"store in the model (predict {scope}): {what}" if stored
                else f"{scope}: {what} (default: the model's setting)")  # fmt: skip
        parser.add_argument(flag(field), type=kind, metavar=metavar, help=what)


def diameter_value(text: str) -> float | str:
    """--diameter: "auto" or a number of pixels (checked by InferenceConfig)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or pixels, got {text!r}") from None


def inference_overrides(args) -> dict:
    """The inference flags given, as InferenceConfig fields (absent: keep the model's
    setting), each checked as InferenceConfig checks it; errors name the flag."""
    given = {field: getattr(args, field)
             for field in ("tta", "threshold", "diameter", *INFERENCE_FLAGS)
             if getattr(args, field) is not None}  # fmt: skip
    for field, value in given.items():
        InferenceConfig.check(field, value, label=flag(field))
    return given


def cmd_info(args) -> int:
    from .checkpoint import load_checkpoint
    from .model import UNet, count_parameters, output_size
    from .presets import get_preset

    if args.model:  # a checkpoint, ONNX or TorchScript file
        from .exported import file_format, load_model

        if file_format(args.model) == "biounet":
            preset = Preset.from_dict(load_checkpoint(args.model)["preset"])
        else:
            preset = load_model(args.model)[1]
    else:
        preset = get_preset(args.preset)
    m, t, i = preset.model, preset.train, preset.inference
    info = {
        "preset": preset.name,
        "description": preset.description,
        "parameters": count_parameters(UNet(m)),
        "input_size": t.tile,
        "output_size": output_size(t.tile, m.depth, m.padding),
        "padding": m.padding,
        "model": asdict(m),
        "train": asdict(t),
        "inference": asdict(i),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{preset.name}: {preset.description}")
    print(f"  parameters   {info['parameters']:,}")
    chosen = f" (--channels {t.channels})" if t.channels else ""
    invert = next(k for k, v in INVERT.items() if v == m.normalization)
    print(f"  input        {m.in_channels} channel{'s' * (m.in_channels != 1)}{chosen}"
          + (f", --invert {invert}" if invert != "no" else "")
          + (f", objects of {m.diameter:.3g} px (median diameter)" if m.diameter else ""))
    print(
        f"  tile         {t.tile} -> {info['output_size']} ({m.padding} padding, depth {m.depth})"
    )
    print(
        f"  network      {'/'.join(map(str, m.widths))} channels, batch norm {m.batch_norm}, "
        f"dropout {m.dropout}, {m.upsample} up-sampling, {m.out_channels} outputs"
    )
    print(
        f"  optimiser    {t.optimizer} lr {t.lr:g} momentum {t.momentum:g} "
        f"weight decay {t.weight_decay:g}, {t.schedule} schedule"
    )
    print(
        f"  training     {t.epochs} epochs x {t.steps_per_epoch or 'one pass'} steps, "
        f"batch {t.batch_size}, validate on slices {t.val_slices or 'none'}"
        + (", tiles by image area" if t.sample_by == "area" else "")
    )
    if t.world_size > 1:
        print(f"  ranks        {t.world_size} (torchrun), global batch "
              f"{t.batch_size * t.world_size}")  # fmt: skip
    if t.time_limit:
        print(f"  time limit   {t.time_limit:g} min: fewer epochs where they do not fit")
    if t.select_by == "last":
        print("  best.pt      the last epoch (the end of the learning-rate schedule)")
    else:
        best = "highest" if t.select_by in HIGHER_IS_BETTER else "lowest"
        print(f"  best.pt      {best} {t.select_by.replace('_', ' ')}")
    a = t.augment
    on = [name for name, flag in (("flips", a.flip), ("quarter turns", a.rot90)) if flag]
    if a.rotate:
        on.append(f"rotation +-{a.rotate_degrees:g} deg")
    if a.shift:
        on.append(f"shift +-{a.shift_px:g} px")
    if a.scale:
        on.append(f"zoom x{1 / (1 + a.scale_range):.2f}-{1 + a.scale_range:g}")
    if a.elastic:
        on.append(f"elastic {a.elastic_grid}x{a.elastic_grid} grid, {a.elastic_sigma:g} px")
    if a.gray:
        on.append("gray values")
    if a.invert:
        on.append(f"contrast inversion p {a.invert:g}")
    print(f"  augmentation {', '.join(on) or 'none'}")
    if t.weight_map:
        print(f"  loss weights the paper's w(x): w0 {t.w0:g}, sigma {t.sigma:g} px")
    if t.dice:
        print(f"  loss adds {t.dice:g} x soft Dice of the foreground")
    if t.target != "mask" or i.min_size or i.min_peak or i.threshold != 0.5:
        kept = [f">= {i.min_size} px"] if i.min_size else []
        if i.min_fraction and i.min_size:
            kept[0] += f" (or {i.min_fraction:g} x the image's median object if smaller)"
        kept += [f"peak probability >= {i.min_peak:g}"] if i.min_peak else []
        seeds = f"seeds P(interior) > {i.seed_threshold:g}; " if t.target == "contour" else ""
        if t.target == "contour" and i.seed_dynamics:
            seeds += f"one seed per peak {i.seed_dynamics:g} above its saddle; "
        if t.target == "contour" and i.split_solidity:
            seeds += (f"seeds under solidity {i.split_solidity:g} split at distance peaks "
                      f"{i.split_depth:g} px deep; ")  # fmt: skip
        print(f"  instances    {t.target} target; foreground P > {i.threshold:g}; "
              f"{seeds}objects kept: {', '.join(kept) or 'all'}")  # fmt: skip
    if i.tta:
        print("  predict      8x test-time averaging unless --no-tta")
    if i.diameter:
        print(f"  predict      --diameter {i.diameter}: images rescaled to the trained size")
    return 0


INVERT_HELP = (
    "auto: negate each image whose median exceeds its mean (dark objects on a bright "
    "background), so the network sees bright objects; yes: negate every image; no: never"
)


# train's flags that map onto TrainConfig fields of the same name
CHANNELS_HELP = (
    "the image channels the network sees: indices such as 1 or 0,2 (in that order; one "
    "index gives a gray image), or rgb (colour kept as 3 channels, alpha dropped). Default: "
    "as stored: a TIFF's C axis (ImageJ hyperstack or OME metadata) gives channels, colour "
    "is made gray, and TIFF pages without axes metadata are slices, not channels"
)
TRAIN_FLAGS = ("images", "labels", "val_slices", "train_slices", "steps_per_epoch",
               "batch_size", "tile", "lr", "seed", "precision", "select_by", "isbi_every",
               "val_every", "weight_map", "target", "ema", "dice", "w0", "class_balance",
               "sample_by", "touch_width", "label_threshold", "ignore_label", "classes",
               "channels", "tensorboard")  # fmt: skip


def cmd_train(args) -> int:
    from .presets import DEFAULT, customise, get_preset, init_preset
    from .train import train

    if args.resume:  # the run's own config.json; only --epochs, --time-limit, --device change
        fixed = ("preset", "out", "zoom", "invert_tiles", "invert", "init", *TRAIN_FLAGS)
        given = [f"--{k.replace('_', '-')}" for k in fixed if getattr(args, k) is not None]
        if given:
            raise InputError(f"--resume keeps the run's settings; drop {', '.join(given)}")
        out = Path(args.resume)
        result = train(None, out, resume=True, epochs=args.epochs, device=args.device,
                       time_limit=args.time_limit, progress=not args.no_progress)  # fmt: skip
    else:
        if args.init:  # the model's preset, or --preset's settings around its network
            base = init_preset(args.init, args.preset)
        else:
            base = get_preset(args.preset or DEFAULT)
        preset = customise(base, zoom=args.zoom, invert_tiles=args.invert_tiles,
                           invert=args.invert,
                           **{k: getattr(args, k) for k in TRAIN_FLAGS})  # fmt: skip
        out = Path(args.out or "runs/latest")
        result = train(preset, out, epochs=args.epochs, device=args.device,
                       time_limit=args.time_limit, progress=not args.no_progress)  # fmt: skip
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(report(result, out))
    return 0


def report(result: dict, out: Path) -> str:
    """A few lines on the best epoch of a run."""
    if not result:
        return f"{out}: nothing trained"
    lines = [
        f"run {out}: {result['epochs']} epochs in {result['total_seconds'] / 60:.1f} min; "
        f"best epoch {result['best_epoch']}"
        + (f" (saved as {out / 'best.pt'})" if (out / "best.pt").is_file() else "")
    ]
    if result.get("val_loss") is not None:
        lines.append(
            f"  validation: loss {result['val_loss']:.4f}  pixel error "
            f"{result['val_pixel_error']:.4f}  IoU(cell) {result['val_iou']:.4f}  "
            f"Dice(cell) {result['val_dice']:.4f}"
        )
        if result.get("val_mean_iou") is not None:
            lines.append(f"  mean IoU of classes 1..C-1: {result['val_mean_iou']:.4f}")
        if result.get("v_rand") is not None:
            lines.append(
                f"  ISBI 2012: V_rand {result['v_rand']:.4f}  V_info {result['v_info']:.4f}"
            )
    lines.append(f"  plots: {out / 'curves.png'}, {out / 'val.png'}; log: {out / 'log.csv'}")
    return "\n".join(lines)


def cmd_predict(args) -> int:
    from .segment import segment_files

    overrides = inference_overrides(args)
    if not args.instances and set(overrides) & set(INFERENCE_FLAGS):
        raise InputError("--min-size, --min-peak, --min-fraction, --seed-threshold, "
                         "--seed-dynamics, --split-solidity and --split-depth shape instances: "
                         "add --instances")  # fmt: skip
    segment_files(args.checkpoint, args.input, args.out, slices=args.slices,
                  channels=args.channels, overrides=overrides,
                  write_mask=args.threshold is not None,
                  write_instances=args.instances, write_probabilities=args.probabilities,
                  write_rois=args.roi_zip,
                  tile=args.tile, precision=args.precision,
                  device=args.device, memory_mb=args.memory_mb, overlap=args.overlap,
                  progress=not args.no_progress, label=flag, invert=args.invert,
                  engine=args.engine, shard=args.shard, skip_existing=args.skip_existing,
                  report=lambda paths: print("wrote " + ", ".join(map(str, paths))))  # fmt: skip
    return 0


def cmd_export(args) -> int:
    from .bioimageio import export_bioimageio
    from .checkpoint import export_model
    from .exported import export

    overrides = inference_overrides(args)
    package = {"authors": args.author, "license": args.license, "cite": args.cite,
               "sample": args.sample}  # fmt: skip
    if args.format != "bioimageio" and (args.author or args.cite or args.sample):
        raise InputError("--author, --cite and --sample describe bioimageio packages: add "
                         "--format bioimageio")  # fmt: skip
    if args.format == "bioimageio":
        export_bioimageio(args.checkpoint, args.out, **package, **overrides)
    elif args.format != "biounet":
        export(args.checkpoint, args.out, args.format, **overrides)
    if args.format != "biounet":
        size = Path(args.out).stat().st_size / 2**20
        print(f"wrote {args.out}: {args.format}, {size:.1f} MB (network and configuration)")
        return 0
    shipped = export_model(args.checkpoint, args.out, **overrides)
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out}: {shipped['preset']['name']} model, epoch {shipped['epoch']}, "
          f"{size:.1f} MB (weights and configuration only)")  # fmt: skip
    return 0


def cmd_bench(args) -> int:
    from .bench import format_bench, run_bench
    from .checkpoint import model_from_checkpoint, shipped_model
    from .presets import get_preset

    if args.repeat < 1 or args.image_size < 0:
        raise InputError(f"--repeat must be >= 1 and --image-size >= 0, got {args.repeat}, "
                         f"{args.image_size}")  # fmt: skip
    model, preset, inference = None, get_preset(args.preset), None
    if args.checkpoint:
        model, preset = model_from_checkpoint(args.checkpoint)
    elif shipped_model() is not None:  # time predict with the shipped model, as users run it
        inference = (str(shipped_model()), model_from_checkpoint(shipped_model())[0])
    result = run_bench(preset, model=model, device=args.device, repeat=args.repeat,
                       image_size=args.image_size, tta=not args.no_tta,
                       predict_model=inference)  # fmt: skip
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .io import read_images, read_masks
    from .metrics import DEFAULT_THRESHOLDS, isbi_scores

    chosen = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = sorted(set(chosen) - set(ALL_METRICS))
    if unknown:
        raise InputError(f"--metrics: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(ALL_METRICS)}")  # fmt: skip
    thresholds = DEFAULT_THRESHOLDS
    if args.thresholds:
        try:
            thresholds = tuple(float(t) for t in args.thresholds.split(","))
        except ValueError:
            raise InputError(f"--thresholds {args.thresholds!r}: expected numbers") from None
    instances = args.instances or instance_files(Path(args.pred))
    if args.label_threshold is not None and (args.classes is not None or instances):
        raise InputError("--label-threshold binarises GT masks for probability maps; class "
                         "maps (--classes) and instance labels are scored as they are")  # fmt: skip
    if args.classes is not None:
        return evaluate_classes(args)
    if instances:
        return evaluate_instances(args)
    preds = read_images(args.pred)
    gts = read_masks(args.gt, hint=" (instance labels? add --instances; classes 0..C-1? add "
                     "--classes C; soft masks? add --label-threshold T)",
                     threshold=args.label_threshold)  # fmt: skip
    idx, gt_idx = paired_indices(args, preds, gts)
    probs = [preds.arrays[i].astype(np.float32) for i in idx]
    labels = [gts.arrays[i] for i in gt_idx]
    for p, g, i in zip(probs, labels, idx, strict=True):
        if p.shape != g.shape:
            raise InputError(f"{args.pred}: slice {i} is {p.shape[0]} x {p.shape[1]}, "
                             f"its label {g.shape[0]} x {g.shape[1]}")  # fmt: skip
    for i, p in zip(idx, probs, strict=True):
        if p.min() < 0 or p.max() > 1:
            if preds.arrays[i].dtype == np.uint8:
                raise InputError(f"{args.pred}: 8-bit values; expected float probabilities "
                                 "in [0, 1] (1 = cell), as biounet predict writes (a class "
                                 "map: add --classes C)")  # fmt: skip
            raise InputError(f"{args.pred}: slice {i} has values outside [0, 1] "
                             f"({p.min():g} .. {p.max():g}); expected probabilities")  # fmt: skip
    result = isbi_scores(probs, labels, thresholds=thresholds, metrics=chosen)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.pred} against {args.gt}: {len(idx)} slice(s), thresholds "
          f"{thresholds[0]:g}..{thresholds[-1]:g}")  # fmt: skip
    for key in chosen:
        at = result.get(f"{key}_threshold")
        extra = ""
        if key in ("v_rand", "v_info"):
            extra = f"  split {result[key + '_split']:.4f}  merge {result[key + '_merge']:.4f}"
        where = f"  (threshold {at:g})" if at is not None else ""
        print(f"  {key:<14} {result[key]:.6f}{extra}{where}")
    return 0


PROBABILITIES_SUFFIX = "-probabilities"  # predict --probabilities writes NAME-probabilities.tif


def evaluate_classes(args) -> int:
    """``evaluate --classes C``: per-class IoU and Dice of class maps (metrics.class_scores)."""
    from .io import Images, list_image_files, read_masks
    from .labels import IGNORE_INDEX
    from .metrics import class_scores_many

    c = args.classes
    if not 2 <= c <= IGNORE_INDEX:
        raise InputError(f"--classes must be in 2..{IGNORE_INDEX}, got {c}")
    if args.instances:
        raise InputError("--classes scores class maps, --instances instance labels: give one")
    if args.thresholds:
        raise InputError("--thresholds applies to probability maps; a class map (--classes) "
                         "has none")  # fmt: skip
    src = Path(args.pred)
    hint = f"; expected a class map 0..{c - 1} (predict's NAME.tif of a {c}-class model)"
    if src.is_dir():  # a predict output folder: its class maps, not NAME-probabilities.tif
        files = [f for f in list_image_files(src) if not f.stem.endswith(PROBABILITIES_SUFFIX)]
        parts = [read_masks(f, c, hint) for f in files]
        preds = Images([a for p in parts for a in p.arrays], [n for p in parts for n in p.names],
                       src)  # fmt: skip
    else:
        preds = read_masks(src, c, hint)
    gts = read_masks(args.gt, c, f"; expected classes 0..{c - 1}, {IGNORE_INDEX} = not "
                     "labelled", ignore=IGNORE_INDEX)  # fmt: skip
    idx, gt_idx = paired_indices(args, preds, gts)
    for i, j in zip(idx, gt_idx, strict=True):
        p, g = preds.arrays[i], gts.arrays[j]
        if p.shape != g.shape:
            raise InputError(f"{args.pred}: slice {i} is {p.shape[0]} x {p.shape[1]}, "
                             f"its label {g.shape[0]} x {g.shape[1]}")  # fmt: skip
    r = class_scores_many([preds.arrays[i] for i in idx], [gts.arrays[j] for j in gt_idx],
                          num_classes=c, ignore=IGNORE_INDEX)  # fmt: skip
    total = sum(gts.arrays[j].size for j in gt_idx)

    def score(v: float) -> float | None:  # NaN (no such class anywhere) -> null
        return None if v != v else round(v, 6)

    result = {"classes": c, "images": len(idx), "pixels": r["pixels"],
              "ignored": total - r["pixels"],
              **{k: [score(v) for v in r[k]] for k in ("iou_per_class", "dice_per_class")},
              "mean_iou": score(r["mean_iou"]), "mean_dice": score(r["mean_dice"])}  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.pred} against {args.gt}: {len(idx)} image(s), {c} classes, {r['pixels']} "
          f"pixels scored ({result['ignored']} not labelled)")  # fmt: skip
    for name, key in (("IoU ", "iou"), ("Dice", "dice")):
        shown = "  ".join(f"class {k} " + ("n/a" if v is None else f"{v:.4f}")
                          for k, v in enumerate(result[f"{key}_per_class"], start=1))  # fmt: skip
        mean = result[f"mean_{key}"]
        print(f"  {name}  {shown}  mean {'n/a' if mean is None else f'{mean:.4f}'}")
    return 0


def paired_indices(args, preds, gts) -> tuple[list[int], list[int]]:
    """(PRED indices, GT indices) that evaluate scores against each other: every pair, or
    the ``--slices`` of both stacks, or of GT alone when PRED holds just those slices. A GT
    folder is narrowed to the predicted names (check_pairs)."""
    from .dataset import parse_slices
    from .io import check_pairs

    gt_idx = list(range(len(gts)))
    if args.slices:
        gt_idx = parse_slices(args.slices, len(gts), f"{args.gt}: --slices", gts.names)
    if args.slices and len(preds) == len(gt_idx) < len(gts):
        return list(range(len(preds))), gt_idx  # PRED holds just the selected slices
    check_pairs(preds, gts)
    idx = gt_idx if args.slices else list(range(len(gts)))
    return idx, idx


INSTANCE_SUFFIX = "-instances"  # predict --instances writes NAME-instances.tif


def instance_files(path: Path) -> list[Path]:
    """The ``NAME-instances.*`` files at ``path`` (a folder, or one such file)."""
    from .io import IMAGE_SUFFIXES

    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [f for f in files
            if f.suffix.lower() in IMAGE_SUFFIXES and f.stem.endswith(INSTANCE_SUFFIX)]  # fmt: skip


def evaluate_instances(args) -> int:
    from .dataset import parse_slices
    from .io import Images, as_instances, check_pairs, read_images, read_instances
    from .metrics import instance_scores_many

    src = Path(args.pred)
    files = instance_files(src) if src.is_dir() else []
    if files:  # a predict output folder: its NAME-instances files, not the probability maps
        parts = [read_images(f, mask=True) for f in files]
        preds = Images([a for p in parts for a in p.arrays], [f.stem for f in files], src)
    else:
        preds = read_images(src, mask=True)
    preds = as_instances(preds)  # a binary mask: its connected components, with one warning
    gts = read_instances(args.gt)
    for images in (preds, gts):  # NAME-instances pairs with NAME
        images.names = [n[: -len(INSTANCE_SUFFIX)] if n.endswith(INSTANCE_SUFFIX) else n
                        for n in images.names]  # fmt: skip
    unscored = len(gts) - len(preds)
    check_pairs(preds, gts)  # GT is narrowed to the predicted names
    idx = list(range(len(gts)))
    if args.slices:
        idx = parse_slices(args.slices, len(gts), f"{args.gt}: --slices", gts.names)
    r = instance_scores_many([gts.arrays[i] for i in idx], [preds.arrays[i] for i in idx])
    keys = ("ap50", "dsb_score", "f1", "seg", "precision50", "recall50", "merges", "splits",
            "n_gt", "n_pred", "images", "thresholds", "tp", "fp", "fn")  # fmt: skip
    result = {k: r[k] for k in keys}
    result["thresholds"] = [round(float(t), 4) for t in result["thresholds"]]
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.pred} against {args.gt}: {r['images']} image(s), {r['n_gt']} reference and "
          f"{r['n_pred']} predicted objects (matched by IoU > t)"
          + (f"; {unscored} reference images without a prediction not scored" if unscored > 0
             else ""))  # fmt: skip
    print(f"  AP@0.5 {r['ap50']:.4f}  DSB score {r['dsb_score']:.4f}  F1@0.5 {r['f1']:.4f}  "
          f"SEG {r['seg']:.4f}  precision@0.5 {r['precision50']:.4f}  recall@0.5 "
          f"{r['recall50']:.4f}  merges {r['merges']}  splits {r['splits']}")  # fmt: skip
    shown = [(t, tp, fp, fn) for t, tp, fp, fn in zip(r["thresholds"], r["tp"], r["fp"], r["fn"],
             strict=True) if round(t, 4) in (0.5, 0.75, 0.9)]  # fmt: skip
    print("  TP / FP / FN " + "  ".join(f"at IoU > {t:g}: {tp} / {fp} / {fn}"
                                        for t, tp, fp, fn in shown))  # fmt: skip
    return 0


def cmd_weight_map(args) -> int:
    import numpy as np

    from .io import read_images, write_tiff
    from .labels import instances_from_mask, separate_touching
    from .plots import plot_weight_map
    from .weights import weight_map

    src = Path(args.labels)
    labels = read_images(src, mask=True)
    maps = []
    for name, lab in zip(labels.names, labels.arrays, strict=True):
        try:
            maps.append(weight_map(lab, args.w0, args.sigma))
        except InputError as e:
            raise InputError(f"{src} ({name}): {e}") from None
    if src.is_dir():
        folder = Path(args.out)
        for name, m in zip(labels.names, maps, strict=True):
            write_tiff(folder / f"{name}.tif", m)
        out = folder / f"{labels.names[0]}.tif"
        print(f"wrote {len(maps)} weight maps to {folder}")
    else:
        out = write_tiff(args.out, np.stack(maps) if len(maps) > 1 else maps[0])
        print(f"wrote {out} ({len(maps)} x {maps[0].shape[0]} x {maps[0].shape[1]} float32)")
    if args.png:
        image = read_images(args.images).arrays[0] if args.images else None
        inst = separate_touching(instances_from_mask(labels.arrays[0]))
        fig = plot_weight_map(
            image,
            inst,
            maps[0],
            out.with_suffix(".png"),
            f"{labels.names[0]}: w0 = {args.w0:g}, sigma = {args.sigma:g} px",
        )
        print(f"wrote {fig}")
    return 0


def cmd_augment_preview(args) -> int:
    from .plots import plot_tiles
    from .presets import get_preset
    from .train import preview_tiles

    preset = get_preset(args.preset).with_train(images=args.images, labels=args.labels,
                                                 channels=args.channels)  # fmt: skip
    if args.n < 1:
        raise InputError(f"-n must be >= 1, got {args.n}")
    tiles, labels = preview_tiles(preset, args.n, args.seed)
    plot_tiles(
        tiles,
        labels,
        args.out,
        title=f"{preset.name}: {tiles.shape[-1]} px input tiles, label outlines",
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
