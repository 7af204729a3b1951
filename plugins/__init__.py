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
        for schema in importlib.import_module(f"{__name__}.{name}.schema").schemas():
            if not defs.has(schema.name, schema.domain):
                defs.register_schema(schema)


def custom_output_types() -> dict[tuple[str, str], tuple[int, ...]]:
    """{(domain, op type): each output's ONNX element type}, from the schemas: a fixed-type output
    (``tensor(int32)``) keeps it, a type-variable one (``T``) is float32, the type the exporter
    writes. The float16 cast declares these, since shape inference knows nothing of custom ops."""
    from onnx import TensorProto, defs

    fixed = {"tensor(int32)": TensorProto.INT32, "tensor(float)": TensorProto.FLOAT}
    return {(schema.domain, schema.name): tuple(fixed.get(out.type_str, TensorProto.FLOAT) for out in schema.outputs)
            for name in OP_PACKAGES for schema in importlib.import_module(f"{__name__}.{name}.schema").schemas()}


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
    # ONNX Runtime's idle intra-op threads spin by default; while a Python kernel runs (NumPy, its
    # BLAS threads) they take the cores from it: on 2 cores the tiny model's frame takes 460 ms
    # spinning and 260 ms without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def prepare_for_onnxruntime(model):
    """The ``onnx.ModelProto`` ONNX Runtime should run: each op package's rewrites for its CPU
    kernels applied in memory (today the sparse layers' fused gather-GEMM); returns (model, number
    of nodes rewritten). The artefact on disk is unchanged."""
    from .sparse_conv.ort_fusion import fuse_gather_gemm

    return fuse_gather_gemm(model)


def prepare_for_tensorrt(model):
    """The ``onnx.ModelProto`` TensorRT's parser should read: each op package's lowering to its
    plugins applied in memory (today each strided ``SparseSites`` as two single-launch plugins,
    ``sparse_conv/trt_plugin.py``); returns (model, number of nodes rewritten). For the engine
    build, after any ONNX checks; the artefact on disk is unchanged."""
    from .sparse_conv.trt_plugin import lower_strided_sites

    return lower_strided_sites(model)


def register_tensorrt_plugins() -> None:
    """Register every op's TensorRT plugin, for an engine build. Needs ``tensorrt`` only: the
    plugins are ahead-of-time, so Triton is imported while TensorRT builds (to compile their PTX),
    and an engine that holds them runs in TensorRT's runtime with no registration, Python, torch or
    Triton."""
    for name in OP_PACKAGES:
        importlib.import_module(f"{__name__}.{name}.trt_plugin").register()
