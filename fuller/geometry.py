"""Box geometry shared by the simulator, the data pipeline and the pictures (no torch)."""
from __future__ import annotations

import numpy as np

# Unit box corners: x along the length (heading), y along the width, z up. Corners 0-3 are the
# front face, 4-7 the back face; within each, top-left, top-right, bottom-right, bottom-left as
# seen from outside the front.
UNIT_CORNERS = np.array([[1, 1, 1], [1, -1, 1], [1, -1, -1], [1, 1, -1],
                         [-1, 1, 1], [-1, -1, 1], [-1, -1, -1], [-1, 1, -1]], dtype=np.float64)
# The 12 edges as corner index pairs, for wireframes.
EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, 8, 3) corners of boxes (M, >=7) given as [x, y, z_centre, w, l, h, yaw, ...]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, boxes.shape[-1])
    half = np.stack([boxes[:, 4], boxes[:, 3], boxes[:, 5]], -1)[:, None, :] / 2  # (l, w, h) / 2
    local = UNIT_CORNERS[None] * half
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y, local[..., 2]], -1) + boxes[:, None, :3]


def project(points: np.ndarray, lidar2image: np.ndarray, img_aug: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) and depths (N,) of LiDAR-frame points (N, 3): perspective division by the
    depth first, then the image augmentation on (u, v, depth, 1) (BEVFusion's img_aug_matrix)."""
    p = np.concatenate([points, np.ones((len(points), 1))], 1) @ lidar2image.T
    depth = p[:, 2]
    uvd = np.stack([p[:, 0] / depth, p[:, 1] / depth, depth, np.ones_like(depth)], 1)
    if img_aug is not None:
        uvd = uvd @ img_aug.T
    return uvd[:, :2], depth
