"""The trained spconv encoder as a chain of ``fuller::SparseConv3d`` nodes.

Each spconv block (conv, BatchNorm, ReLU) becomes one op with the BatchNorm folded into the filter
and bias (eval statistics), followed by a standard Relu. Sparse tensors are fixed-capacity row
lists with a count; each strided layer gets the capacity that can never overflow
(`rulebook.capacity`), so the exported encoder drops nothing that spconv keeps. The final scatter
into the dense BEV is standard ONNX (ScatterND into a grid with one spare row that takes the
padding rows), so it needs no plugin.
"""
from __future__ import annotations

import spconv.pytorch as spconv
import torch
from torch import nn

import fuller.plugins.sparse_conv.torch_op  # noqa: F401  (registers torch.ops.fuller.sparse_conv3d)
from fuller.errors import UserInputError
from fuller.plugins.sparse_conv.reference import ConvGeometry
from fuller.plugins.sparse_conv.rulebook import capacity
from fuller.train.model.lidar_encoder import SparseEncoder


class ExportError(UserInputError):
    """A model that cannot be exported as asked; the message says why and what to change."""


def _blocks(encoder: SparseEncoder) -> list[spconv.SparseSequential]:
    blocks = [encoder.conv_input]
    for stage in encoder.stages:
        blocks.extend(stage)
    return [*blocks, encoder.conv_out]


def _fold(block: spconv.SparseSequential) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(conv, weight (Kx, Ky, Kz, Cin, Cout), bias (Cout,)) with the BatchNorm folded in."""
    conv, norm = block[0], block[1]
    if not isinstance(norm, nn.BatchNorm1d):
        raise ExportError(f"LiDAR encoder: {type(norm).__name__} normalises over a sample's voxels and cannot be "
                          "folded into fuller::SparseConv3d; export supports models trained with model.norm=bn")
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight.permute(1, 2, 3, 4, 0) * scale  # spconv (out, kx, ky, kz, in) -> (kx, ky, kz, in, out)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv, weight.detach().contiguous(), bias.detach()


class ExportSparseEncoder(nn.Module):
    """(voxel_features (V, 5), voxel_coords (V, 4) int32, voxel_count (1,) int32) -> (1, C, nx, ny)."""

    def __init__(self, encoder: SparseEncoder, max_voxels: int) -> None:
        super().__init__()
        self.geometries: list[ConvGeometry] = []
        shape, rows = tuple(encoder.sparse_shape), int(max_voxels)
        for i, block in enumerate(_blocks(encoder)):
            conv, weight, bias = _fold(block)
            subm = isinstance(conv, spconv.SubMConv3d)
            geom = ConvGeometry(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), shape, subm, rows)
            geom = ConvGeometry(geom.kernel, geom.stride, geom.padding, shape, subm, capacity(rows, geom, 1))
            self.geometries.append(geom)
            self.register_buffer(f"weight{i}", weight)
            self.register_buffer(f"bias{i}", bias)
            shape, rows = geom.out_shape, geom.out_capacity
        self.out_shape = shape  # (nx, ny, nz) of the last layer
        self.bev_window = encoder.bev_window

    @property
    def capacities(self) -> list[int]:
        return [g.out_capacity for g in self.geometries]

    def forward(self, features: torch.Tensor, coords: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        for i, g in enumerate(self.geometries):
            features, coords, count = torch.ops.fuller.sparse_conv3d(
                features, coords, count, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"),
                list(g.kernel), list(g.stride), list(g.padding), list(g.shape), g.subm, g.out_capacity)
            features = torch.relu(features)
        return self._to_bev(features, coords, count)

    def _to_bev(self, features: torch.Tensor, coords: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Rows (b = 0, ix, iy, iz) into (1, C * nz, nx, ny), channel ``c * nz + z`` as in training."""
        nx, ny, nz = self.out_shape
        rows, c = features.shape
        cells = nz * nx * ny
        valid = torch.arange(rows, dtype=torch.int32) < count
        index = coords[:, 3] * (nx * ny) + coords[:, 1] * ny + coords[:, 2]
        index = torch.where(valid, index, torch.full_like(index, cells)).long()
        dense = features.new_zeros(cells + 1, c).index_put((index,), features)
        bev = dense[:cells].reshape(nz, nx, ny, c).permute(3, 0, 1, 2).reshape(1, c * nz, nx, ny)
        return bev[..., self.bev_window[0], self.bev_window[1]]
