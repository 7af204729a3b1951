"""``fuller export``: a trained checkpoint -> one ONNX graph with fuller:: custom ops."""
from __future__ import annotations

import argparse
from collections import Counter


def register(subparsers: argparse._SubParsersAction) -> None:
    from fuller.export.paths import DEFAULT_ONNX

    p = subparsers.add_parser(
        "export", help="export a checkpoint to one ONNX graph (fuller::BevPool, fuller::SparseConv3d)",
        description="Trace the trained network from preprocessed tensors (normalised images, BEV-pool geometry, "
                    "voxel list) to boxes, scores, labels and map probabilities; write it with the config in its "
                    "metadata and check it with onnx.checker (custom schemas registered).")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    p.add_argument("--out", default=str(DEFAULT_ONNX), help=f"ONNX file to write (default {DEFAULT_ONNX})")
    p.set_defaults(func=run)


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
