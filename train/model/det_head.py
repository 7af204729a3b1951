"""CenterPoint-style detection head on the detection BEV grid.

Objects are found as peaks of one heatmap per class; the box of a peak is regressed at that cell
(sub-cell offset, z centre, log size, sin/cos yaw, velocity). Decoding is a 3x3 max-pool peak test
and a top-K over (class, ix, iy), written in plain tensor ops so that it exports to ONNX and
TensorRT and the deployed graph itself emits boxes: no NMS, no Python loops, no data-dependent
shapes. Training targets follow CenterPoint (mmdet3d ``CenterHead.get_targets``) so the recipe
carries over: Gaussian splats with ``gaussian_radius``, Gaussian focal loss, L1 box regression
with velocity down-weighted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from fuller.config import FullerConfig

from ..parallel import reduce_mean
from .losses import gaussian_focal_loss
from .norm import norm2d

# Regression maps in the order of the 10 box-regression values (CenterPoint's ``common_heads``).
REGRESSION_HEADS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
# CenterPoint's nuScenes code weights: velocity errors are large in m/s and would dominate.
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
# sigmoid(-2.19) ~= 0.1: the focal-loss prior, so early training is not swamped by background.
HEATMAP_INIT_BIAS = -2.19
MIN_OVERLAP = 0.1  # CenterPoint's nuScenes gaussian_overlap
MIN_RADIUS = 2  # cells
SCORE_CLAMP = 1e-4  # keeps the focal loss's logs finite


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = MIN_OVERLAP) -> torch.Tensor:
    """CornerNet/CenterPoint radius (cells) within which a shifted box keeps IoU >= ``min_overlap``.

    The smallest root of the three quadratics of CornerNet's corner cases, element-wise over boxes.
    """
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


@dataclass
class DetTargets:
    """Training targets of a batch; M is the largest number of boxes in one sample (padded).

    ``index`` is the flat cell ``ix * Y + iy`` of each box centre; ``weight`` is 0 for padding,
    for boxes outside the grid and for non-finite values, else the code weight.
    """

    heatmap: torch.Tensor  # (B, K, X, Y) float32, Gaussian splats, 1 at each centre cell
    index: torch.Tensor  # (B, M) int64
    box: torch.Tensor  # (B, M, 10) float32: offset x/y (cells), z, log w/l/h, sin, cos, vx, vy
    weight: torch.Tensor  # (B, M, 10) float32
    mask: torch.Tensor  # (B, M) bool: the box is a positive (centre inside the grid)

    @property
    def num_objects(self) -> torch.Tensor:
        return self.mask.sum().to(torch.float32)


def check_shape(name: str, x: torch.Tensor, expected: tuple[int, ...]) -> None:
    """Raise if ``x`` is not (B, *expected). Skipped while tracing for export, where the shapes are
    fixed by the example input and comparing them would only emit tracer warnings."""
    if torch.jit.is_tracing():
        return
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")


def _conv_norm_relu(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm2d(norm, cout), nn.ReLU(inplace=True))


class CenterHead(nn.Module):
    """Heatmap + box-regression head; ``forward`` gives raw maps, ``decode`` turns them into boxes."""

    def __init__(self, cfg: FullerConfig, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels: expected an integer >= 1, got {in_channels}")
        g, m = cfg.geometry, cfg.model
        self.in_channels = in_channels
        self.num_classes = g.num_classes
        self.grid_shape = g.det_grid.shape
        self.x_min, self.y_min = float(g.det_grid.x_range[0]), float(g.det_grid.y_range[0])
        self.resolution = float(g.det_grid.resolution)
        self.max_boxes = min(m.det_max_boxes, self.num_classes * self.grid_shape[0] * self.grid_shape[1])
        self.bbox_weight = float(m.det_bbox_weight)
        self.register_buffer("code_weights", torch.tensor(CODE_WEIGHTS), persistent=False)

        c = m.head_channels
        self.shared = _conv_norm_relu(in_channels, c, m.norm)
        outputs = {"heatmap": self.num_classes, **REGRESSION_HEADS}
        self.branches = nn.ModuleDict(
            {name: nn.Sequential(_conv_norm_relu(c, c, m.norm), nn.Conv2d(c, n, 1)) for name, n in outputs.items()})
        nn.init.constant_(self.branches["heatmap"][-1].bias, HEATMAP_INIT_BIAS)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw maps on the detection grid: heatmap logits (B, K, X, Y), reg (B, 2, X, Y) sub-cell
        offset in cells, height (B, 1, X, Y) z centre, dim (B, 3, X, Y) log(w, l, h),
        rot (B, 2, X, Y) (sin, cos) of yaw, vel (B, 2, X, Y) m/s."""
        check_shape("z", z, (self.in_channels, *self.grid_shape))
        x = self.shared(z)
        return {name: branch(x) for name, branch in self.branches.items()}

    def _check_gt(self, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]) -> None:
        if len(gt_boxes) != len(gt_labels) or not gt_boxes:
            raise ValueError(f"gt_labels: expected one tensor per sample of gt_boxes ({len(gt_boxes)}, at least 1), "
                             f"got {len(gt_labels)}")
        for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
            if boxes.dim() != 2 or boxes.shape[1] != 9:
                raise ValueError(f"gt_boxes[{i}]: expected shape (M, 9), got {tuple(boxes.shape)}")
            if labels.shape != boxes.shape[:1] or labels.is_floating_point():
                raise ValueError(f"gt_labels[{i}]: expected integer shape ({boxes.shape[0]},), "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"gt_labels[{i}]: expected class indices in [0, {self.num_classes}), "
                                 f"got [{int(labels.min())}, {int(labels.max())}]")

    def targets(self, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]) -> DetTargets:
        """CenterPoint targets; boxes whose centre lies outside the detection grid are ignored.

        The geometry is computed in float64 so the centre cell ``floor((x - x_min) / res)`` is exact
        for boxes near a cell edge, and decode(targets) gives back the boxes to float32 precision.
        """
        self._check_gt(gt_boxes, gt_labels)
        nx, ny = self.grid_shape
        boxes = pad_sequence([b.to(torch.float64) for b in gt_boxes], batch_first=True)  # (B, M, 9)
        labels = pad_sequence([lab.to(torch.int64) for lab in gt_labels], batch_first=True)
        counts = torch.tensor([len(b) for b in gt_boxes], device=boxes.device)
        present = torch.arange(boxes.shape[1], device=boxes.device) < counts[:, None]

        gx = (boxes[..., 0] - self.x_min) / self.resolution
        gy = (boxes[..., 1] - self.y_min) / self.resolution
        cx, cy = gx.floor(), gy.floor()
        mask = present & (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)  # False for NaN centres too
        sizes = boxes[..., 3:6]
        if bool((mask[..., None] & ~(sizes > 0)).any()):
            raise ValueError("gt_boxes: expected positive sizes w, l, h for boxes inside the detection grid, "
                             f"got {sizes[mask][~(sizes[mask] > 0).all(-1)][:3].tolist()}")
        cx = torch.where(mask, cx, torch.zeros_like(cx))
        cy = torch.where(mask, cy, torch.zeros_like(cy))
        yaw = boxes[..., 6]
        box = torch.cat([(gx - cx)[..., None], (gy - cy)[..., None], boxes[..., 2:3], sizes.log(),
                         yaw.sin()[..., None], yaw.cos()[..., None], boxes[..., 7:9]], dim=-1)
        usable = mask[..., None] & box.isfinite()
        weight = usable * self.code_weights.to(boxes.device)
        box = torch.where(usable, box, torch.zeros_like(box))
        cx, cy = cx.long(), cy.long()
        heatmap = self._heatmap(labels, cx, cy, sizes, mask)
        return DetTargets(heatmap=heatmap, index=cx * ny + cy, box=box.float(), weight=weight.float(), mask=mask)

    def _heatmap(self, labels: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, sizes: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """Splat every positive box at once: a (2R+1)^2 patch per box, R the largest radius, cells
        outside a box's own radius or the grid left out, combined by element-wise max."""
        batch = mask.shape[0]
        nx, ny = self.grid_shape
        k = self.num_classes
        flat = torch.zeros(batch * k * nx * ny, dtype=torch.float32, device=mask.device)
        b, j = mask.nonzero(as_tuple=True)
        if b.numel() == 0:
            return flat.view(batch, k, nx, ny)
        width, length = sizes[b, j, 0] / self.resolution, sizes[b, j, 1] / self.resolution
        radius = gaussian_radius(length, width).floor().clamp(min=MIN_RADIUS)  # CenterPoint: max(2, int(r))
        reach = int(radius.max())
        offsets = torch.arange(-reach, reach + 1, device=mask.device)
        dx, dy = offsets.view(1, -1, 1), offsets.view(1, 1, -1)
        r = radius.view(-1, 1, 1)
        sigma = (2 * r + 1) / 6
        value = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))
        px, py = cx[b, j].view(-1, 1, 1) + dx, cy[b, j].view(-1, 1, 1) + dy
        keep = (dx.abs() <= r) & (dy.abs() <= r) & (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        channel = (b * k + labels[b, j]).view(-1, 1, 1)
        index = torch.where(keep, (channel * nx + px) * ny + py, torch.zeros_like(px))
        value = torch.where(keep, value, torch.zeros_like(value)).to(torch.float32)
        flat.scatter_reduce_(0, index.flatten(), value.flatten(), reduce="amax", include_self=True)
        return flat.view(batch, k, nx, ny)

    def _regression(self, preds: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 10, X*Y): the regression maps stacked in target order."""
        return torch.cat([preds[name] for name in REGRESSION_HEADS], dim=1).flatten(2)

    def loss(self, preds: dict[str, torch.Tensor], gt_boxes: list[torch.Tensor],
             gt_labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{'heatmap': Gaussian focal loss, 'bbox': weighted L1}, both divided by the object count.

        The task loss is ``heatmap + self.bbox_weight * bbox``. The count is averaged over
        data-parallel ranks, so averaged rank gradients are the whole batch's gradient.
        """
        heatmap = preds["heatmap"]
        if len(gt_boxes) != heatmap.shape[0]:
            raise ValueError(f"gt_boxes: expected one tensor per sample ({heatmap.shape[0]}), got {len(gt_boxes)}")
        device = heatmap.device
        t = self.targets([b.to(device) for b in gt_boxes], [lab.to(device) for lab in gt_labels])
        num = reduce_mean(t.num_objects).clamp(min=1.0)
        scores = heatmap.float().sigmoid().clamp(SCORE_CLAMP, 1 - SCORE_CLAMP)
        heat_loss = gaussian_focal_loss(scores, t.heatmap, reduction="sum") / num
        reg = self._regression(preds).float()
        index = t.index[:, None, :].expand(-1, reg.shape[1], -1)
        pred_box = reg.gather(2, index).transpose(1, 2)  # (B, M, 10)
        bbox_loss = ((pred_box - t.box).abs() * t.weight).sum() / num
        return {"heatmap": heat_loss, "bbox": bbox_loss}

    def decode(self, preds: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-K heatmap peaks as boxes: (B, K, 9) x, y, z, w, l, h, yaw, vx, vy; scores (B, K)
        sorted in descending order; labels (B, K) int64. K = min(det_max_boxes, classes * X * Y).

        A cell is a peak when it equals the max of its 3x3 neighbourhood (CenterNet's max-pool NMS).
        Computed in float32 whatever the dtype of the maps.
        """
        heatmap = preds["heatmap"]
        nx, ny = self.grid_shape
        check_shape("preds['heatmap']", heatmap, (self.num_classes, nx, ny))
        heat = heatmap.float().sigmoid()
        peak = F.max_pool2d(heat, kernel_size=3, stride=1, padding=1)
        heat = torch.where(heat == peak, heat, torch.zeros_like(heat))
        scores, flat = heat.flatten(1).topk(self.max_boxes, dim=1)
        # Non-negative integers: truncating division is floor division and exports as a plain Div.
        labels = torch.div(flat, nx * ny, rounding_mode="trunc")
        cell = flat - labels * (nx * ny)
        ix = torch.div(cell, ny, rounding_mode="trunc")
        iy = cell - ix * ny
        reg = self._regression(preds).float()  # x near 50 m in bf16 would be rounded to 0.25 m
        r = reg.gather(2, cell[:, None, :].expand(-1, reg.shape[1], -1)).transpose(1, 2)  # (B, K, 10)
        x = (ix.to(r.dtype) + r[..., 0]) * self.resolution + self.x_min
        y = (iy.to(r.dtype) + r[..., 1]) * self.resolution + self.y_min
        yaw = torch.atan2(r[..., 6], r[..., 7])
        boxes = torch.cat([x[..., None], y[..., None], r[..., 2:3], r[..., 3:6].exp(), yaw[..., None], r[..., 8:10]],
                          dim=-1)
        return boxes, scores, labels
