"""From dataset samples to a batch of network inputs and targets.

Everything here is the preprocessing the runtime engine shares: image normalisation
(`fuller.preprocess`), voxelisation (`fuller.voxelize`) and the calibration-dependent BEV-pool
geometry (`fuller.bev_pool_geometry`), computed once per calibration and cached.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fuller.bev_pool_geometry import FEATURE_STRIDE, GeometryCache, batch_geometries
from fuller.config import FullerConfig
from fuller.data import Sample
from fuller.preprocess import normalize_images
from fuller.voxelize import Voxelizer, batch_coords

from .model.camera_encoder import PoolGeometry
from .model.fuller_model import ModelInputs, Targets


@dataclass
class Batch:
    inputs: ModelInputs
    targets: Targets
    samples: list[Sample]  # kept for evaluation (poses, tokens); not moved to the device
    dropped_voxels: int = 0  # voxels cut by geometry.max_voxels in this batch


class Collator:
    """``collate_fn`` for a DataLoader over `NuScenesDataset`; builds only what the model uses."""

    def __init__(self, cfg: FullerConfig) -> None:
        self.cfg = cfg
        self.use_camera = "camera" in cfg.model.modalities
        self.use_lidar = "lidar" in cfg.model.modalities
        self.voxelizer = Voxelizer(cfg.geometry)
        self.geometry_cache = GeometryCache(cfg.geometry, FEATURE_STRIDE)

    def __call__(self, samples: list[Sample]) -> Batch:
        inputs = ModelInputs(batch_size=len(samples))
        dropped = 0
        if self.use_camera:
            inputs.images = torch.from_numpy(np.stack([normalize_images(s.images) for s in samples]))
            geoms = [self.geometry_cache.get(s.lidar2image, s.img_aug) for s in samples]
            inputs.pool = PoolGeometry.from_numpy(batch_geometries(geoms))
        if self.use_lidar:
            voxels = [self.voxelizer(s.points) for s in samples]
            dropped = sum(v.dropped_voxels for v in voxels)
            features, coords = batch_coords(voxels)
            inputs.voxel_features = torch.from_numpy(features)
            inputs.voxel_coords = torch.from_numpy(coords)
        masks = None
        if samples[0].map_masks is not None:
            masks = torch.from_numpy(np.stack([s.map_masks for s in samples]))
        targets = Targets([torch.from_numpy(s.gt_boxes) for s in samples],
                          [torch.from_numpy(s.gt_labels) for s in samples], masks)
        return Batch(inputs, targets, samples, dropped)
