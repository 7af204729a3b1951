"""ONNX Runtime CPU kernel of ``fuller::BevPool`` through onnxruntime-extensions' Python custom ops:
`numpy_kernel.bev_pool_numpy` behind the node's inputs and scalar attributes. float32 only (the
float16 graph is TensorRT's). Importing this module registers the kernel."""
from __future__ import annotations

from onnxruntime_extensions import PyCustomOpDef, onnx_op

from .numpy_kernel import bev_pool_numpy
from .schema import ATTRIBUTES, DOMAIN, OP_TYPE

_F, _I = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32


@onnx_op(op_type=f"{DOMAIN}::{OP_TYPE}", inputs=[_F, _F, _I, _I, _I, _I, _I], outputs=[_F],
         attrs={name: PyCustomOpDef.dt_int64 for name in ATTRIBUTES})
def bev_pool_ort(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                 batch_size, grid_x, grid_y):
    return bev_pool_numpy(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                          (batch_size, grid_x, grid_y))
