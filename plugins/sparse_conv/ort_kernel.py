"""ONNX Runtime CPU kernel of ``fuller::SparseConv3d`` through onnxruntime-extensions' Python custom
ops: the NumPy kernel of `rulebook.py` behind the node's inputs and scalar attributes. float32 only
(the float16 graph is TensorRT's). Importing this module registers the kernel."""
from __future__ import annotations

from onnxruntime_extensions import PyCustomOpDef, onnx_op

from .reference import ConvGeometry
from .rulebook import sparse_conv3d
from .schema import ATTRIBUTES, DOMAIN, OP_TYPE

_F, _I = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32


@onnx_op(op_type=f"{DOMAIN}::{OP_TYPE}", inputs=[_F, _I, _I, _F, _F], outputs=[_F, _I, _I],
         attrs={name: PyCustomOpDef.dt_int64 for name in ATTRIBUTES})
def sparse_conv3d_ort(features, coords, count, weight, bias, **attrs):
    return sparse_conv3d(features, coords, count, weight, bias, ConvGeometry.from_attributes(**attrs))
