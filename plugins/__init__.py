"""Custom ops, one folder each: spec, reference, torch op, ONNX Runtime kernel, GPU kernel, TensorRT plugin.

This module is the one place that knows the list of ops: it registers their ONNX schemas (for
``onnx.checker``), their ONNX Runtime kernels and their TensorRT plugins, for whichever caller
(export, engine build, runtime) needs them. It needs onnx/onnxruntime-extensions, not torch.
"""
from __future__ import annotations

import importlib

import numpy as np

OP_PACKAGES = ("bev_pool", "sparse_conv")
DOMAIN = "fuller"


def register_onnx_schemas() -> None:
    """Register every op's ``onnx.defs.OpSchema`` once per process."""
    from onnx import defs

    for name in OP_PACKAGES:
        module = importlib.import_module(f"{__name__}.{name}.schema")
        if not defs.has(module.OP_TYPE, module.DOMAIN):
            defs.register_schema(module.schema())


def _return_arrays(kernel_id, feed, attributes):
    """onnxruntime-extensions' Python-op invocation hook, returning each output as a flat NumPy
    array where the stock hook returns ``array.flatten().tolist()``. The native side takes either;
    the lists cost 1.4 s per frame for the sparse layers' (capacity, C) outputs of the tiny model,
    the arrays almost nothing."""
    from onnxruntime_extensions._ocos import Opdef

    op = Opdef._odlist[kernel_id]
    result = op.body(*feed, **op.cast_attributes(attributes))
    flat = []
    for array in result if isinstance(result, tuple) else (result,):
        flat += [array.shape, np.ascontiguousarray(array).ravel()]
    return (kernel_id, *flat)


def ort_session_options():
    """``onnxruntime.SessionOptions`` with every op's CPU kernel registered (onnxruntime-extensions)."""
    import onnxruntime
    from onnxruntime_extensions import PyCustomOpDef, get_library_path

    PyCustomOpDef.install_hooker(_return_arrays)
    for name in OP_PACKAGES:
        importlib.import_module(f"{__name__}.{name}.ort_kernel")
    options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options


def register_tensorrt_plugins() -> None:
    """Register every op's TensorRT plugin (engine build and runtime). Their kernels need Triton: at
    build time for BevPool's ahead-of-time PTX, at run time for SparseConv3d's just-in-time launches."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise ImportError("the fuller plugins' GPU kernels need Triton: pip install triton") from exc
    for name in OP_PACKAGES:
        importlib.import_module(f"{__name__}.{name}.trt_plugin").register()
