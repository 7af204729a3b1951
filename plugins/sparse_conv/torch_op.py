"""``torch.ops.fuller.sparse_sites`` and ``torch.ops.fuller.sparse_rulebook``: the index ops as
PyTorch sees them (SPEC.md), so the exporter can trace the layer composition of SPEC.md and the
TorchScript exporter can turn the two ops into ``fuller::SparseSites`` / ``fuller::SparseRulebook``
nodes. Importing this module registers the ops.

CPU runs the CPU kernels (`rulebook.py`), CUDA the Triton kernels. Integer outputs, so there is
no autograd: training uses spconv's layers, and the exporter folds them into this composition
(`fuller.export.lidar`). The row count of the outputs is data-dependent; the symbolics leave that
dimension unnamed so the graph carries it as dynamic.
"""
from __future__ import annotations

import torch

from .reference import ConvGeometry
from .rulebook import sparse_rulebook as sparse_rulebook_cpu
from .rulebook import sparse_sites as sparse_sites_cpu
from .schema import AOT, DOMAIN, RULEBOOK, SITES


def _geometry(kernel, stride, padding, shape, subm=False, out_capacity=0) -> ConvGeometry:
    return ConvGeometry(tuple(kernel), tuple(stride), tuple(padding), tuple(shape), bool(subm), int(out_capacity))


@torch.library.custom_op("fuller::sparse_sites", mutates_args=())
def sparse_sites(coords: torch.Tensor, count: torch.Tensor, kernel: list[int], stride: list[int],
                 padding: list[int], shape: list[int], subm: bool,
                 out_capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_coords (M, 4) int32, out_count (1,) int32)."""
    geom = _geometry(kernel, stride, padding, shape, subm, out_capacity)
    if coords.device.type != "cpu":
        from .triton_kernel import sparse_sites_triton
        return sparse_sites_triton(coords, count, geom)
    return tuple(torch.from_numpy(o) for o in sparse_sites_cpu(coords.numpy(), count.numpy(), geom))


@sparse_sites.register_fake
def _sparse_sites_fake(coords, count, kernel, stride, padding, shape, subm, out_capacity):
    rows = torch.library.get_ctx().new_dynamic_size(max=int(out_capacity))
    return coords.new_empty((rows, 4)), count.new_empty((1,))


@torch.library.custom_op("fuller::sparse_rulebook", mutates_args=())
def sparse_rulebook(coords: torch.Tensor, count: torch.Tensor, sites: torch.Tensor, kernel: list[int],
                    stride: list[int], padding: list[int], shape: list[int]) -> torch.Tensor:
    """neighbours (M, taps) int32, N where there is no neighbour."""
    geom = _geometry(kernel, stride, padding, shape)
    if coords.device.type != "cpu":
        from .triton_kernel import sparse_rulebook_triton
        return sparse_rulebook_triton(coords, count, sites, geom)
    return torch.from_numpy(sparse_rulebook_cpu(coords.numpy(), count.numpy(), sites.numpy(), geom))


@sparse_rulebook.register_fake
def _sparse_rulebook_fake(coords, count, sites, kernel, stride, padding, shape):
    taps = int(kernel[0]) * int(kernel[1]) * int(kernel[2])
    return sites.new_empty((sites.shape[0], taps))


def register_onnx_symbolic(opset: int) -> None:
    """Teach the TorchScript exporter the ``fuller::SparseSites`` and ``fuller::SparseRulebook`` nodes."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    @symbolic_helper.parse_args("v", "v", "is", "is", "is", "is", "b", "i")
    def sites_symbolic(g, coords, count, kernel, stride, padding, shape, subm, out_capacity):
        attrs = _geometry(kernel, stride, padding, shape, subm, out_capacity).attributes()
        out_coords, out_count = g.op(f"{DOMAIN}::{SITES}", coords, count, **{f"{k}_i": v for k, v in attrs.items()},
                                     plugin_namespace_s=DOMAIN, aot_i=AOT, outputs=2)
        out_coords.setType(coords.type().with_sizes([None, 4]))
        out_count.setType(count.type().with_sizes([1]))
        return out_coords, out_count

    @symbolic_helper.parse_args("v", "v", "v", "is", "is", "is", "is")
    def rulebook_symbolic(g, coords, count, sites, kernel, stride, padding, shape):
        geom = _geometry(kernel, stride, padding, shape)
        neighbours = g.op(f"{DOMAIN}::{RULEBOOK}", coords, count, sites,
                          **{f"{k}_i": v for k, v in geom.attributes(sites=False).items()},
                          plugin_namespace_s=DOMAIN, aot_i=AOT)
        neighbours.setType(sites.type().with_sizes([None, geom.taps]))
        return neighbours

    register_custom_op_symbolic("fuller::sparse_sites", sites_symbolic, opset)
    register_custom_op_symbolic("fuller::sparse_rulebook", rulebook_symbolic, opset)


__all__ = ["sparse_sites", "sparse_rulebook", "register_onnx_symbolic"]
