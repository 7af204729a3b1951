"""The ONNX schema of ``fuller::SparseConv3d`` (SPEC.md), so ``onnx.checker`` can fully check graphs
that hold it. Torch-free: the runtime registers it too."""
from __future__ import annotations

from onnx import defs

from ..onnx_common import tensorrt_attributes

DOMAIN, OP_TYPE, VERSION = "fuller", "SparseConv3d", 1
AOT = 0  # several kernel launches per call: a just-in-time plugin (trt_plugin.py)
ATTRIBUTES = {
    **{f"{name}_{a}": f"{name} along {a}" for name in ("kernel", "stride", "padding") for a in "xyz"},
    **{f"shape_{a}": f"input grid cells along {a}" for a in "xyz"},
    "subm": "1: submanifold (output sites = input sites), 0: regular sparse convolution",
    "out_capacity": "rows of the outputs",
}


def schema() -> defs.OpSchema:
    P = defs.OpSchema.FormalParameter
    return defs.OpSchema(
        OP_TYPE, DOMAIN, VERSION,
        doc="Sparse 3-D convolution on a fixed-capacity voxel list plus a count (plugins/sparse_conv/SPEC.md).",
        inputs=[P("features", "T", "(N, Cin) voxel rows"), P("coords", "tensor(int32)", "(N, 4) rows (b, x, y, z)"),
                P("count", "tensor(int32)", "(1,) valid rows"), P("weight", "T", "(Kx, Ky, Kz, Cin, Cout)"),
                P("bias", "T", "(Cout,)")],
        outputs=[P("out_features", "T", "(out_capacity, Cout)"),
                 P("out_coords", "tensor(int32)", "(out_capacity, 4), -1 past out_count"),
                 P("out_count", "tensor(int32)", "(1,)")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32, or float16 accumulated in float32")],
        attributes=[*(defs.OpSchema.Attribute(name, defs.OpSchema.AttrType.INT, text, required=True)
                      for name, text in ATTRIBUTES.items()),
                    *tensorrt_attributes()])

