"""The ``biounet`` command line. Each command maps its flags onto the Python API; the flags
of settings come from their declarations (biounet.settings, biounet.config).

Bad input ends with one line, ``biounet: error: <file>: <problem>``, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from . import settings
from .bench import format_bench, run_bench
from .bioimageio import export_bioimageio
from .checkpoint import (about_lines, export_model, model_from_checkpoint, model_record,
                         shipped_model)
from .config import InferenceConfig, PredictOptions, TileOptions
from .errors import InputError, RankLost, Stopped, Terminated
from .evaluate import evaluate
from .exported import FORMATS, ONNX_OPSET, export, preset_of
from .io import read_images, write_tiff
from .labels import instances_from_mask, separate_touching
from .metrics import METRICS
from .plots import plot_tiles, plot_weight_map
from .presets import DEFAULT, PRESETS, TRAIN_FLAGS, customise, describe, get_preset, init_preset
from .runs import report
from .segment import segment_files
from .train import preview_tiles, train
from .weights import weight_map

log = logging.getLogger("biounet")

ABOUT = ("biounet: the U-Net of Ronneberger, Fischer and Brox for microscopy images: train "
         "on a few annotated images, predict probabilities, masks and separated objects in "
         "images of any size, and score them.")  # fmt: skip
TRAIN = TRAIN_FLAGS
PREDICT = settings.flags({"options": PredictOptions, "tiles": TileOptions}, "predict")
INFERENCE = settings.flags({"inference": InferenceConfig}, "predict")
INSTANCE_OPTIONS = [f for f in INFERENCE if f.dest not in ("tta", "threshold", "diameter")]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # under torchrun the ranks but 0 log warnings only (rank 0 speaks for the run)
    quiet = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    before = signal.signal(signal.SIGTERM, _terminate)  # as a scheduler stops a job
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, before)


def _run(args) -> int:
    """The command, its failures as one line and an exit code."""
    try:
        return args.func(args) or 0
    except Stopped as e:  # a signal; the run saved what it had done
        print(f"biounet: {e}", file=sys.stderr)
        return e.code
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
    except Terminated:
        print("biounet: terminated", file=sys.stderr)
        return Terminated.code


def _terminate(signum, frame):
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="biounet", description=ABOUT)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_info, _train, _predict, _export, _bench, _evaluate, _weight_map,
                _augment_preview):  # fmt: skip
        add(sub)
    return p


def _info(sub) -> None:
    s = sub.add_parser("info", help="show a preset or a model: parameters, tile sizes, "
                       "input channels, every setting")  # fmt: skip
    s.add_argument("model", nargs="?", help="a checkpoint (.pt), ONNX or TorchScript file: "
                   "show its configuration instead of a preset's")  # fmt: skip
    s.add_argument("--preset", default=DEFAULT, choices=list(PRESETS))
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_info)


def _train(sub) -> None:
    s = sub.add_parser("train", help="train a U-Net (default: fast preset on bundled ISBI 2012)")
    s.add_argument("--preset", choices=list(PRESETS), help=f"default: {DEFAULT}")
    s.add_argument("--out", help="run directory (default: runs/latest)")
    s.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last.pt "
                   "with its own settings (only " + ", ".join(
                       f.flag for f in TRAIN if f.setting.resume) + " may change them)")
    settings.add_flags(s, TRAIN)
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)


def _predict(sub) -> None:
    s = sub.add_parser(
        "predict", help="overlap-tile prediction: probability TIFFs (1 = cell); class maps "
        "for multi-class models",
        description="Predict every image: NAME.tif is float32 P(foreground) for binary and "
        "contour models; for a multi-class model (a mask model of C > 2 classes) it is the "
        "uint8 class map 0..C-1 (the most probable class), and --probabilities adds the C "
        "class probabilities.")
    s.add_argument("checkpoint", help="a biounet checkpoint (.pt), ONNX or TorchScript file")
    s.add_argument("input", help="image, TIFF stack, or folder of images; or one image larger "
                   "than memory: a Zarr / OME-Zarr (.zarr), or a TIFF with --out NAME.zarr")
    settings.add_flags(s, PREDICT)
    settings.add_flags(s, INFERENCE, lambda f: f"{f.setting.help} (default: the model's "
                       "setting)")  # fmt: skip
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_predict)


def _export(sub) -> None:
    s = sub.add_parser("export", help="a checkpoint for sharing: configuration + weights, or "
                       "ONNX / TorchScript / bioimage.io for other tools")  # fmt: skip
    s.add_argument("checkpoint", help="a checkpoint (e.g. runs/NAME/best.pt)")
    s.add_argument("out", help="the file to write (e.g. models/NAME.pt, NAME.onnx)")
    s.add_argument("--format", default="biounet", metavar="{" + ",".join(FORMATS) + "}",
                   help="biounet (default): a stripped checkpoint; onnx "
                   f"(opset {ONNX_OPSET}, dynamic batch, height and width; needs "
                   "biounet[onnx]) or torchscript (traced): the network with its "
                   "configuration as metadata, which biounet predict runs like a checkpoint; "
                   "bioimageio: a model zoo package (.zip; needs biounet[bioimageio])")
    s.add_argument("--author", action="append", metavar="NAME",
                   help="bioimageio: an author of the model (repeat for more; default biounet)")
    s.add_argument("--license", default="MIT", help="bioimageio: SPDX license id (default MIT)")
    s.add_argument("--cite", action="append", metavar="'TEXT|DOI'",
                   help="bioimageio: a further citation, 'TEXT|DOI' or 'TEXT|URL' (the U-Net "
                   "paper and the bundled training data are cited already)")  # fmt: skip
    s.add_argument("--sample", metavar="IMAGE", help="bioimageio: the image whose crop makes "
                   "the package's test tensors (default: the model's training data)")
    s.add_argument("--about", metavar="FILE.json", help="biounet: store this record for "
                   "`biounet info` (keys trained_on, command, hardware: text; scores: names "
                   "to numbers), e.g. the data and cross-validated scores of a shipped model")
    settings.add_flags(s, INFERENCE, lambda f: "store in the model as predict's default: "
                       + f.setting.help)  # fmt: skip
    s.set_defaults(func=cmd_export)


def _bench(sub) -> None:
    s = sub.add_parser("bench", help="training and inference speed against same-run baselines")
    s.add_argument("--preset", default=DEFAULT, choices=list(PRESETS))
    s.add_argument("--checkpoint", help="measure this model instead of the preset's (predict "
                   "speed: default the shipped models/isbi2012.pt where present)")
    s.add_argument("--image-size", type=int, default=2048, help="edge of the image for "
                   "predict speed (0: skip; default 2048)")  # fmt: skip
    s.add_argument("--no-tta", action="store_true", help="skip the --tta inference timing")
    s.add_argument("--repeat", type=int, default=5, help="interleaved rounds of the training "
                   "step, baseline and conv peaks (medians; default 5)")  # fmt: skip
    s.add_argument("--device", default="auto")
    s.add_argument("--compile", action="store_true", help="also time the training step and "
                   "predict through torch.compile, interleaved with eager")  # fmt: skip
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)


def _evaluate(sub) -> None:
    s = sub.add_parser("evaluate", help="ISBI 2012 metrics, the paper's errors, IoU, Dice, SEG")
    s.add_argument("pred", help="probability TIFF / stack / folder (1 = cell); with --classes "
                   "a class map")  # fmt: skip
    s.add_argument("gt", help="label TIFF / stack / folder (255 or 1 = cell, 0 = membrane)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--instances", action="store_true", help="PRED and GT are instance labels "
                   "(0 = background): DSB 2018 score, AP@0.5, F1, SEG, merges, splits, TP / FP "
                   "/ FN per IoU threshold (automatic for a folder of predict --instances "
                   "output, whose NAME-instances.tif files it scores)")  # fmt: skip
    s.add_argument("--classes", type=int, metavar="C", help="PRED is a class map 0..C-1 "
                   "(predict's output of a C-class model) and GT a class mask: IoU and Dice of "
                   "each class 1..C-1 and their means, over all pixels together; GT pixels of "
                   "the ignore value 255 are left out; a class in neither map has no score "
                   "(null in --json) and is left out of the means")  # fmt: skip
    s.add_argument("--metrics", default=",".join(METRICS),
                   help=f"comma-separated subset of {','.join(METRICS)}")
    s.add_argument("--thresholds", help="comma-separated thresholds (default 0, 0.1, ..., 1)")
    s.add_argument("--label-threshold", type=float, metavar="T", help="GT masks are soft or "
                   "anti-aliased: value > T is cell (as train --label-threshold)")  # fmt: skip
    s.add_argument("--slices", help="only these slices, e.g. 25-29: of both stacks, or of GT "
                   "alone when PRED holds just those slices")  # fmt: skip
    s.set_defaults(func=cmd_evaluate)


def _weight_map(sub) -> None:
    s = sub.add_parser("weight-map", help="write the paper's border weight maps w(x)")
    s.add_argument("labels", help="label TIFF / stack / folder: binary masks or instance labels")
    s.add_argument("--out", required=True, help="output TIFF (file input) or folder")
    s.add_argument("--w0", type=float, default=10.0, help="border weight (default 10)")
    s.add_argument("--sigma", type=float, default=5.0, help="border width in px (default 5)")
    s.add_argument("--png", action="store_true", help="also write a figure like the paper's "
                   "Fig. 3 (first image) as .png")  # fmt: skip
    s.add_argument("--images", help="the matching images, shown in the figure")
    s.set_defaults(func=cmd_weight_map)


def _augment_preview(sub) -> None:
    s = sub.add_parser("augment-preview", help="a grid of augmented training tiles")
    s.add_argument("--preset", default=DEFAULT, choices=list(PRESETS))
    s.add_argument("--images", help="image stack or folder (default: bundled ISBI 2012)")
    s.add_argument("--labels", help="mask stack or folder")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--channels", metavar="SPEC", help="the image channels the network sees "
                   "(as train --channels)")  # fmt: skip
    s.add_argument("-n", type=int, default=12, help="number of tiles (default 12)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_augment_preview)


def inference_overrides(args) -> dict:
    """The inference flags given, as InferenceConfig fields (absent: keep the model's
    setting), each checked as InferenceConfig checks it; errors name the flag."""
    given = settings.given(args, INFERENCE)
    for f in INFERENCE:
        if f.dest in given:
            settings.check(InferenceConfig, f.path[-1], given[f.dest], label=f.flag)
    return given


def cmd_info(args) -> int:
    preset = preset_of(args.model) if args.model else get_preset(args.preset)
    record = model_record(args.model) if args.model else {}
    if args.json:
        print(json.dumps({**describe(preset, as_dict=True), **record}))
        return 0
    lines = about_lines(record)
    if "epoch" in record:
        seconds = record.get("trained_seconds")
        lines.append(f"trained: epoch {record['epoch']}, step {record.get('step')}"
                     + (f", {seconds / 60:.1f} min" if seconds else ""))  # fmt: skip
    print("\n".join(lines + describe(preset)))
    return 0


def cmd_train(args) -> int:
    given = settings.given(args, TRAIN)
    if args.resume:  # the run's own config.json; only the resume settings may change
        fixed = [f.flag for f in settings.fixed_on_resume(TRAIN) if f.dest in given]
        fixed += [f"--{k}" for k in ("preset", "out") if getattr(args, k) is not None]
        if fixed:
            raise InputError(f"--resume keeps the run's settings; drop {', '.join(fixed)}")
        out, preset = Path(args.resume), None
    else:  # the model's preset, or --preset's settings around its network
        base = init_preset(args.init, args.preset) if args.init else get_preset(
            args.preset or DEFAULT)
        out, preset = Path(args.out or "runs/latest"), customise(base, **given)
    # a new run's resume settings (--epochs, --time-limit, ...) are in its preset; a resumed
    # run's are the call's overrides of its config.json
    again = {f.dest: getattr(args, f.dest) for f in TRAIN if f.setting.resume} if args.resume \
        else {}  # fmt: skip
    result = train(preset, out, resume=bool(args.resume), progress=not args.no_progress,
                   **again)  # fmt: skip
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(report(result, out))
    return 0


def cmd_predict(args) -> int:
    overrides = inference_overrides(args)
    if not args.instances and set(overrides) & {f.dest for f in INSTANCE_OPTIONS}:
        raise InputError(", ".join(f.flag for f in INSTANCE_OPTIONS[:-1]) + " and "
                         f"{INSTANCE_OPTIONS[-1].flag} shape instances: add --instances")
    given = settings.sections(PREDICT, settings.given(args, PREDICT))
    o = PredictOptions(**given.get("options", {}))
    tiles = TileOptions(**given.get("tiles", {}), progress=not args.no_progress)
    flag_of = {f.dest: f.flag for f in INFERENCE}
    segment_files(args.checkpoint, args.input, o.out, slices=o.slices, channels=o.channels,
                  overrides=overrides, write_mask=args.threshold is not None,
                  write_instances=o.instances, write_probabilities=o.probabilities,
                  write_rois=o.roi_zip, device=o.device, options=tiles,
                  label=lambda field: flag_of.get(field, field), invert=o.invert,
                  engine=o.engine, shard=o.shard, skip_existing=o.skip_existing,
                  report=lambda paths: print("wrote " + ", ".join(map(str, paths))))  # fmt: skip
    return 0


def cmd_export(args) -> int:
    overrides = inference_overrides(args)
    package = {"authors": args.author, "license": args.license, "cite": args.cite,
               "sample": args.sample}  # fmt: skip
    if args.format != "bioimageio" and (args.author or args.cite or args.sample):
        raise InputError("--author, --cite and --sample describe bioimageio packages: add "
                         "--format bioimageio")  # fmt: skip
    if args.format == "bioimageio":
        export_bioimageio(args.checkpoint, args.out, **package, **overrides)
    if args.format not in ("biounet", "bioimageio"):
        export(args.checkpoint, args.out, args.format, **overrides)
    if args.format != "biounet":
        what = f"{args.format}, {{size:.1f}} MB (network and configuration)"
    else:
        about = None
        if args.about:
            try:
                about = json.loads(Path(args.about).read_text())
            except (OSError, ValueError) as e:
                raise InputError(f"{args.about}: not a readable JSON file ({e})") from None
        shipped = export_model(args.checkpoint, args.out, about=about, **overrides)
        what = (f"{shipped['preset']['name']} model, epoch {shipped['epoch']}, {{size:.1f}} MB "
                "(weights and configuration only)")  # fmt: skip
    print(f"wrote {args.out}: " + what.format(size=Path(args.out).stat().st_size / 2**20))
    return 0


def cmd_bench(args) -> int:
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
                       predict_model=inference, compile=args.compile)  # fmt: skip
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


def cmd_evaluate(args) -> int:
    thresholds = None
    if args.thresholds:
        try:
            thresholds = tuple(float(t) for t in args.thresholds.split(","))
        except ValueError:
            raise InputError(f"--thresholds {args.thresholds!r}: expected numbers") from None
    result = evaluate(args.pred, args.gt, instances=args.instances or None,
                      classes=args.classes, slices=args.slices,
                      metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
                      thresholds=thresholds, label_threshold=args.label_threshold)  # fmt: skip
    print(result.to_json() if args.json else "\n".join(result.lines()))
    return 0


def cmd_weight_map(args) -> int:
    import numpy as np


    src = Path(args.labels)
    labels = read_images(src, mask=True)
    maps = []
    for name, lab in zip(labels.names, labels.arrays, strict=True):
        try:
            maps.append(weight_map(lab, args.w0, args.sigma))
        except InputError as e:
            raise InputError(f"{src} ({name}): {e}") from None
    if src.is_dir():
        for name, m in zip(labels.names, maps, strict=True):
            write_tiff(Path(args.out) / f"{name}.tif", m)
        out = Path(args.out) / f"{labels.names[0]}.tif"
        print(f"wrote {len(maps)} weight maps to {args.out}")
    else:
        out = write_tiff(args.out, np.stack(maps) if len(maps) > 1 else maps[0])
        print(f"wrote {out} ({len(maps)} x {maps[0].shape[0]} x {maps[0].shape[1]} float32)")
    if args.png:
        image = read_images(args.images).arrays[0] if args.images else None
        inst = separate_touching(instances_from_mask(labels.arrays[0]))
        title = f"{labels.names[0]}: w0 = {args.w0:g}, sigma = {args.sigma:g} px"
        print(f"wrote {plot_weight_map(image, inst, maps[0], out.with_suffix('.png'), title)}")
    return 0


def cmd_augment_preview(args) -> int:
    if args.n < 1:
        raise InputError(f"-n must be >= 1, got {args.n}")
    preset = get_preset(args.preset).with_train(images=args.images, labels=args.labels,
                                                 channels=args.channels)  # fmt: skip
    tiles, labels = preview_tiles(preset, args.n, args.seed)
    plot_tiles(tiles, labels, args.out,
               title=f"{preset.name}: {tiles.shape[-1]} px input tiles, label outlines")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
