"""`sensor_msgs/CameraInfo` -> the pinhole model the engine's calibration needs, and back.

The network was trained on undistorted pinhole images, so the node must be fed rectified images
(``image_rect``); `distorted` tells it when a camera's info says otherwise, so it can warn or refuse
instead of silently projecting with the wrong model. Binning and a region of interest change what K
refers to; rather than guess, such infos are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import CAMERA_INFO, MessageError, msg_class


@dataclass(frozen=True)
class CameraModel:
    intrinsics: np.ndarray  # (3, 3) float64
    image_size: tuple[int, int]  # (H, W)
    distorted: bool  # any non-zero distortion coefficient


def _full_frame(msg) -> bool:
    roi = msg.roi
    return (roi.x_offset == 0 and roi.y_offset == 0
            and (roi.width, roi.height) in ((0, 0), (msg.width, msg.height)))


def camera_model(msg) -> CameraModel:
    height, width = int(msg.height), int(msg.width)
    if height < 1 or width < 1:
        raise MessageError(f"CameraInfo.height/width: expected >= 1, got {height} x {width}")
    if max(msg.binning_x, msg.binning_y) > 1 or not _full_frame(msg):
        raise MessageError(f"CameraInfo.binning/roi: expected full-resolution images (binning 0 or 1, no ROI), "
                           f"got binning ({msg.binning_x}, {msg.binning_y}), roi offset "
                           f"({msg.roi.x_offset}, {msg.roi.y_offset}) size {msg.roi.width} x {msg.roi.height}")
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise MessageError(f"CameraInfo.k: expected 9 values (3 x 3 row-major), got {k.size}")
    k = k.reshape(3, 3)
    if not np.isfinite(k).all():
        raise MessageError("CameraInfo.k: expected finite values, got NaN or inf")
    if not k.any():
        raise MessageError("CameraInfo.k: expected a calibrated camera, got all zeros (uncalibrated)")
    if abs(np.linalg.det(k)) < 1e-12:
        raise MessageError(f"CameraInfo.k: expected an invertible matrix, got {k.tolist()}")
    distorted = bool(np.any(np.asarray(msg.d, dtype=np.float64) != 0))
    return CameraModel(intrinsics=k, image_size=(height, width), distorted=distorted)


def camera_info_message(intrinsics: np.ndarray, image_size: tuple[int, int], header):
    """A rectified pinhole CameraInfo: plumb_bob with zero D, R = I, P = [K | 0]."""
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape != (3, 3):
        raise ValueError(f"intrinsics: expected shape (3, 3), got {k.shape}")
    height, width = (int(v) for v in image_size)
    roi = msg_class("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return msg_class(CAMERA_INFO)(header=header, height=height, width=width, distortion_model="plumb_bob",
                                  d=np.zeros(5), k=k.reshape(-1).copy(), r=np.eye(3).reshape(-1),
                                  p=np.concatenate([k, np.zeros((3, 1))], axis=1).reshape(-1),
                                  binning_x=0, binning_y=0, roi=roi)
