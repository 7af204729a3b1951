"""ONNX Runtime CPU kernels of ``fuller::SparseSites`` and ``fuller::SparseRulebook`` through
onnxruntime-extensions' Python custom ops: the kernels of `rulebook.py` behind the nodes'
inputs and scalar attributes; and of ``fuller::SparseGatherGemm``, the fused layer that
`ort_fusion.py` puts in place of each layer's Gather + MatMul + Add for ONNX Runtime (float32, the
graph ONNX Runtime runs). Importing this module registers the kernels and compiles their loops
(`cpu_kernels.compile_all`)."""
from __future__ import annotations

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from .cpu_kernels import compile_all, gather_gemm
from .ort_fusion import FUSED
from .reference import ConvGeometry
from .rulebook import sparse_rulebook, sparse_sites
from .schema import DOMAIN, RULEBOOK, RULEBOOK_ATTRIBUTES, SITES, SITES_ATTRIBUTES

_I = PyCustomOpDef.dt_int32


@onnx_op(op_type=f"{DOMAIN}::{SITES}", inputs=[_I, _I], outputs=[_I, _I],
         attrs={name: PyCustomOpDef.dt_int64 for name in SITES_ATTRIBUTES})
def sparse_sites_ort(coords, count, **attrs):
    return sparse_sites(coords, count, ConvGeometry.from_attributes(**attrs))


@onnx_op(op_type=f"{DOMAIN}::{RULEBOOK}", inputs=[_I, _I, _I], outputs=[_I],
         attrs={name: PyCustomOpDef.dt_int64 for name in RULEBOOK_ATTRIBUTES})
def sparse_rulebook_ort(coords, count, sites, **attrs):
    return sparse_rulebook(coords, count, sites, ConvGeometry.from_attributes(**attrs))


@onnx_op(op_type=f"{DOMAIN}::{FUSED}", inputs=[PyCustomOpDef.dt_float, _I, PyCustomOpDef.dt_float,
                                              PyCustomOpDef.dt_float], outputs=[PyCustomOpDef.dt_float])
def sparse_gather_gemm_ort(features, neighbours, weight, bias):
    return gather_gemm(*(np.ascontiguousarray(a) for a in (features, neighbours, weight, bias)))


compile_all()
