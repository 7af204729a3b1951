"""Camera branch: ResNet + FPN at stride 8, LSS depth net, BEV pooling, downsample conv.

As BEVFusion's LSSTransform: a 1x1 conv predicts, per feature pixel, a softmax over D depth bins
and C context channels; ``fuller::bev_pool`` sums depth x context into the camera BEV grid without
materialising their outer product. The pooling geometry (which frustum point lands in which BEV
cell) depends only on the calibration, so it is computed outside the network
(`fuller.bev_pool_geometry`, cached per calibration) and passed in as index tensors: the same
inputs the exported graph takes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

import fuller.plugins.bev_pool.torch_op  # noqa: F401  (registers torch.ops.fuller.bev_pool)
from fuller.config import FullerConfig, camera_bev_stride

from .fpn import FPN
from .norm import norm2d
from .resnet import ResNet, load_torchvision_weights



class PoolGeometry(NamedTuple):
    """`fuller.bev_pool_geometry.BEVPoolGeometry` of a batch, as int64 tensors."""

    ranks_depth: torch.Tensor
    ranks_feat: torch.Tensor
    ranks_bev: torch.Tensor
    interval_starts: torch.Tensor
    interval_lengths: torch.Tensor

    @classmethod
    def from_numpy(cls, geometry) -> "PoolGeometry":
        return cls(*(torch.from_numpy(getattr(geometry, f)) for f in cls._fields))

    def to(self, device: torch.device) -> "PoolGeometry":
        return PoolGeometry(*(t.to(device, non_blocking=True) for t in self))


def conv_norm_relu(cin: int, cout: int, norm: str, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm2d(norm, cout), nn.ReLU(inplace=True)]


class CameraEncoder(nn.Module):
    """(B, N, 3, H, W) normalised images + pooling geometry -> (B, C, X, Y) on the detection grid."""

    def __init__(self, cfg: FullerConfig) -> None:
        super().__init__()
        m, g = cfg.model, cfg.geometry
        self.backbone = ResNet(m.backbone_depth, m.backbone_width, m.norm)
        if m.backbone_weights:
            load_torchvision_weights(self.backbone, m.backbone_weights)
        self.neck = FPN(self.backbone.out_channels, m.fpn_channels, m.norm)
        self.num_depth_bins = g.num_depth_bins
        self.out_channels = m.camera_channels
        self.depthnet = nn.Conv2d(m.fpn_channels, self.num_depth_bins + m.camera_channels, 1)
        self.downsample = nn.Sequential(
            *conv_norm_relu(m.camera_channels, m.camera_channels, m.norm, stride=camera_bev_stride(cfg)),
            *conv_norm_relu(m.camera_channels, m.camera_channels, m.norm))
        self.bev_shape = list(g.camera_bev.shape)

    def forward(self, images: torch.Tensor, geometry: PoolGeometry) -> torch.Tensor:
        b, n = images.shape[:2]
        features = self.neck(self.backbone(images.flatten(0, 1)))
        x = self.depthnet(features)
        depth = x[:, : self.num_depth_bins].softmax(dim=1)
        context = x[:, self.num_depth_bins:].permute(0, 2, 3, 1).contiguous()
        bev = torch.ops.fuller.bev_pool(depth, context, *geometry, [int(b), *self.bev_shape])
        return self.downsample(bev)
