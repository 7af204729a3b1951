"""``fuller infer`` (any backend over a split, scored with the devkit) and ``fuller parity``
(PyTorch vs another backend, per output and per metric)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from fuller.engine.parity import MAP_MAX_ABS, METRIC_POINTS, BoxTolerance

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
                    "a threshold is exceeded or no box was compared.")
    q.add_argument("--checkpoint", required=True, help="checkpoint.pt (the reference)")
    q.add_argument("--model", required=True, help="model.onnx or model.engine to compare")
    q.add_argument("--data", required=True, help="nuScenes dataset root")
    q.add_argument("--split", default=None, help="devkit split (default: the config's val split)")
    q.add_argument("--out", default="parity", help="folder for both backends' results (default ./parity)")
    q.add_argument("--map-max-abs", type=float, default=MAP_MAX_ABS,
                   help=f"largest allowed map probability difference (default {MAP_MAX_ABS:g})")
    box = BoxTolerance()
    q.add_argument("--box-tolerance", type=float, default=box.centre_m,
                   help=f"largest centre distance of a box to its match, in m (default {box.centre_m:g})")
    q.add_argument("--size-tolerance", type=float, default=box.size_m,
                   help=f"largest width, length or height difference of matched boxes, in m (default {box.size_m:g})")
    q.add_argument("--yaw-tolerance", type=float, default=box.yaw_rad,
                   help=f"largest yaw difference of matched boxes modulo 2 pi, in rad (default {box.yaw_rad:g})")
    q.add_argument("--velocity-tolerance", type=float, default=box.velocity_m_s,
                   help=f"largest vx or vy difference of matched boxes, in m/s (default {box.velocity_m_s:g})")
    q.add_argument("--score-tolerance", type=float, default=box.score,
                   help=f"largest score difference of matched boxes (default {box.score:g})")
    q.add_argument("--metric-points", type=float, default=METRIC_POINTS,
                   help=f"largest allowed |delta| of mAP, NDS, mIoU in points (default {METRIC_POINTS:g})")
    q.set_defaults(func=run_parity_cmd)


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
    from fuller.engine.offline import run_parity
    from fuller.engine.parity import BoxTolerance
    from fuller.export.models import open_engine

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    reference, other = open_engine(args.checkpoint), open_engine(args.model)
    split = args.split or reference.config.data.val_split
    print(f"reference: {reference.describe()}\nother:     {other.describe()}")
    box_tolerance = BoxTolerance(centre_m=args.box_tolerance, size_m=args.size_tolerance, yaw_rad=args.yaw_tolerance,
                                 velocity_m_s=args.velocity_tolerance, score=args.score_tolerance)
    report = run_parity(reference, other, args.data, split, args.out, args.map_max_abs, box_tolerance,
                        args.metric_points)
    print(report.table)
    for failure in report.failures:
        print(f"FAIL {failure}")
    print("parity: " + ("FAILED" if report.failures else "passed") + f" ({Path(args.out) / 'parity.json'})")
    return 1 if report.failures else 0
