"""A nuScenes root (real or synthetic) as `Sample`s in the LiDAR frame, for training and offline inference.

Everything geometric comes from the devkit (poses, calibration, multi-sweep aggregation, boxes in
the sensor frame, map rasterisation) and from the config's geometry, so the same code serves
v1.0-mini, v1.0-trainval and the synthetic world. No torch: the runtime's offline tools read
splits with it too; torch's DataLoader takes it as a map-style dataset (`__len__`, `__getitem__`).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import transform_matrix
from nuscenes.utils.splits import create_splits_scenes, get_scenes_of_custom_split
from PIL import Image
from pyquaternion import Quaternion

from fuller.config import FullerConfig
from fuller.errors import UserInputError

from . import devkit_compat
from .check import TABLES, inspect_file
from .sample import Sample, Transform
from .transforms import ResizeCrop

devkit_compat.install()

# Map classes that are unions of map-expansion layers; every other class is the layer of its name.
MAP_LAYERS = {"divider": ("road_divider", "lane_divider")}


class DatasetError(UserInputError):
    """A dataset root that cannot be used; the message names the path and what is wrong."""


def open_nuscenes(dataroot: str | Path, version: str) -> NuScenes:
    """Open a nuScenes root with the devkit, after checking it is one (clear errors, not asserts)."""
    root = Path(dataroot)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a directory")
    tables = root / version
    if not tables.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise DatasetError(f"{tables}: no table folder for version {version!r} (found: {found or 'none'})")
    missing = [t for t in TABLES if not (tables / f"{t}.json").is_file()]
    if missing:
        raise DatasetError(f"{tables}: missing tables {', '.join(m + '.json' for m in missing)}")
    return NuScenes(version=version, dataroot=str(root), verbose=False)


def read_image(path: Path, token: str) -> np.ndarray:
    """An image as RGB; on failure (only then, to keep the hot path free of checks) the file is diagnosed
    and named: missing, truncated, unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        what = inspect_file(path)[1] or f"unreadable image: {exc}"
        raise DatasetError(f"{path}: {what} (sample {token})") from exc


def split_scenes(nusc: NuScenes, split: str) -> list[str]:
    """Scene names of a devkit split: a predefined one, or a custom one from the release's
    ``splits.json`` (the devkit's format; the synthetic sets carry ``all``, every scene)."""
    predefined = create_splits_scenes()
    if split in predefined:
        return predefined[split]
    try:
        return get_scenes_of_custom_split(split_name=split, nusc=nusc)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"split {split!r}: neither a nuScenes split ({sorted(predefined)}) nor a custom split "
                           f"of {nusc.dataroot}/{nusc.version}/splits.json ({exc})") from None


