"""The ONNX schema of ``fuller::BevPool`` (SPEC.md), so ``onnx.checker`` can fully check graphs that
hold it. Torch-free: the runtime registers it too."""
from __future__ import annotations

from onnx import defs

from ..onnx_common import tensorrt_attributes
from .reference import RANK_NAMES

DOMAIN, OP_TYPE, VERSION = "fuller", "BevPool", 1
AOT = 1  # TensorRT runs the ahead-of-time Triton kernel (trt_plugin.py)
ATTRIBUTES = {"batch_size": "B of the output (B, C, X, Y)", "grid_x": "X, BEV cells along x",
              "grid_y": "Y, BEV cells along y"}


def schemas() -> list[defs.OpSchema]:
    P = defs.OpSchema.FormalParameter
    return [defs.OpSchema(
        OP_TYPE, DOMAIN, VERSION,
        doc="LSS BEV pooling with precomputed ranks and intervals (plugins/bev_pool/SPEC.md).",
        inputs=[P("depth", "T", "(BN, D, h, w)"), P("feat", "T", "(BN, h, w, C) channels last"),
                *(P(name, "tensor(int32)", "(P,) or (I,)") for name in RANK_NAMES)],
        outputs=[P("out", "T", "(B, C, X, Y)")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32, or float16 accumulated in float32")],
        attributes=[*(defs.OpSchema.Attribute(name, defs.OpSchema.AttrType.INT, text, required=True)
                      for name, text in ATTRIBUTES.items()),
                    *tensorrt_attributes()])]

