"""BEV map segmentation head: resample the shared representation to the map grid, then classify.

The map grid (its own extent and resolution) differs from the detection grid, so the head first
resamples z bilinearly at the exact map-cell centres (BEVFusion's ``BEVGridTransform``), then runs
BEVFusion's ``BEVSegmentationHead`` convs ("standard") or a depthwise-separable version of them
("light", FULLER's lightweight map head). Classes are multi-label (divider overlaps drivable area),
so each channel is an independent sigmoid.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuller.config import BEVGrid, FullerConfig

from .det_head import check_shape
from .losses import sigmoid_focal_loss
from .norm import norm2d

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def _normalised_centres(centres: np.ndarray, lo: float, hi: float) -> torch.Tensor:
    """grid_sample coordinates (align_corners=False: -1 and +1 are the outer cell edges)."""
    return torch.as_tensor((centres - lo) / (hi - lo) * 2 - 1, dtype=torch.float64)


class BEVGridTransform(nn.Module):
    """Bilinear resampling of (B, C, Xi, Yi) on ``input_grid`` to (B, C, Xo, Yo) on ``output_grid``.

    Output cells outside the input grid read zeros (grid_sample's zero padding).
    """

    def __init__(self, input_grid: BEVGrid, output_grid: BEVGrid) -> None:
        super().__init__()
        self.input_shape = input_grid.shape
        self.output_shape = output_grid.shape
        xs, ys = output_grid.cell_centers()
        u = _normalised_centres(xs, *input_grid.x_range)  # along ix, the second-to-last axis
        v = _normalised_centres(ys, *input_grid.y_range)  # along iy, the last axis
        gx, gy = torch.meshgrid(u, v, indexing="ij")  # (Xo, Yo)
        # grid_sample reads grid[..., 0] as the position along the last axis (width), [..., 1] along
        # the second-to-last (height): here iy, then ix.
        self.register_buffer("grid", torch.stack([gy, gx], dim=-1)[None].float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or tuple(x.shape[2:]) != self.input_shape):
            raise ValueError(f"x: expected shape (B, C, {self.input_shape[0]}, {self.input_shape[1]}), "
                             f"got {tuple(x.shape)}")
        # Sample in the grid's precision (float32): cast to bf16/fp16 the coordinates would be
        # off by a sizeable fraction of a cell on a 180-cell grid.
        grid = self.grid.expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _standard_block(c: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, padding=1, bias=False), norm2d(norm, c), nn.ReLU(inplace=True)]


def _light_block(c: int, norm: str) -> list[nn.Module]:
    """Depthwise 3x3 then pointwise 1x1: the same receptive field for 9c + c^2 weights instead of 9c^2."""
    return [nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
            norm2d(norm, c), nn.ReLU(inplace=True)]


class MapHead(nn.Module):
    """Map logits (B, num_map_classes, Xm, Ym) from z (B, in_channels, Xd, Yd) on the detection grid."""

    def __init__(self, cfg: FullerConfig, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels: expected an integer >= 1, got {in_channels}")
        m = cfg.model
        self.in_channels = in_channels
        self.loss_kind = m.map_loss
        self.transform = BEVGridTransform(cfg.geometry.det_grid, cfg.geometry.map_grid)
        block = {"standard": _standard_block, "light": _light_block}[m.map_head]
        self.classifier = nn.Sequential(*block(in_channels, m.norm), *block(in_channels, m.norm),
                                        nn.Conv2d(in_channels, cfg.geometry.num_map_classes, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_shape("z", z, (self.in_channels, *self.transform.input_shape))
        return self.classifier(self.transform(z))

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The map task's loss (``model.map_loss``):

        * ``focal`` (default, BEVFusion's ``BEVSegmentationHead``): for each class the sigmoid focal
          loss (gamma 2, no alpha factor) averaged over that class's cells, summed over classes;
        * ``focal_mean``: one mean over all classes and cells with alpha 0.25 (RetinaNet's
          default), C / (1 - alpha), i.e. about 8x, smaller for 6 classes;
        * ``bce``: mean binary cross-entropy.
        """
        if masks is None or masks.shape != logits.shape:
            got = None if masks is None else tuple(masks.shape)
            raise ValueError(f"masks: expected a bool tensor of the logits' shape {tuple(logits.shape)}, got {got}")
        logits, target = logits.float(), masks.to(torch.float32)
        if self.loss_kind == "focal":
            per_cell = sigmoid_focal_loss(logits, target, alpha=-1.0, gamma=FOCAL_GAMMA, reduction="none")
            return per_cell.transpose(0, 1).flatten(1).mean(1).sum()
        if self.loss_kind == "focal_mean":
            return sigmoid_focal_loss(logits, target, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="mean")
        return F.binary_cross_entropy_with_logits(logits, target)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities; classes overlap, so a sigmoid each, not a softmax."""
        return logits.sigmoid()