class NuScenesDataset:
    """Keyframes of a split, each as a `Sample`.

    `transforms` run in order on each sample (augmentations go here: they update the images with
    `img_aug`, the points and boxes with `lidar_aug`); the map masks are rasterised after them in
    the final LiDAR frame, so a rotated sample gets an exactly rotated map.
    """

    def __init__(self, config: FullerConfig, dataroot: str | Path, split: str,
                 transforms: Sequence[Transform] | None = None, min_points: int = 1,
                 nusc: NuScenes | None = None) -> None:
        self.config = config
        self.split = split
        self.geometry = config.geometry
        self.nusc = nusc or open_nuscenes(dataroot, config.data.version)
        wanted = set(split_scenes(self.nusc, split))
        self.samples = [s["token"] for s in sorted(self.nusc.sample, key=lambda s: s["timestamp"])
                        if self.nusc.get("scene", s["scene_token"])["name"] in wanted]
        if not self.samples:
            raise DatasetError(f"{self.nusc.dataroot}: no samples of split {split!r} "
                               f"(scenes present: {sorted(s['name'] for s in self.nusc.scene)})")
        self.transforms = list(transforms) if transforms is not None else [ResizeCrop(self.geometry.image_size)]
        self.min_points = min_points
        self._maps: dict[str, NuScenesMap] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(self.samples[index])
        for transform in self.transforms:
            sample = transform(sample)
        sample.map_masks = self.map_masks(sample)
        return sample

    @cached_property
    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.geometry.classes)}

    def load(self, token: str) -> Sample:
        """The sample as recorded: original images, points and boxes in the LiDAR frame."""
        nusc = self.nusc
        rec = nusc.get("sample", token)
        lidar_sd = nusc.get("sample_data", rec["data"]["LIDAR_TOP"])
        lidar_cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
        lidar2ego = transform_matrix(lidar_cs["translation"], Quaternion(lidar_cs["rotation"]))
        ego2global = transform_matrix(pose["translation"], Quaternion(pose["rotation"]))
        lidar2global = ego2global @ lidar2ego

        images, intrinsics, cam2lidar = [], [], []
        for channel in self.geometry.cameras:
            sd = nusc.get("sample_data", rec["data"][channel])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            cam_pose = nusc.get("ego_pose", sd["ego_pose_token"])
            cam2global = (transform_matrix(cam_pose["translation"], Quaternion(cam_pose["rotation"]))
                          @ transform_matrix(cs["translation"], Quaternion(cs["rotation"])))
            cam2lidar.append(np.linalg.inv(lidar2global) @ cam2global)
            intrinsics.append(np.asarray(cs["camera_intrinsic"], dtype=np.float64))
            images.append(read_image(Path(nusc.dataroot) / sd["filename"], token))
        sizes = {im.shape for im in images}
        if len(sizes) != 1:
            raise DatasetError(f"sample {token}: cameras have different image sizes {sorted(sizes)}")

        try:
            pc, times = LidarPointCloud.from_file_multisweep(nusc, rec, "LIDAR_TOP", "LIDAR_TOP",
                                                             nsweeps=self.geometry.sweeps)
        except (OSError, ValueError) as exc:
            raise self._sweep_error(lidar_sd, token, exc) from exc
        points = np.concatenate([pc.points.T, times.T], axis=1).astype(np.float32)

        boxes, labels = self._boxes(rec, lidar_sd["token"], lidar2global)
        location = nusc.get("log", nusc.get("scene", rec["scene_token"])["log_token"])["location"]
        return Sample(token=token, location=location,
                      timestamp=rec["timestamp"], images=np.stack(images), intrinsics=np.stack(intrinsics),
                      camera2lidar=np.stack(cam2lidar), img_aug=np.tile(np.eye(4), (len(images), 1, 1)),
                      points=points, gt_boxes=boxes, gt_labels=labels, lidar2ego=lidar2ego, ego2global=ego2global)

    def _sweep_error(self, lidar_sd: dict, token: str, exc: Exception) -> DatasetError:
        """The error naming the file `from_file_multisweep` failed on: its sweeps are walked again (only now,
        after a failure, so a good sample pays no stat calls) and the first bad file is named."""
        sd = lidar_sd
        for _ in range(self.geometry.sweeps):
            path = Path(self.nusc.dataroot) / sd["filename"]
            what = inspect_file(path)[1]
            if what:
                return DatasetError(f"{path}: {what} (sample {token})")
            if not sd["prev"]:
                break
            sd = self.nusc.get("sample_data", sd["prev"])
        return DatasetError(f"{Path(self.nusc.dataroot) / lidar_sd['filename']}: cannot read the LiDAR sweeps: {exc} "
                            f"(sample {token})")

    def _boxes(self, rec: dict, lidar_token: str, lidar2global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, boxes, _ = self.nusc.get_sample_data(lidar_token)
        global2lidar_rot = lidar2global[:3, :3].T
        rows, labels = [], []
        for box, ann_token in zip(boxes, rec["anns"]):
            ann = self.nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name not in self.class_index or ann["num_lidar_pts"] + ann["num_radar_pts"] < self.min_points:
                continue
            velocity = np.nan_to_num(global2lidar_rot @ self.nusc.box_velocity(ann_token), nan=0.0)
            w, l, h = box.wlh
            rows.append([*box.center, w, l, h, box.orientation.yaw_pitch_roll[0], velocity[0], velocity[1]])
            labels.append(self.class_index[name])
        return np.asarray(rows, dtype=np.float32).reshape(-1, 9), np.asarray(labels, dtype=np.int64)

    def map_masks(self, sample: Sample) -> np.ndarray:
        """(C, X, Y) bool masks of config.geometry.map_classes on the map grid, via the devkit's
        `NuScenesMap.get_map_mask` on a patch aligned with the (augmented) LiDAR frame."""
        grid = self.geometry.map_grid
        if sample.location not in self._maps:
            self._maps[sample.location] = NuScenesMap(self.nusc.dataroot, sample.location)
        lidar2global = sample.ego2global @ sample.lidar2ego @ np.linalg.inv(sample.lidar_aug)
        centre = lidar2global @ np.array([np.mean(grid.x_range), np.mean(grid.y_range), 0.0, 1.0])
        x_axis = lidar2global[:3, :3] @ np.array([1.0, 0.0, 0.0])
        angle = np.degrees(np.arctan2(x_axis[1], x_axis[0]))
        width, height = grid.x_range[1] - grid.x_range[0], grid.y_range[1] - grid.y_range[0]
        nx, ny = grid.shape
        layers = sorted({layer for c in self.geometry.map_classes for layer in MAP_LAYERS.get(c, (c,))})
        raw = self._maps[sample.location].get_map_mask((centre[0], centre[1], height, width), angle, layers, (ny, nx))
        by_layer = dict(zip(layers, raw.transpose(0, 2, 1).astype(bool)))  # (rows=y, cols=x) -> (x, y)
        return np.stack([np.logical_or.reduce([by_layer[layer] for layer in MAP_LAYERS.get(c, (c,))])
                         for c in self.geometry.map_classes])
