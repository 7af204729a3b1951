"""SECOND-style sparse 3D encoder: voxel features -> height-collapsed LiDAR BEV (BEVFusion's
``SparseEncoder``), on spconv.

Layout, for ``model.lidar_channels = [c0, ..., c_{S-1}]``:

* input: SubMConv3d(5 point features -> c0, kernel 3) + norm + ReLU;
* stage i: for i > 0 first a SparseConv3d(c_{i-1} -> c_i, kernel 3) + norm + ReLU that halves z
  and halves x/y only while the x/y stride so far is below ``lidar_stride(cfg)`` (voxel size ->
  detection grid), then 2 x [SubMConv3d(c_i -> c_i, kernel 3) + norm + ReLU];
* output: SparseConv3d(c_{S-1} -> lidar_out_channels, kernel (1, 1, 3), stride (1, 1, 2)) + norm +
  ReLU, made dense with z folded into channels: channel ``c * nz_out + z``.

Padding is 1 on x/y. On z each stride-2 conv takes the least padding with which its windows still
cover every input cell: 0 for an odd count >= 3, else 1. So no z slice is ever dropped, and the
packaged configs end with 2 z cells (tiny 17 -> 8 -> 4 -> 2; base 41 -> 20 -> 10 -> 5 -> 2), as
BEVFusion's 41 -> 21 -> 11 -> 5 -> 2 does.

Axes: spconv treats its three spatial dims as opaque, so we give it our own order throughout:
indices (batch, ix, iy, iz), ``spatial_shape = geometry.sparse_shape`` (nx, ny, nz + 1), kernels and
strides written (x, y, z), filters laid out (out, kx, ky, kz, in) by spconv. The output voxels
(b, ix, iy, iz) are scattered into a dense (B, C, nz, nx, ny) and z folded into channels, so the
output is indexed [..., ix, iy] like every BEV tensor of the project, with no axis reordering
anywhere; tests/test_lidar_encoder.py checks all of this against dense ``conv3d``. The SubM layers
of a stage share an ``indice_key``, so their neighbour tables are computed once per forward.
"""
from __future__ import annotations

import math

import spconv.pytorch as spconv
import torch
from torch import nn

from fuller.config import ConfigError, FullerConfig, lidar_stride

from . import spconv_compat  # noqa: F401  (fixes spconv's CPU package: backward, scatter race)
from .norm import norm1d

POINT_FEATURES = 5  # x, y, z, intensity, dt: the voxel feature width (fuller.voxelize means them)
SUBM_PER_STAGE = 2


