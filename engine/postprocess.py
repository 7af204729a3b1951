"""Graph outputs -> what a user of the engine wants: named detections and a BEV map."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuller.config import BEVGrid, FullerConfig


@dataclass
class Detections:
    """Boxes in the LiDAR frame: (K, 9) x, y, z_centre, w, l, h, yaw, vx, vy; scores descending."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray  # (K,) int, index into `classes`
    classes: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [self.classes[i] for i in self.labels]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class BEVMap:
    """Per map class, probabilities and masks on `grid`, indexed [class, ix, iy]."""

    probabilities: np.ndarray  # (C, X, Y) float32
    masks: np.ndarray  # (C, X, Y) bool: probabilities >= threshold
    classes: tuple[str, ...]
    grid: BEVGrid
    threshold: float


def detections(outputs: dict[str, np.ndarray], cfg: FullerConfig, score_threshold: float) -> Detections | None:
    if "boxes" not in outputs:
        return None
    keep = outputs["scores"][0] >= score_threshold
    return Detections(boxes=outputs["boxes"][0][keep].astype(np.float32), scores=outputs["scores"][0][keep],
                      labels=outputs["labels"][0][keep].astype(np.int64), classes=tuple(cfg.geometry.classes))


def bev_map(outputs: dict[str, np.ndarray], cfg: FullerConfig, threshold: float) -> BEVMap | None:
    if "map_probs" not in outputs:
        return None
    probs = outputs["map_probs"][0].astype(np.float32)
    return BEVMap(probabilities=probs, masks=probs >= threshold, classes=tuple(cfg.geometry.map_classes),
                  grid=cfg.geometry.map_grid, threshold=threshold)
