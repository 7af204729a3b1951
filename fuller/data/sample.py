"""`Sample`: one nuScenes keyframe in the LiDAR frame, as the reader makes it and transforms change it.

Conventions (pinned project-wide, see fuller/config.py): LiDAR frame x right, y forward, z up; boxes
are (x, y, z_centre, w, l, h, yaw, vx, vy) with l along the heading and yaw from the x axis; map
masks are (C, X, Y).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Sample:
    """One keyframe, ready for the network. Matrices are float64 4x4 unless noted."""

    token: str
    location: str
    timestamp: int
    images: np.ndarray  # (N, H, W, 3) uint8, network input size after `img_aug`
    intrinsics: np.ndarray  # (N, 3, 3) of the original images
    camera2lidar: np.ndarray  # (N, 4, 4)
    img_aug: np.ndarray  # (N, 4, 4): original (u, v, depth, 1) -> network-input (u, v, depth, 1), as BEVFusion
    points: np.ndarray  # (P, 5) float32: x, y, z, intensity, dt (s, >= 0, 0 for the keyframe)
    gt_boxes: np.ndarray  # (M, 9) float32: x, y, z, w, l, h, yaw, vx, vy
    gt_labels: np.ndarray  # (M,) int64 index into config.geometry.classes
    lidar2ego: np.ndarray
    ego2global: np.ndarray
    lidar_aug: np.ndarray = field(default_factory=lambda: np.eye(4))  # original LiDAR frame -> augmented
    map_masks: np.ndarray | None = None  # (C, X, Y) bool, filled after the transforms

    @property
    def lidar2image(self) -> np.ndarray:
        """(N, 4, 4) augmented LiDAR frame -> original-image (u z, v z, z, 1); divide by z, then
        apply `img_aug` (see fuller.geometry.project) for network-input pixels."""
        k = np.tile(np.eye(4), (len(self.intrinsics), 1, 1))
        k[:, :3, :3] = self.intrinsics
        return k @ np.linalg.inv(self.camera2lidar) @ np.linalg.inv(self.lidar_aug)


Transform = Callable[[Sample], Sample]
