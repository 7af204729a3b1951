"""The ONNX schemas of ``fuller::SparseSites`` and ``fuller::SparseRulebook`` (SPEC.md), so
``onnx.checker`` can fully check graphs that hold them. Torch-free: the runtime registers them too."""
from __future__ import annotations

from onnx import defs

from ..onnx_common import tensorrt_attributes
from .reference import AXES

DOMAIN, VERSION = "fuller", 1
SITES, RULEBOOK = "SparseSites", "SparseRulebook"
AOT = 1  # TensorRT runs the ahead-of-time Triton kernels (trt_plugin.py)
RULEBOOK_ATTRIBUTES = {
    **{f"{name}_{a}": f"{name} along {a}" for name in ("kernel", "stride", "padding") for a in AXES},
    **{f"shape_{a}": f"input grid cells along {a}" for a in AXES},
}
SITES_ATTRIBUTES = {
    **RULEBOOK_ATTRIBUTES,
    "subm": "1: the valid input rows (compaction), 0: the sites of a strided convolution",
    "out_capacity": "upper bound of the output rows",
}


def _int_attributes(attributes: dict[str, str]) -> list[defs.OpSchema.Attribute]:
    return [defs.OpSchema.Attribute(name, defs.OpSchema.AttrType.INT, text, required=True)
            for name, text in attributes.items()]


def schemas() -> list[defs.OpSchema]:
    P = defs.OpSchema.FormalParameter
    coords = P("coords", "tensor(int32)", "(N, 4) rows (b, x, y, z), sorted by key; rows >= count ignored")
    count = P("count", "tensor(int32)", "(1,) valid rows")
    return [
        defs.OpSchema(
            SITES, DOMAIN, VERSION,
            doc="Output sites of a sparse convolution layer, by key (plugins/sparse_conv/SPEC.md).",
            inputs=[coords, count],
            outputs=[P("out_coords", "tensor(int32)", "(M, 4), M data-dependent <= out_capacity"),
                     P("out_count", "tensor(int32)", "(1,) M")],
            attributes=[*_int_attributes(SITES_ATTRIBUTES), *tensorrt_attributes()]),
        defs.OpSchema(
            RULEBOOK, DOMAIN, VERSION,
            doc="Per output site and tap, the input row or N (plugins/sparse_conv/SPEC.md).",
            inputs=[coords, count, P("sites", "tensor(int32)", "(M, 4) output sites")],
            outputs=[P("neighbours", "tensor(int32)", "(M, Kx * Ky * Kz), N where there is no neighbour")],
            attributes=[*_int_attributes(RULEBOOK_ATTRIBUTES), *tensorrt_attributes()]),
    ]
