"""``fuller infer`` (any backend over a split, scored with the devkit) and ``fuller parity``
(PyTorch vs another backend, per output and per metric)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

# `fuller parity`'s per-attribute box thresholds: flag, `BoxTolerance` field, what it bounds.
BOX_TOLERANCE_FLAGS = (
    ("box-tolerance", "centre_m", "largest centre distance of a box to its match, in m"),
    ("size-tolerance", "size_m", "largest width, length or height difference of matched boxes, in m"),
    ("yaw-tolerance", "yaw_rad", "largest yaw difference of matched boxes modulo 2 pi, in rad"),
    ("velocity-tolerance", "velocity_m_s", "largest vx or vy difference of matched boxes, in m/s"),
    ("score-tolerance", "score", "largest score difference of matched boxes"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from fuller.engine.parity import (INT8_BOX_TOLERANCE, INT8_MAP_MAX_ABS, INT8_METRIC_POINTS, MAP_MAX_ABS, METRIC_POINTS,
                                      BoxTolerance)

    p = subparsers.add_parser(
        "infer", help="run a model (.engine, .onnx or checkpoint) over a split and score it",
        description="Run the engine (TensorRT engine, ONNX graph or PyTorch checkpoint, chosen by the file) over "
                    "every sample of a split from raw images and points; write the devkit results JSON, "
                    "metrics.json (mAP, NDS, map IoU) and BEV pictures.")
    p.add_argument("--model", required=True, help="model.engine, model.onnx or checkpoint.pt")
    p.add_argument("--data", required=True, help="nuScenes dataset root")
    p.add_argument("--split", default=None, help="devkit split (default: the config's val split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--pictures", type=int, default=4, help="number of BEV pictures (default 4)")
    p.add_argument("--device", default="cpu", help="device of the PyTorch backend (default cpu)")
    p.set_defaults(func=run_infer)

    q = subparsers.add_parser(
        "parity", help="compare PyTorch with another backend, per output and per metric",
        description="Run the checkpoint (PyTorch) and --model on the same preprocessed inputs of every sample of a "
                    "split; print max/mean abs diff and cosine per output, the largest error of matched boxes per "
                    "attribute (centre, size, yaw, velocity, score, label) and the mAP/NDS/mIoU deltas; exit 1 when "
                    "a threshold is exceeded or no box was compared. An INT8 graph (fuller quantize) has its own "
                    "thresholds: its mAP/NDS/mIoU deltas are taken against its float graph, run on the same inputs, "
                    "and its boxes are reported without failing.")
    q.add_argument("--checkpoint", required=True, help="checkpoint.pt (the reference)")
    q.add_argument("--model", required=True, help="model.onnx, model.int8.onnx or model.engine to compare")
    q.add_argument("--float-model", default=None,
                   help="for an INT8 --model: its float graph (default: the one it was quantised from, next to it)")
    q.add_argument("--data", required=True, help="nuScenes dataset root")
    q.add_argument("--split", default=None, help="devkit split (default: the config's val split)")
    q.add_argument("--out", default="parity", help="folder for both backends' results (default ./parity)")
    box, int8 = BoxTolerance(), INT8_BOX_TOLERANCE
    q.add_argument("--map-max-abs", type=float, default=None,
                   help=f"largest allowed map probability difference (default {MAP_MAX_ABS:g}; INT8 {INT8_MAP_MAX_ABS:g})")
    for flag, field, what in BOX_TOLERANCE_FLAGS:
        q.add_argument(f"--{flag}", type=float, default=None,
                       help=f"{what} (default {getattr(box, field):g}; INT8 {getattr(int8, field):g})")
    q.add_argument("--metric-points", type=float, default=None,
                   help=f"largest allowed |delta| of mAP, NDS, mIoU in points (default {METRIC_POINTS:g}; "
                        f"INT8 {INT8_METRIC_POINTS:g})")
    q.set_defaults(func=run_parity_cmd)


def box_tolerance_of(args: argparse.Namespace, int8: bool):
    """The box thresholds `fuller parity` gates on: each flag given, else its float or INT8 default."""
    from fuller.engine.parity import INT8_BOX_TOLERANCE, BoxTolerance

    default = INT8_BOX_TOLERANCE if int8 else BoxTolerance()
    given = {field: getattr(args, flag.replace("-", "_")) for flag, field, _ in BOX_TOLERANCE_FLAGS}
    return BoxTolerance(**{k: getattr(default, k) if v is None else v for k, v in given.items()})


def run_infer(args: argparse.Namespace) -> int:
    from fuller.engine.offline import infer_split
    from fuller.evaluation import format_table
    from fuller.export.models import open_engine

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    engine = open_engine(args.model, device=args.device)
    print(f"backend: {engine.describe()}")
    metrics = infer_split(engine, args.data, args.split or engine.config.data.val_split, args.out, args.pictures)
    print(format_table(metrics))
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


def run_parity_cmd(args: argparse.Namespace) -> int:
    from fuller.engine import contract
    from fuller.engine.offline import run_parity
    from fuller.engine.parity import INT8_MAP_MAX_ABS, INT8_MEAN_ABS, INT8_METRIC_POINTS, MAP_MAX_ABS, METRIC_POINTS
    from fuller.export.models import open_engine
    from fuller.export.quantize import float_source

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    reference, other = open_engine(args.checkpoint), open_engine(args.model)
    int8 = getattr(other.backend, "precision", "fp32") == contract.INT8
    metric_reference = open_engine(float_source(args.model, args.float_model)) if int8 else None
    split = args.split or reference.config.data.val_split
    print(f"reference: {reference.describe()}\nother:     {other.describe()}")
    if metric_reference is not None:
        print(f"metrics against: {metric_reference.describe()}")

    def pick(given, default, int8_default):
        return given if given is not None else int8_default if int8 else default

    box_tolerance = box_tolerance_of(args, int8)
    report = run_parity(reference, other, args.data, split, args.out, pick(args.map_max_abs, MAP_MAX_ABS, INT8_MAP_MAX_ABS),
                        box_tolerance, pick(args.metric_points, METRIC_POINTS, INT8_METRIC_POINTS),
                        metric_reference=metric_reference, gate_boxes=not int8, mean_abs=INT8_MEAN_ABS if int8 else None)
    print(report.table)
    if int8:
        print(f"INT8: boxes reported, not gated; mean abs diff bounds {INT8_MEAN_ABS}")
    for failure in report.failures:
        print(f"FAIL {failure}")
    print("parity: " + ("FAILED" if report.failures else "passed") + f" ({Path(args.out) / 'parity.json'})")
    return 1 if report.failures else 0
