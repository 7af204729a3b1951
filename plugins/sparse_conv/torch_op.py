"""``torch.ops.fuller.sparse_conv3d``: the op as PyTorch sees it (SPEC.md), for export and for
running the exported network's layout in PyTorch. Importing this module registers the op.

CPU runs the NumPy kernel (`rulebook.py`), CUDA the Triton kernel. There is no autograd: training
uses spconv's layers, and the exporter folds them into this op (`fuller.export.lidar`).
`register_onnx_symbolic` maps the op to the ``fuller::SparseConv3d`` node for the TorchScript
exporter, with the per-axis scalar attributes of the schema.
"""
from __future__ import annotations

import torch

from .reference import AXES, ConvGeometry
from .rulebook import sparse_conv3d as sparse_conv3d_numpy
from .schema import AOT, DOMAIN, OP_TYPE


def _geometry(kernel, stride, padding, shape, subm, out_capacity) -> ConvGeometry:
    return ConvGeometry(tuple(kernel), tuple(stride), tuple(padding), tuple(shape), bool(subm), int(out_capacity))


@torch.library.custom_op("fuller::sparse_conv3d", mutates_args=())
def sparse_conv3d(features: torch.Tensor, coords: torch.Tensor, count: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], shape: list[int],
                  subm: bool, out_capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out_features (out_capacity, Cout), out_coords (out_capacity, 4) int32, out_count (1,) int32)."""
    geom = _geometry(kernel, stride, padding, shape, subm, out_capacity)
    if features.device.type != "cpu":
        from .triton_kernel import sparse_conv3d_triton
        return sparse_conv3d_triton(features, coords, count, weight, bias, geom)
    out = sparse_conv3d_numpy(features.detach().numpy(), coords.numpy(), count.numpy(), weight.detach().numpy(),
                              bias.detach().numpy(), geom)
    return tuple(torch.from_numpy(o) for o in out)


@sparse_conv3d.register_fake
def _sparse_conv3d_fake(features, coords, count, weight, bias, kernel, stride, padding, shape, subm, out_capacity):
    cap = int(out_capacity)
    return (features.new_empty((cap, weight.shape[-1])), coords.new_empty((cap, 4)), count.new_empty((1,)))


def register_onnx_symbolic(opset: int) -> None:
    """Teach the TorchScript exporter the ``fuller::SparseConv3d`` node."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "is", "is", "is", "is", "b", "i")
    def symbolic(g, features, coords, count, weight, bias, kernel, stride, padding, shape, subm, out_capacity):
        attrs = _geometry(kernel, stride, padding, shape, subm, out_capacity).attributes()
        outs = g.op(f"{DOMAIN}::{OP_TYPE}", features, coords, count, weight, bias,
                    **{f"{k}_i": v for k, v in attrs.items()}, plugin_namespace_s=DOMAIN, aot_i=AOT, outputs=3)
        cout = symbolic_helper._get_tensor_sizes(weight)[-1]
        outs[0].setType(features.type().with_sizes([out_capacity, cout]))
        outs[1].setType(coords.type().with_sizes([out_capacity, 4]))
        outs[2].setType(count.type().with_sizes([1]))
        return outs

    register_custom_op_symbolic("fuller::sparse_conv3d", symbolic, opset)


__all__ = ["sparse_conv3d", "register_onnx_symbolic", "AXES"]
