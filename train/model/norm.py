"""Normalisation layers chosen by ``model.norm``, so every stage switches together.

``bn`` is BatchNorm, the usual choice. ``gn`` is GroupNorm with 8 groups: its output for a sample
does not depend on the other samples of the batch, so data-parallel training on several processes
gives exactly the update of one process on the whole batch (BatchNorm statistics are per process).
"""
from __future__ import annotations

from torch import nn

GROUPS = 8


def norm2d(kind: str, channels: int) -> nn.Module:
    """Norm for (B, C, H, W) feature maps."""
    return nn.BatchNorm2d(channels) if kind == "bn" else nn.GroupNorm(GROUPS, channels)


def norm1d(kind: str, channels: int) -> nn.Module:
    """Norm for (N, C) rows, e.g. sparse voxel features. With ``gn`` each row is normalised alone,
    in groups of 8 channels: a row has no spatial extent, so one channel per group (8 groups of 8
    channels) would normalise every value to zero."""
    return nn.BatchNorm1d(channels) if kind == "bn" else nn.GroupNorm(max(1, channels // GROUPS), channels)
