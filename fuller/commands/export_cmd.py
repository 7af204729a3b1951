"""``fuller export`` (a trained checkpoint -> one ONNX graph with fuller:: custom ops) and ``fuller
build-engine`` (that graph -> a TensorRT engine, the same front end as ``python
export/build_engine.py``)."""
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


def run_build(args: argparse.Namespace) -> int:
    from fuller.export.build_engine import run as build

    if args.workspace_gib <= 0:
        raise UserInputError(f"--workspace-gib: expected a positive number, got {args.workspace_gib}")
    return build(args, prog="fuller build-engine")
