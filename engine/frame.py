"""What the engine takes in: the rig calibration and one frame (images + point cloud), checked.

A malformed frame is a `FrameError` that names the input and expected vs got, raised before any
work is done, so a caller (the ROS 2 node, `fuller infer`) can drop the frame and keep running.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fuller.errors import UserInputError

POINT_COLUMNS = 5  # x, y, z, intensity, dt (s since the keyframe; 0 for a single sweep)


class FrameError(UserInputError):
    """A frame or calibration the engine cannot use; the message names the input."""


@dataclass(frozen=True)
class Calibration:
    """Per camera, in the order of ``geometry.cameras``: intrinsics of the raw image (N, 3, 3),
    camera -> LiDAR extrinsics (N, 4, 4), and the raw image size (H, W) shared by all cameras."""

    intrinsics: np.ndarray
    camera2lidar: np.ndarray
    image_size: tuple[int, int]

    def check(self, num_cameras: int) -> None:
        for name, value, shape in (("intrinsics", self.intrinsics, (num_cameras, 3, 3)),
                                   ("camera2lidar", self.camera2lidar, (num_cameras, 4, 4))):
            value = np.asarray(value)
            if value.shape != shape:
                raise FrameError(f"calibration.{name}: expected shape {shape} (one per configured camera), "
                                 f"got {value.shape}")
            if not np.isfinite(value).all():
                raise FrameError(f"calibration.{name}: expected finite values, got NaN or inf")
            if abs(np.linalg.det(value)).min() < 1e-12:
                raise FrameError(f"calibration.{name}: expected invertible matrices, got a singular one")
        h, w = self.image_size
        if h < 1 or w < 1:
            raise FrameError(f"calibration.image_size: expected (H, W) >= 1, got {self.image_size}")

    def digest(self) -> str:
        """Identity of the calibration, so the engine recomputes geometry only when it changes."""
        h = hashlib.sha1()
        for a in (self.intrinsics, self.camera2lidar, np.asarray(self.image_size)):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()


def check_images(images: np.ndarray, calibration: Calibration) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB at the calibrated raw size."""
    images = np.asarray(images)
    n = len(calibration.intrinsics)
    want = (n, *calibration.image_size, 3)
    if images.shape != want:
        raise FrameError(f"images: expected shape {want} (cameras, calibrated height, width, RGB), got {images.shape}")
    if images.dtype != np.uint8:
        raise FrameError(f"images: expected dtype uint8, got {images.dtype}")
    return images


def check_points(points: np.ndarray) -> np.ndarray:
    """(P, 5) float32 x, y, z, intensity, dt; (P, 4) gets dt = 0. Empty or non-finite is an error."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] not in (4, POINT_COLUMNS):
        raise FrameError(f"points: expected (P, 5) x, y, z, intensity, dt (or (P, 4)), got shape {points.shape}")
    if len(points) == 0:
        raise FrameError("points: expected a non-empty cloud, got 0 points")
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(1).sum())
        raise FrameError(f"points: expected finite values, got {bad} of {len(points)} points with NaN or inf")
    points = points.astype(np.float32, copy=False)
    if points.shape[1] == 4:
        points = np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1)
    return points
