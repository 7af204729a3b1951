"""A dataset sample drawn with fuller.viz, at the cameras' recorded resolution."""
from __future__ import annotations

from pathlib import Path

from fuller.errors import UserInputError
from fuller.viz import sample_figure

from .nuscenes_dataset import NuScenesDataset


def draw_sample(dataset: NuScenesDataset, index: int, out: str | Path) -> Path:
    if not 0 <= index < len(dataset):
        raise UserInputError(f"index: expected 0..{len(dataset) - 1} for this split, got {index}")
    s = dataset[index]
    g = dataset.geometry
    scene = dataset.nusc.get("scene", dataset.nusc.get("sample", s.token)["scene_token"])["name"]
    return sample_figure(
        out, images=s.images, cameras=g.cameras, lidar2image=s.lidar2image, img_aug=s.img_aug, points=s.points, boxes=s.gt_boxes,
        labels=s.gt_labels, classes=g.classes, map_masks=s.map_masks, map_classes=g.map_classes,
        map_extent=[*g.map_grid.x_range, *g.map_grid.y_range], view_range=max(abs(v) for v in g.map_grid.x_range),
        title=f"{scene} · sample {index} · {s.token} · {len(s.points)} points ({g.sweeps} sweeps), "
              f"{len(s.gt_boxes)} boxes")
