"""ONNX schema parts every fuller op shares (no op-specific code here)."""
from __future__ import annotations

from onnx import defs


def tensorrt_attributes() -> list[defs.OpSchema.Attribute]:
    """Optional attributes TensorRT's ONNX parser reads to find an op's plugin (the op type is the
    plugin name): its namespace, and whether the plugin has an ahead-of-time implementation.
    Runtimes other than TensorRT ignore them."""
    kinds = defs.OpSchema.AttrType
    return [defs.OpSchema.Attribute("plugin_namespace", kinds.STRING, "TensorRT plugin namespace: fuller",
                                    required=False),
            defs.OpSchema.Attribute("aot", kinds.INT, "1: TensorRT runs the ahead-of-time kernel, 0: the "
                                    "just-in-time one", required=False)]
