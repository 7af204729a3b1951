"""The sensor rig: nuScenes' six cameras and the 32-beam LIDAR_TOP, at the real mounting geometry.

Numbers are those of the nuScenes rig (Renault Zoe): camera positions, yaws and intrinsics at the
native 1600 x 900 resolution, scaled by `image_scale`; LIDAR_TOP yawed -90 degrees so that its x
axis points to the right of the car and y forward, as in the real calibration.

Timing is nuScenes' too: the LiDAR spins clockwise (seen from above) at 20 Hz, its timestamp marks
the end of a revolution, and each camera is triggered when the beam crosses the middle of its field
of view, so a keyframe's images are taken up to a revolution (50 ms) before its LiDAR timestamp.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

NATIVE_SIZE = (1600, 900)  # (width, height)

# channel: (translation in the ego frame, yaw in degrees, fx, cx, cy at native resolution)
CAMERAS = {
    "CAM_FRONT": ((1.70, 0.016, 1.51), 0.0, 1266.4, 816.3, 491.5),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.49), -55.0, 1260.8, 807.9, 495.3),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 1272.6, 826.6, 479.8),
    "CAM_BACK": ((0.03, 0.0, 1.57), 180.0, 809.2, 829.2, 481.8),
    "CAM_BACK_LEFT": ((1.03, 0.48, 1.56), 110.0, 1256.7, 817.8, 451.9),
    "CAM_BACK_RIGHT": ((1.04, -0.48, 1.57), -110.0, 1259.5, 807.3, 501.2),
}
LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)
LIDAR_YAW_DEG = -90.0
LIDAR_PERIOD = 0.05  # seconds per revolution (20 Hz)
# Ego-frame yaw of the beam at the LiDAR timestamp. With it the firing times match the real rig's
# (e.g. scene-0061's first keyframe: CAM_FRONT_LEFT 43 ms, CAM_FRONT 35 ms, CAM_BACK_LEFT 0.5 ms
# before LIDAR_TOP).
LIDAR_END_YAW_DEG = 106.4
# Velodyne HDL-32E: 32 beams from -30.67 to +10.67 degrees.
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)


def yaw_rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose_matrix(rotation: np.ndarray, translation) -> np.ndarray:
    """A 4x4 rigid transform from a 3x3 rotation and a translation."""
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rotation, translation
    return m


def quaternion_list(rotation: np.ndarray) -> list[float]:
    """A rotation matrix as the [w, x, y, z] list the nuScenes tables store."""
    return [float(v) for v in Quaternion(matrix=rotation, rtol=1e-7, atol=1e-7).elements]


@dataclass(frozen=True)
class Camera:
    channel: str
    translation: np.ndarray  # camera centre in the ego frame
    rotation: np.ndarray  # camera -> ego (camera: x right, y down, z forward)
    intrinsic: np.ndarray
    width: int
    height: int
    fire_offset: float = 0.0  # seconds from the keyframe's LiDAR timestamp to this camera's exposure (< 0)


@dataclass(frozen=True)
class Lidar:
    translation: np.ndarray
    rotation: np.ndarray  # lidar -> ego
    elevations: np.ndarray  # radians, one per beam (ring)
    azimuths: np.ndarray  # radians, one per firing


def make_cameras(image_scale: float) -> list[Camera]:
    width, height = round(NATIVE_SIZE[0] * image_scale), round(NATIVE_SIZE[1] * image_scale)
    cams = []
    for channel, (t, yaw_deg, f, cx, cy) in CAMERAS.items():
        yaw = np.deg2rad(yaw_deg)
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        k = np.array([[f * image_scale, 0.0, cx * image_scale], [0.0, f * image_scale, cy * image_scale],
                      [0.0, 0.0, 1.0]])
        cams.append(Camera(channel, np.array(t), np.stack([right, down, forward], axis=1), k, width, height,
                           -camera_delay(yaw_deg)))
    return cams


def camera_delay(yaw_deg: float) -> float:
    """Seconds by which a camera looking along ego-frame `yaw_deg` fires before the LiDAR timestamp:
    the time the clockwise beam takes from that yaw to the end of its revolution."""
    return (yaw_deg - LIDAR_END_YAW_DEG) % 360.0 / 360.0 * LIDAR_PERIOD


def make_lidar(azimuth_step_deg: float) -> Lidar:
    return Lidar(np.array(LIDAR_TRANSLATION), yaw_rotation(np.deg2rad(LIDAR_YAW_DEG)),
                 np.deg2rad(LIDAR_ELEVATIONS_DEG), np.deg2rad(np.arange(0.0, 360.0, azimuth_step_deg)))
