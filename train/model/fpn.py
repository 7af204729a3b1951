"""Feature pyramid neck that returns the single stride-8 map the LSS view transform lifts.

Top-down pathway as in FPN (lateral 1x1 convs, nearest upsampling, sum), one 3x3 output conv at
the finest level: coarser outputs would not be used, so they are not computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import norm2d


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int, norm: str = "bn") -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
                                    norm2d(norm, out_channels), nn.ReLU(inplace=True))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            x = lateral(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
        return self.output(x)
