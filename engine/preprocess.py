"""Frame -> graph inputs, with the preprocessing training uses (not a rewrite of it):
`fuller.preprocess` (resize-crop, normalisation), `fuller.voxelize` (voxels, clip warnings) and
`fuller.bev_pool_geometry` (pooling geometry, recomputed only when the calibration changes)."""
from __future__ import annotations

import numpy as np

from fuller.bev_pool_geometry import FEATURE_STRIDE, compute_geometry
from fuller.config import FullerConfig
from . import contract
from fuller.preprocess import image_aug_matrix, normalize_images, resize_crop_matrix, warp_image
from fuller.voxelize import Voxelizer

from .frame import Calibration, FrameError, check_images, check_points


class Preprocessor:
    def __init__(self, cfg: FullerConfig) -> None:
        self.cfg = cfg
        self.voxelizer = Voxelizer(cfg.geometry)
        self.calibration: Calibration | None = None
        self._digest = ""
        self._pixel_map: np.ndarray | None = None
        self.geometry_feeds: dict[str, np.ndarray] = {}

    def calibrate(self, calibration: Calibration) -> bool:
        """Compute the pooling geometry of a new calibration; False (and no work) if unchanged."""
        digest = calibration.digest()
        if digest == self._digest:
            return False
        calibration.check(len(self.cfg.geometry.cameras))
        g = self.cfg.geometry
        self._pixel_map = resize_crop_matrix(*calibration.image_size, g.image_size)
        n = len(g.cameras)
        k = np.tile(np.eye(4), (n, 1, 1))
        k[:, :3, :3] = calibration.intrinsics
        lidar2image = k @ np.linalg.inv(calibration.camera2lidar)
        img_aug = np.tile(image_aug_matrix(self._pixel_map), (n, 1, 1))
        geometry = compute_geometry(g, lidar2image, img_aug, FEATURE_STRIDE)
        if geometry.num_points == 0:
            raise FrameError("calibration: no camera frustum point falls inside geometry.camera_bev; "
                             "check the extrinsics (camera -> LiDAR) and intrinsics")
        self.geometry_feeds = {name: a.astype(np.int32) for name, a in
                               zip(contract.GEOMETRY_INPUTS, geometry.op_inputs())}
        self.calibration, self._digest = calibration, digest
        return True

    def images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Raw (N, H, W, 3) uint8 -> {"images": (1, N, 3, H', W') float32} at the network size."""
        if self.calibration is None:
            raise FrameError("images: no calibration yet; call update_calibration first")
        images = check_images(images, self.calibration)
        size = self.cfg.geometry.image_size
        resized = np.stack([warp_image(im, self._pixel_map, size) for im in images])
        return {"images": normalize_images(resized)[None]}

    def voxels(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Points -> the fixed-capacity voxel list (features, coords (0, ix, iy, iz), count)."""
        voxels = self.voxelizer(check_points(points))
        capacity, n = self.cfg.geometry.max_voxels, len(voxels.coords)
        features = np.zeros((capacity, voxels.features.shape[1]), np.float32)
        features[:n] = voxels.features
        coords = np.full((capacity, 4), -1, np.int32)
        coords[:n, 0] = 0
        coords[:n, 1:] = voxels.coords
        return {"voxel_features": features, "voxel_coords": coords, "voxel_count": np.array([n], np.int32)}
