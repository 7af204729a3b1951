"""Fusion and the shared BEV decoder: ConvFuser, SECOND, SECONDFPN (as in BEVFusion).

The decoder's output is the shared representation z where FULLER calibrates the task gradients;
the fuser's inputs are where it balances the camera and LiDAR gradients.
"""
from __future__ import annotations

import torch
from torch import nn

from .norm import norm2d


class ConvFuser(nn.Module):
    """concat(camera BEV, LiDAR BEV) -> conv3x3 + norm + ReLU; with one modality, its BEV alone."""

    def __init__(self, in_channels: list[int], out_channels: int, norm: str) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(sum(in_channels), out_channels, 3, 1, 1, bias=False),
                                  norm2d(norm, out_channels), nn.ReLU(inplace=True))

    def forward(self, bevs: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat(bevs, dim=1))


class SECOND(nn.Module):
    """Levels of conv3x3 blocks; each level after the first halves the resolution."""

    def __init__(self, in_channels: int, channels: list[int], layers: list[int], norm: str) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        cin = in_channels
        for i, (c, n) in enumerate(zip(channels, layers)):
            stride = 1 if i == 0 else 2
            block = [nn.Conv2d(cin, c, 3, stride, 1, bias=False), norm2d(norm, c), nn.ReLU(inplace=True)]
            for _ in range(n):
                block += [nn.Conv2d(c, c, 3, 1, 1, bias=False), norm2d(norm, c), nn.ReLU(inplace=True)]
            self.levels.append(nn.Sequential(*block))
            cin = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for level in self.levels:
            x = level(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    """Brings every SECOND level back to the first level's resolution and concatenates them."""

    def __init__(self, channels: list[int], out_channels: int, norm: str) -> None:
        super().__init__()
        per_level = out_channels // len(channels)
        self.ups = nn.ModuleList()
        for i, c in enumerate(channels):
            up = (nn.ConvTranspose2d(c, per_level, 2**i, 2**i, bias=False) if i > 0
                  else nn.Conv2d(c, per_level, 1, bias=False))
            self.ups.append(nn.Sequential(up, norm2d(norm, per_level), nn.ReLU(inplace=True)))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([up(x) for up, x in zip(self.ups, levels)], dim=1)
