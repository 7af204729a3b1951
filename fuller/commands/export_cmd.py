"""``fuller export`` (a trained checkpoint -> one ONNX graph with fuller:: custom ops), ``fuller
quantize`` (that graph -> an INT8 graph with calibrated Q/DQ pairs) and ``fuller build-engine``
(either graph -> a TensorRT engine, the same front end as ``python export/build_engine.py``)."""
from __future__ import annotations

import argparse
from collections import Counter

from fuller.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    from fuller.engine.artifacts import DEFAULT_ONNX
    from fuller.export.build_engine import add_arguments

    p = subparsers.add_parser(
        "export", help="export a checkpoint to one ONNX graph (fuller::BevPool and the sparse index ops)",
        description="Trace the trained network from preprocessed tensors (normalised images, BEV-pool geometry, "
                    "voxel list) to boxes, scores, labels and map probabilities; write it with the config in its "
                    "metadata and check it with onnx.checker (custom schemas registered).")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    p.add_argument("--out", default=str(DEFAULT_ONNX), help=f"ONNX file to write (default {DEFAULT_ONNX})")
    p.set_defaults(func=run)

    from fuller.export.quantize import DEFAULT_FRAMES, DEFAULT_PERCENTILE, METHODS

    q = subparsers.add_parser(
        "quantize", help="calibrate the exported graph on real frames into an INT8 graph (Q/DQ pairs)",
        description="Run the float graph over frames of a split (the runtime's preprocessing), calibrate the "
                    "activation ranges of every Conv, ConvTranspose and MatMul (entropy or percentile), and write "
                    "the graph with symmetric INT8 QuantizeLinear/DequantizeLinear pairs (weights per channel, "
                    "biases float) as TensorRT's explicit quantisation and ONNX Runtime read them. The heads' last "
                    "layers and the layer before the depth softmax stay float; --keep-float adds more.")
    q.add_argument("--model", default=str(DEFAULT_ONNX), help=f"float graph from fuller export (default {DEFAULT_ONNX})")
    q.add_argument("--data", required=True, help="nuScenes dataset root to calibrate on")
    q.add_argument("--split", default=None, help="split to take frames from (default: the config's train split, so "
                                                 "the val split stays held out)")
    q.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"calibration frames, spread evenly over the split (default {DEFAULT_FRAMES})")
    q.add_argument("--method", choices=METHODS, default="entropy",
                   help="activation range: entropy (least KL divergence, TensorRT's recipe; default) or percentile")
    q.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                   help=f"percentile of |x| for --method percentile (default {DEFAULT_PERCENTILE:g})")
    q.add_argument("--keep-float", nargs="*", default=[], metavar="NODE",
                   help="more weighted nodes to keep in float, by name or shell pattern (e.g. '/model/camera/*')")
    q.add_argument("--out", default=None, help="INT8 graph to write (default: the model path with .int8.onnx)")
    q.set_defaults(func=run_quantize)

    b = subparsers.add_parser(
        "build-engine", help="build a TensorRT engine (strongly typed) from the exported graph",
        description="Parse the exported graph with TensorRT's ONNX parser (the fuller plugins registered) into a "
                    "strongly-typed network, optionally cast to float16 first, and write the engine with a "
                    "sidecar JSON recording the TensorRT version, GPU and precision. Needs TensorRT and an "
                    "NVIDIA GPU; the same as python export/build_engine.py.")
    add_arguments(b)
    b.set_defaults(func=run_build)


def run(args: argparse.Namespace) -> int:
    import torch

    from fuller.export.graph import export_model
    from fuller.train.checkpoint import load_checkpoint
    from fuller.train.predict import load_model

    cfg, model = load_model(args.checkpoint, torch.device("cpu"))
    _, payload = load_checkpoint(args.checkpoint, map_location="cpu")
    proto = export_model(model, cfg, args.out, step=payload.get("step"))
    custom = Counter(n.op_type for n in proto.graph.node if n.domain == "fuller")
    standard = len([n for n in proto.graph.node if n.domain in ("", "ai.onnx")])
    print(f"wrote {args.out}: opset {proto.opset_import[0].version}, {standard} standard nodes, "
          + ", ".join(f"{count} fuller::{op}" for op, count in sorted(custom.items())))
    print(f"inputs: {', '.join(i.name for i in proto.graph.input)}")
    print(f"outputs: {', '.join(o.name for o in proto.graph.output)}")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from fuller.export.quantize import quantize

    report = quantize(args.model, args.data, args.out, split=args.split, frames=args.frames, method=args.method,
                      percentile=args.percentile, keep_float=tuple(args.keep_float))
    print(report.table())
    print(f"wrote {report.out}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from fuller.export.build_engine import run as build

    if args.workspace_gib <= 0:
        raise UserInputError(f"--workspace-gib: expected a positive number, got {args.workspace_gib}")
    return build(args, prog="fuller build-engine")
