"""The trained spconv encoder as index ops plus standard ONNX (plugins/sparse_conv/SPEC.md).

Each spconv block (conv, BatchNorm, ReLU) becomes a Gather of each site's neighbourhood, one MatMul
with the filter that has the BatchNorm folded in (eval statistics), an Add of the folded bias and a
Relu; only the sites and the rulebook are custom nodes (``fuller::SparseSites``,
``fuller::SparseRulebook``). Sparse tensors hold only valid rows, a data-dependent count; each
strided layer's sites are bounded by the capacity that can never overflow (`rulebook.capacity`),
so the exported encoder drops nothing that spconv keeps. The final scatter into the dense BEV is
standard ONNX (ScatterND), so it needs no plugin.
"""
from __future__ import annotations

import spconv.pytorch as spconv
import torch
from torch import nn

import fuller.plugins.sparse_conv.torch_op  # noqa: F401  (registers torch.ops.fuller.sparse_sites / sparse_rulebook)
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
                          "folded into the exported filter; export supports models trained with model.norm=bn")
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight.permute(1, 2, 3, 4, 0) * scale  # spconv (out, kx, ky, kz, in) -> (kx, ky, kz, in, out)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv, weight.detach().contiguous(), bias.detach()


class ExportSparseEncoder(nn.Module):
    """(voxel_features (V, 5), voxel_coords (V, 4) int32 sorted by key, voxel_count (1,) int32) ->
    (1, C, nx, ny), each layer as plugins/sparse_conv/SPEC.md composes it: index ops for the sites
    and the rulebook, standard Gather + MatMul + Add + Relu for the convolution.

    The padded voxel list is compacted by the first level's ``SparseSites`` (subm), so every later
    tensor holds only valid rows. A rulebook depends on the input sites, the output sites and the
    kernel geometry; layers that share all three (spconv's ``indice_key``: a stage's submanifold
    layers) share one. The first layer reads the padded list, so its rulebook is the level's own."""

    def __init__(self, encoder: SparseEncoder, max_voxels: int) -> None:
        super().__init__()
        self.geometries: list[ConvGeometry] = []
        self.in_channels: list[int] = []  # Python ints, so the zero rows trace as constants
        shape, rows = tuple(encoder.sparse_shape), int(max_voxels)
        for i, block in enumerate(_blocks(encoder)):
            conv, weight, bias = _fold(block)
            subm = isinstance(conv, spconv.SubMConv3d)
            geom = ConvGeometry(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), shape, subm, rows)
            geom = ConvGeometry(geom.kernel, geom.stride, geom.padding, shape, subm, capacity(rows, geom, 1))
            self.geometries.append(geom)
            self.register_buffer(f"weight{i}", weight.reshape(geom.taps * weight.shape[3], weight.shape[4]))
            self.register_buffer(f"bias{i}", bias)
            self.in_channels.append(int(weight.shape[3]))
            shape, rows = geom.out_shape, geom.out_capacity
        self.out_shape = shape  # (nx, ny, nz) of the last layer
        self.bev_window = encoder.bev_window

    @property
    def capacities(self) -> list[int]:
        return [g.out_capacity for g in self.geometries]

    def forward(self, features: torch.Tensor, coords: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        rulebooks: dict[tuple, torch.Tensor] = {}
        level = 0  # which site list ``coords`` is: 0 the padded input, then one per new list of sites
        for i, g in enumerate(self.geometries):
            attrs = (list(g.kernel), list(g.stride), list(g.padding), list(g.shape))
            if g.subm and level > 0:
                sites, sites_count, out_level = coords, count, level
            else:
                sites, sites_count = torch.ops.fuller.sparse_sites(coords, count, *attrs, g.subm, g.out_capacity)
                out_level = level + 1
            key = (level, out_level, g.kernel, g.stride, g.padding)
            if key not in rulebooks:
                rulebooks[key] = torch.ops.fuller.sparse_rulebook(coords, count, sites, *attrs)
            features = self._conv(features, rulebooks[key], getattr(self, f"weight{i}"), getattr(self, f"bias{i}"),
                                  self.in_channels[i])
            coords, count, level = sites, sites_count, out_level
        return self._to_bev(features, coords)

    @staticmethod
    def _conv(features: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              in_channels: int) -> torch.Tensor:
        """Each site's neighbourhood (row N, a zero row, where a tap has no neighbour) times the
        (taps * Cin, Cout) filter: one GEMM per layer."""
        rows = torch.cat([features, features.new_zeros(1, in_channels)])
        gathered = torch.index_select(rows, 0, neighbours.reshape(-1)).reshape(-1, weight.shape[0])
        return torch.relu(gathered @ weight + bias)

    def _to_bev(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Rows (b = 0, ix, iy, iz), all valid, into (1, C * nz, nx, ny), channel ``c * nz + z`` as in training."""
        nx, ny, nz = self.out_shape
        c = features.shape[1]
        index = (coords[:, 3] * (nx * ny) + coords[:, 1] * ny + coords[:, 2]).long()
        dense = features.new_zeros(nz * nx * ny, c).index_put((index,), features)
        bev = dense.reshape(nz, nx, ny, c).permute(3, 0, 1, 2).reshape(1, c * nz, nx, ny)
        return bev[..., self.bev_window[0], self.bev_window[1]]