def _down_size(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def _z_padding(nz: int) -> int:
    """Least padding for kernel 3 / stride 2 windows to cover all ``nz`` cells (module docstring)."""
    return 0 if nz >= 3 and nz % 2 else 1


def _block(conv: spconv.SparseModule, norm: str, channels: int) -> spconv.SparseSequential:
    return spconv.SparseSequential(conv, norm1d(norm, channels), nn.ReLU(inplace=True))


class SparseEncoder(nn.Module):
    """Voxels of a batch -> LiDAR BEV (B, out_channels, nx_det, ny_det), indexed [ix, iy].

    ``out_channels`` is ``lidar_out_channels`` times the z cells left after the downsampling,
    computed from the geometry (2 for both packaged configs, as in BEVFusion).
    """

    def __init__(self, cfg: FullerConfig):
        super().__init__()
        g, m = cfg.geometry, cfg.model
        channels = list(m.lidar_channels)
        self.sparse_shape = tuple(g.sparse_shape)
        xy_downs = round(math.log2(lidar_stride(cfg)))

        self.conv_input = _block(
            spconv.SubMConv3d(POINT_FEATURES, channels[0], 3, padding=1, bias=False, indice_key="subm0"),
            m.norm, channels[0])
        nx, ny, nz = self.sparse_shape
        self.strides: list[tuple[int, int, int]] = []
        stages = []
        for i, c in enumerate(channels):
            layers = []
            if i > 0:
                s = 2 if i <= xy_downs else 1
                stride, padding = (s, s, 2), (1, 1, _z_padding(nz))
                self.strides.append(stride)
                layers.append(_block(spconv.SparseConv3d(channels[i - 1], c, 3, stride=stride, padding=padding,
                                                         bias=False, indice_key=f"down{i}"), m.norm, c))
                nx, ny, nz = (_down_size(n, 3, st, p) for n, st, p in zip((nx, ny, nz), stride, padding))
            layers += [_block(spconv.SubMConv3d(c, c, 3, padding=1, bias=False, indice_key=f"subm{i}"), m.norm, c)
                       for _ in range(SUBM_PER_STAGE)]
            stages.append(spconv.SparseSequential(*layers))
        self.stages = nn.ModuleList(stages)

        pz = _z_padding(nz)
        self.conv_out = _block(spconv.SparseConv3d(channels[-1], m.lidar_out_channels, (1, 1, 3), stride=(1, 1, 2),
                                                   padding=(0, 0, pz), bias=False, indice_key="out"), m.norm,
                               m.lidar_out_channels)
        self.nz_out = _down_size(nz, 3, 2, pz)
        self.out_channels = m.lidar_out_channels * self.nz_out
        self.bev_window = self._det_window(cfg, (nx, ny))

    @staticmethod
    def _det_window(cfg: FullerConfig, out_xy: tuple[int, int]) -> tuple[slice, slice]:
        """Slices of the encoder's x/y output that are the detection grid (all of it when the grid
        spans point_cloud_range, as in the packaged configs); a ConfigError if cells do not align."""
        g = cfg.geometry
        det = g.det_grid
        window = []
        for axis, lo, n_det, n_out in (("x", det.x_range[0], det.shape[0], out_xy[0]),
                                       ("y", det.y_range[0], det.shape[1], out_xy[1])):
            offset = (lo - g.point_cloud_range["xy".index(axis)]) / det.resolution
            start = round(offset)
            if abs(offset - start) > 1e-6 or start + n_det > n_out:
                raise ConfigError(f"geometry.det_grid.{axis}_range",
                                  f"cells aligned with the LiDAR encoder's {n_out} output cells of "
                                  f"{det.resolution:g} m from point_cloud_range {axis}min",
                                  f"an offset of {offset:g} cells and {n_det} cells")
            window.append(slice(start, start + n_det))
        return window[0], window[1]

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        """features (V, 5) float, coords (V, 4) int32 rows (batch, ix, iy, iz) -> (B, C, nx, ny) float32.

        Mixed precision: the encoder runs in float32 with autocast off. spconv's functions are
        ``custom_fwd(cast_inputs=torch.float16)``, so under any CUDA autocast (bfloat16 included) they
        would run in float16, whose gradients underflow without a loss scaler, and the trainer's
        bfloat16 autocast has none. The BEV it returns is cast by autocast at the fuser's conv."""
        self._check_inputs(features, coords, batch_size)
        nx, ny = (w.stop - w.start for w in self.bev_window)
        if len(coords) == 0:
            # spconv cannot convolve an empty set (it asserts on the empty pair table). The BEV is all
            # zeros; the zero-weighted parameter sum keeps every parameter in the graph, so data-parallel
            # ranks still all-reduce a (zero) gradient for each of them.
            anchor = sum(p.sum() for p in self.parameters()) * 0.0
            return features.new_zeros(batch_size, self.out_channels, nx, ny) + anchor
        with torch.autocast(features.device.type, enabled=False):
            x = spconv.SparseConvTensor(features.float(), coords, list(self.sparse_shape), batch_size)
            x = self.conv_input(x)
            for stage in self.stages:
                x = stage(x)
            return self._to_bev(self.conv_out(x), batch_size)

    def _to_bev(self, x: spconv.SparseConvTensor, batch_size: int) -> torch.Tensor:
        """Scatter the output voxels straight into (B, C, nz_out, nx, ny) and fold z into channels
        (``c * nz_out + z``), then keep the detection window. Written out rather than spconv's
        ``.dense()``, which indexes with a list of tensors (deprecated by torch) and copies once more
        for its channels-first permute."""
        c = x.features.shape[1]
        nx, ny, nz = x.spatial_shape
        bev = x.features.new_zeros(batch_size, c, nz, nx, ny)
        b, ix, iy, iz = x.indices.long().unbind(1)
        bev[b, :, iz, ix, iy] = x.features
        return bev.reshape(batch_size, c * nz, nx, ny)[..., self.bev_window[0], self.bev_window[1]]

    def _check_inputs(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> None:
        if features.dim() != 2 or features.shape[1] != POINT_FEATURES:
            raise ValueError(f"features: expected (V, {POINT_FEATURES}) voxel features, got {tuple(features.shape)}")
        if coords.shape != (features.shape[0], 4) or coords.dtype != torch.int32:
            raise ValueError(f"coords: expected ({features.shape[0]}, 4) int32 (batch, ix, iy, iz), "
                             f"got {tuple(coords.shape)} {coords.dtype}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
        if len(coords):  # out-of-range indices would make spconv read and write out of bounds
            upper = torch.tensor((batch_size, *self.sparse_shape), device=coords.device)
            if bool(((coords < 0) | (coords >= upper)).any()):
                lo, hi = coords.amin(0).tolist(), coords.amax(0).tolist()
                raise ValueError(f"coords: expected 0 <= (batch, ix, iy, iz) < {tuple(upper.tolist())}, "
                                 f"got min {tuple(lo)} max {tuple(hi)}")
