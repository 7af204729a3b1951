"""``fuller infer`` (any backend over a split, scored with the devkit) and ``fuller parity``
(PyTorch vs another backend, per output and per metric)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from fuller.engine.parity import BOX_TOLERANCE_M, MAP_MAX_ABS, METRIC_POINTS

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
                    "split; print max/mean abs diff and cosine per output, box matching and the mAP/NDS/mIoU "
                    "deltas; exit 1 when a threshold is exceeded.")
    q.add_argument("--checkpoint", required=True, help="checkpoint.pt (the reference)")
    q.add_argument("--model", required=True, help="model.onnx or model.engine to compare")
    q.add_argument("--data", required=True, help="nuScenes dataset root")
    q.add_argument("--split", default=None, help="devkit split (default: the config's val split)")
    q.add_argument("--out", default="parity", help="folder for both backends' results (default ./parity)")
    q.add_argument("--map-max-abs", type=float, default=MAP_MAX_ABS,
                   help=f"largest allowed map probability difference (default {MAP_MAX_ABS:g})")
    q.add_argument("--box-tolerance", type=float, default=BOX_TOLERANCE_M,
                   help=f"box centre match distance in m (default {BOX_TOLERANCE_M:g})")
    q.add_argument("--metric-points", type=float, default=METRIC_POINTS,
                   help=f"largest allowed |delta| of mAP, NDS, mIoU in points (default {METRIC_POINTS:g})")
    q.set_defaults(func=run_parity_cmd)


def run_infer(args: argparse.Namespace) -> int:
    from fuller.engine import Engine
    from fuller.engine.offline import evaluate_predictions, open_split, run_split
    from fuller.train.evaluation import format_table

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    engine = Engine.load(args.model, device=args.device)
    split = args.split or engine.config.data.val_split
    print(f"backend: {engine.describe()}")
    dataset = open_split(engine.config, args.data, split)
    predictions = run_split([engine], dataset)[0]
    metrics = evaluate_predictions(engine.config, dataset, predictions, split, args.out, args.pictures)
    print(format_table(metrics))
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


def parity_report(reference, other, data, split, out, map_max_abs, box_tolerance, metric_points,
                  progress: bool = True, nusc=None) -> tuple[str, list[str]]:
    """Run the comparison; returns the printed table and the failed thresholds (also saved as JSON)."""
    from fuller.engine.offline import run_parity
    from fuller.engine.parity import format_parity

    comparison, deltas, _, _ = run_parity(reference, other, data, split, out, progress=progress, nusc=nusc)
    failures = comparison.failures(map_max_abs, box_tolerance)
    failures += [f"{name}: delta {value:+.3f} points exceeds {metric_points:g}"
                 for name, value in deltas.items() if abs(value) > metric_points]
    frames = comparison.outputs[next(iter(comparison.outputs))].count if comparison.outputs else 0
    table = format_parity(comparison, deltas, reference.backend.name, other.backend.name, frames, box_tolerance)
    record = {"frames": frames, "outputs": {k: vars(v) for k, v in comparison.outputs.items()},
              "boxes": comparison.boxes.record(box_tolerance),
              "metric_deltas_points": deltas, "failures": failures}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "parity.json").write_text(json.dumps(record, indent=2))
    return table, failures


def run_parity_cmd(args: argparse.Namespace) -> int:
    from fuller.engine import Engine

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    reference, other = Engine.load(args.checkpoint), Engine.load(args.model)
    split = args.split or reference.config.data.val_split
    print(f"reference: {reference.describe()}\nother:     {other.describe()}")
    table, failures = parity_report(reference, other, args.data, split, args.out, args.map_max_abs,
                                    args.box_tolerance, args.metric_points)
    print(table)
    for failure in failures:
        print(f"FAIL {failure}")
    print("parity: " + ("FAILED" if failures else "passed") + f" ({Path(args.out) / 'parity.json'})")
    return 1 if failures else 0
