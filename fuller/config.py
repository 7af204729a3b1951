"""Typed configuration: the single source of truth for geometry, classes and data splits.

Training writes a config into each checkpoint, export writes it into the ONNX metadata, and the
engine and the ROS 2 node read it back from there, so every number about the BEV grids, voxels,
image size, cameras and classes lives here and in ``fuller/configs/*.yaml``, never restated by hand.
Derived quantities (grid shapes, bin counts) are properties, so they can never disagree with the
numbers they come from.

Axis convention (pinned project-wide; spconv's (z, y, x) voxel order, for one, is converted at its
boundary and never leaks past it):

* x, y, z are metres in the LiDAR frame, nuScenes ``LIDAR_TOP``: x points to the right of the car,
  y forward, z up.
* Every BEV tensor is indexed ``[..., ix, iy]``: the second-to-last axis is x, the last is y.
* ``ix = floor((x - x_min) / resolution)`` grows with x, ``iy`` likewise grows with y. Voxel grids
  add ``iz`` the same way, and shapes are always written (nx, ny[, nz]).

Configs are OmegaConf structured configs: YAML is merged onto the dataclass schema (so unknown keys
and wrong types are caught with the key's name), then turned into plain dataclass instances that
validate themselves. Every error is a :class:`ConfigError` naming the field, what was expected and
what was found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
# The devkit's DetectionConfig order; class indices everywhere follow the config's list.
NUSCENES_DETECTION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
# BEVFusion's map classes; ``divider`` is road_divider and lane_divider together.
NUSCENES_MAP_CLASSES = (
    "drivable_area",
    "ped_crossing",
    "walkway",
    "stop_line",
    "carpark_area",
    "divider",
)

# Ranges are decimal numbers (0.075 m, 51.2 m) that floats cannot represent exactly.
_TOLERANCE = 1e-6


class ConfigError(ValueError):
    """An invalid config value; the message names the field, the expected and the got value."""

    def __init__(self, field: str, expected: str, got: Any):
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(f"{field}: expected {expected}, got {got}")

    def __reduce__(self):  # keeps the error picklable across DataLoader worker processes
        return type(self), (self.field, self.expected, self.got)


def _check(ok: bool, field: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(field, expected, got)


def _check_length(values: Sequence[Any], n: int, field: str, what: str) -> None:
    _check(len(values) == n, field, f"{n} values ({what})", list(values))


def _cells(lo: float, hi: float, size: float, field: str) -> int:
    """Number of cells of ``size`` in ``[lo, hi)``; ``field`` names the culprit if not whole."""
    n = round((hi - lo) / size)
    _check(
        n >= 1 and abs((hi - lo) - n * size) <= _TOLERANCE,
        field,
        f"the extent {hi - lo:g} of [{lo:g}, {hi:g}] to be a whole multiple of {size:g}",
        f"{(hi - lo) / size:.6g} cells",
    )
    return n


def _check_names(names: Sequence[str], known: Sequence[str], field: str) -> None:
    _check(len(names) > 0, field, "at least one name", "an empty list")
    for i, name in enumerate(names):
        _check(name in known, f"{field}[{i}]", f"one of {list(known)}", repr(name))
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    _check(not duplicates, field, "unique names", f"duplicates {duplicates}")


@dataclass
class BEVGrid:
    """A bird's-eye-view raster over the LiDAR frame, cells of ``resolution`` metres.

    Indexing follows the module's convention: ``[..., ix, iy]`` with ix along x, iy along y.
    """

    x_range: list[float]
    y_range: list[float]
    resolution: float

    @property
    def shape(self) -> tuple[int, int]:
        """(nx, ny): number of cells along x and along y."""
        return (
            round((self.x_range[1] - self.x_range[0]) / self.resolution),
            round((self.y_range[1] - self.y_range[0]) / self.resolution),
        )

    def index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer cell indices (ix, iy) of points; out-of-grid points get out-of-range indices."""
        ix = np.floor((np.asarray(x, dtype=np.float64) - self.x_range[0]) / self.resolution)
        iy = np.floor((np.asarray(y, dtype=np.float64) - self.y_range[0]) / self.resolution)
        return ix.astype(np.int64), iy.astype(np.int64)

    def cell_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """(xs, ys): 1-D arrays of the cell centre coordinates along x (length nx) and y (ny)."""
        nx, ny = self.shape
        xs = self.x_range[0] + (np.arange(nx) + 0.5) * self.resolution
        ys = self.y_range[0] + (np.arange(ny) + 0.5) * self.resolution
        return xs, ys

    def validate(self, path: str) -> None:
        _check(self.resolution > 0, f"{path}.resolution", "a positive size", self.resolution)
        for name in ("x_range", "y_range"):
            lo_hi = getattr(self, name)
            _check_length(lo_hi, 2, f"{path}.{name}", "min, max")
            _check(lo_hi[0] < lo_hi[1], f"{path}.{name}", "min < max", list(lo_hi))
            _cells(lo_hi[0], lo_hi[1], self.resolution, f"{path}.{name}")

    def lies_within(self, xy_range: Sequence[float]) -> bool:
        """Whether this grid lies within ``xy_range`` = [xmin, ymin, xmax, ymax]."""
        xmin, ymin, xmax, ymax = xy_range
        return (
            self.x_range[0] >= xmin - _TOLERANCE
            and self.x_range[1] <= xmax + _TOLERANCE
            and self.y_range[0] >= ymin - _TOLERANCE
            and self.y_range[1] <= ymax + _TOLERANCE
        )


@dataclass
class GeometryConfig:
    """Sensor geometry, grids and label sets shared by data, model, export and runtime."""

    point_cloud_range: list[float]  # xmin, ymin, zmin, xmax, ymax, zmax: LiDAR points kept
    voxel_size: list[float]  # vx, vy, vz
    camera_bev: BEVGrid  # the LSS pooling grid
    camera_z_range: list[float]  # zmin, zmax of the camera frustum points pooled into camera_bev
    det_grid: BEVGrid  # detection head output grid
    map_grid: BEVGrid  # map segmentation output grid
    image_size: list[int]  # H, W of the network input
    depth_bins: list[float]  # min, max, step of the LSS depth distribution (metres)
    sweeps: int  # LiDAR sweeps aggregated per sample, keyframe included
    max_points_per_voxel: int
    max_voxels: int
    cameras: list[str] = field(default_factory=lambda: list(NUSCENES_CAMERAS))
    classes: list[str] = field(default_factory=lambda: list(NUSCENES_DETECTION_CLASSES))
    map_classes: list[str] = field(default_factory=lambda: list(NUSCENES_MAP_CLASSES))

    @property
    def voxel_grid_shape(self) -> tuple[int, int, int]:
        """(nx, ny, nz) voxels covering point_cloud_range."""
        r, v = self.point_cloud_range, self.voxel_size
        return tuple(round((r[i + 3] - r[i]) / v[i]) for i in range(3))

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        """(nx, ny, nz + 1): the SECOND/BEVFusion sparse encoder input shape (1440, 1440, 41)."""
        nx, ny, nz = self.voxel_grid_shape
        return nx, ny, nz + 1

    @property
    def num_depth_bins(self) -> int:
        lo, hi, step = self.depth_bins
        return round((hi - lo) / step)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_map_classes(self) -> int:
        return len(self.map_classes)

    def validate(self, path: str = "geometry") -> None:
        r, v = self.point_cloud_range, self.voxel_size
        _check_length(r, 6, f"{path}.point_cloud_range", "xmin, ymin, zmin, xmax, ymax, zmax")
        _check_length(v, 3, f"{path}.voxel_size", "vx, vy, vz")
        for i, axis in enumerate("xyz"):
            _check(v[i] > 0, f"{path}.voxel_size", f"a positive {axis} size", list(v))
            _check(r[i] < r[i + 3], f"{path}.point_cloud_range", f"{axis}min < {axis}max", list(r))
            _cells(r[i], r[i + 3], v[i], f"{path}.voxel_size")

        xy_range = [r[0], r[1], r[3], r[4]]
        for name in ("camera_bev", "det_grid", "map_grid"):
            grid: BEVGrid = getattr(self, name)
            grid.validate(f"{path}.{name}")
            _check(
                grid.lies_within(xy_range),
                f"{path}.{name}",
                f"a grid inside the point_cloud_range x/y extent {xy_range}",
                f"x_range {list(grid.x_range)}, y_range {list(grid.y_range)}",
            )

        z = self.camera_z_range
        _check_length(z, 2, f"{path}.camera_z_range", "zmin, zmax")
        _check(z[0] < z[1], f"{path}.camera_z_range", "zmin < zmax", list(z))

        _check_length(self.image_size, 2, f"{path}.image_size", "H, W")
        _check(min(self.image_size) > 0, f"{path}.image_size", "positive H, W", self.image_size)

        d = self.depth_bins
        _check_length(d, 3, f"{path}.depth_bins", "min, max, step")
        _check(d[2] > 0, f"{path}.depth_bins", "a positive step", list(d))
        _check(0 <= d[0] < d[1], f"{path}.depth_bins", "0 <= min < max", list(d))
        _cells(d[0], d[1], d[2], f"{path}.depth_bins")

        for name in ("sweeps", "max_points_per_voxel", "max_voxels"):
            value = getattr(self, name)
            _check(value >= 1, f"{path}.{name}", "an integer >= 1", value)

        _check_names(self.cameras, NUSCENES_CAMERAS, f"{path}.cameras")
        _check_names(self.classes, NUSCENES_DETECTION_CLASSES, f"{path}.classes")
        _check_names(self.map_classes, NUSCENES_MAP_CLASSES, f"{path}.map_classes")


@dataclass
class DataConfig:
    """Which nuScenes release and which devkit splits (``nuscenes.utils.splits``) to read."""

    version: str = "v1.0-mini"
    train_split: str = "mini_train"
    val_split: str = "mini_val"

    def validate(self, path: str = "data") -> None:
        for name in ("version", "train_split", "val_split"):
            _check(bool(getattr(self, name)), f"{path}.{name}", "a non-empty string", "''")


MODALITIES = ("camera", "lidar")
TASKS = ("det", "map")
NORMS = ("bn", "gn")
INTER_METHODS = ("imtl", "sum", "static", "pcgrad", "mgda", "cagrad", "aligned", "uncertainty", "bounded",
                 "imtl_rescaled")
INTRA_TARGETS = ("mean", "max", "min", "camera", "lidar")
INTRA_MODES = ("norm", "per_task")
SHARED_PARTS = ("camera", "lidar", "fusion")  # the trunk's parts: the two branches, fuser + decoder
MAP_LOSSES = ("focal", "focal_mean", "bce")


@dataclass
class ModelConfig:
    """The network: which sensors and heads, and the width of every stage (docs/model.md).

    Strides are not listed here: they follow from the geometry (camera features at stride 8,
    the LiDAR encoder downsamples x/y from the voxel size to the detection grid).
    """

    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    norm: str = "bn"  # bn, or gn: batch-independent, so data-parallel equals one big batch exactly
    backbone_depth: int = 18  # ResNet 18 or 34, torchvision's state-dict keys
    backbone_width: int = 64  # channels of the stem; 64 is torchvision's ResNet
    backbone_weights: str = ""  # optional torchvision ResNet state dict (.pth) for the camera
    fpn_channels: int = 256
    camera_channels: int = 80  # LSS context channels pooled into the camera BEV
    lidar_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # sparse stages
    lidar_out_channels: int = 128  # per z slice before the height collapse
    fuser_channels: int = 256
    decoder_layers: list[int] = field(default_factory=lambda: [5, 5])  # SECOND blocks per level
    decoder_channels: list[int] = field(default_factory=lambda: [128, 256])
    decoder_out_channels: int = 256  # SECONDFPN: each level upsampled to out/levels, concatenated
    head_channels: int = 64
    det_max_boxes: int = 200  # top-K peaks decoded inside the network
    det_bbox_weight: float = 0.25  # L1 box-regression loss weight relative to the heatmap loss
    map_head: str = "standard"  # standard, or light (depthwise-separable convs)
    map_loss: str = "focal"  # focal (BEVFusion's: per-class focal means, summed), focal_mean or bce
    map_loss_weight: float = 1.0  # the map loss enters the task losses times this

    def validate(self, path: str = "model") -> None:
        for name, known in (("modalities", MODALITIES), ("tasks", TASKS)):
            _check_names(getattr(self, name), known, f"{path}.{name}")
        _check(self.norm in NORMS, f"{path}.norm", f"one of {list(NORMS)}", repr(self.norm))
        _check(self.backbone_depth in (18, 34), f"{path}.backbone_depth", "18 or 34", self.backbone_depth)
        _check(self.map_head in ("standard", "light"), f"{path}.map_head", "standard or light", repr(self.map_head))
        _check(self.map_loss in MAP_LOSSES, f"{path}.map_loss", f"one of {list(MAP_LOSSES)}", repr(self.map_loss))
        _check(self.map_loss_weight > 0, f"{path}.map_loss_weight", "a positive weight", self.map_loss_weight)
        _check(len(self.lidar_channels) >= 2, f"{path}.lidar_channels", "at least 2 stages", list(self.lidar_channels))
        _check(len(self.decoder_layers) == len(self.decoder_channels), f"{path}.decoder_layers",
               f"one entry per decoder level ({len(self.decoder_channels)})", list(self.decoder_layers))
        _check(self.decoder_out_channels % len(self.decoder_channels) == 0, f"{path}.decoder_out_channels",
               f"a multiple of the number of decoder levels ({len(self.decoder_channels)})",
               self.decoder_out_channels)
        widths = {"backbone_width": self.backbone_width, "fpn_channels": self.fpn_channels,
                  "camera_channels": self.camera_channels, "lidar_out_channels": self.lidar_out_channels,
                  "fuser_channels": self.fuser_channels, "head_channels": self.head_channels,
                  "det_max_boxes": self.det_max_boxes}
        for name, value in widths.items():
            _check(value >= 1, f"{path}.{name}", "an integer >= 1", value)
        for name in ("lidar_channels", "decoder_layers", "decoder_channels"):
            values = list(getattr(self, name))
            _check(min(values) >= (0 if name == "decoder_layers" else 1), f"{path}.{name}",
                   "non-negative layer counts" if name == "decoder_layers" else "positive widths", values)
        if self.norm == "gn":
            for name, value in widths.items():
                if name != "det_max_boxes":
                    _check(value % 8 == 0, f"{path}.{name}", "a multiple of 8 (GroupNorm uses 8 groups)", value)
            for name in ("lidar_channels", "decoder_channels"):
                values = list(getattr(self, name))
                _check(all(v % 8 == 0 for v in values), f"{path}.{name}",
                       "multiples of 8 (GroupNorm uses 8 groups)", values)
            _check((self.decoder_out_channels // len(self.decoder_channels)) % 8 == 0, f"{path}.decoder_out_channels",
                   "a multiple of 8 per decoder level (GroupNorm uses 8 groups)", self.decoder_out_channels)


@dataclass
class TrainConfig:
    """Optimisation and gradient calibration (docs/training.md). CLI flags override these."""

    steps: int = 2000
    batch_size: int = 2  # per process
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01
    grad_clip: float = 35.0  # max global gradient norm; 0 disables clipping
    seed: int = 0
    log_every: int = 10  # steps between metric records (losses, gradient diagnostics)
    checkpoint_every: int = 200
    num_workers: int = 0  # DataLoader worker processes
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    inter: str = "imtl"  # task-gradient calibration at the shared representation
    inter_weights: list[float] = field(default_factory=list)  # for inter=static, one per task
    intra: bool = True  # equalise the camera and LiDAR gradient norms at the fuser input
    intra_target: str = "mean"  # the common norm: mean, max or min of the two, or one modality's
    # norm: both branch gradients to a common norm; per_task: each task's gradient to a common
    # per-element RMS in both branches, then summed (docs/training.md)
    intra_mode: str = "norm"
    inter_epsilon: float = 0.1  # for inter=bounded: the fraction of detection's rate it may give up
    task_diagnostics: bool = False  # per-task gradients at the fuser input and the last shared layer
    # one pair of AdamW moments per task for every shared parameter: each task's update normalised
    # by its own gradient statistics, then summed (docs/training.md)
    per_task_adam: bool = False
    # the trunk parts that keep per-task moments (with per_task_adam); the others keep one pair
    per_task_adam_parts: list[str] = field(default_factory=lambda: list(SHARED_PARTS))
    val_every: int = 0  # steps between held-out losses on val_samples of the val split (0: off)
    val_samples: int = 8

    def validate(self, path: str = "train") -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            _check(getattr(self, name) >= 1, f"{path}.{name}", "an integer >= 1", getattr(self, name))
        for name in ("warmup_steps", "num_workers"):
            _check(getattr(self, name) >= 0, f"{path}.{name}", "an integer >= 0", getattr(self, name))
        _check(self.lr > 0, f"{path}.lr", "a positive learning rate", self.lr)
        _check(self.weight_decay >= 0, f"{path}.weight_decay", "a value >= 0", self.weight_decay)
        _check(0 <= self.min_lr_ratio <= 1, f"{path}.min_lr_ratio", "a value in [0, 1]", self.min_lr_ratio)
        _check(self.grad_clip >= 0, f"{path}.grad_clip", "a value >= 0 (0: off)", self.grad_clip)
        _check(self.inter in INTER_METHODS, f"{path}.inter", f"one of {list(INTER_METHODS)}", repr(self.inter))
        _check(self.intra_target in INTRA_TARGETS, f"{path}.intra_target", f"one of {list(INTRA_TARGETS)}",
               repr(self.intra_target))
        _check(all(w >= 0 for w in self.inter_weights), f"{path}.inter_weights", "non-negative weights",
               list(self.inter_weights))
        _check(self.intra_mode in INTRA_MODES, f"{path}.intra_mode", f"one of {list(INTRA_MODES)}",
               repr(self.intra_mode))
        _check(bool(self.per_task_adam_parts) and set(self.per_task_adam_parts) <= set(SHARED_PARTS),
               f"{path}.per_task_adam_parts", f"a non-empty list of {list(SHARED_PARTS)}",
               list(self.per_task_adam_parts))
        _check(0 < self.inter_epsilon < 1, f"{path}.inter_epsilon", "a fraction in (0, 1)", self.inter_epsilon)
        _check(self.val_every >= 0, f"{path}.val_every", "an integer >= 0 (0: off)", self.val_every)
        _check(self.val_samples >= 1, f"{path}.val_samples", "an integer >= 1", self.val_samples)


@dataclass
class FullerConfig:
    """The whole config. Constructing one validates it; add sections as fields with a validate()."""

    name: str
    geometry: GeometryConfig
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "a non-empty string", "''")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)
        if self.train.inter == "static":
            _check(len(self.train.inter_weights) == len(self.model.tasks), "train.inter_weights",
                   f"one weight per task {list(self.model.tasks)} for train.inter=static",
                   list(self.train.inter_weights))
        g = self.geometry
        det = g.det_grid.resolution
        xy_ratio = det / g.voxel_size[0]
        stages = len(self.model.lidar_channels) - 1
        _check(abs(g.voxel_size[0] - g.voxel_size[1]) <= _TOLERANCE, "geometry.voxel_size",
               "square voxels in x and y", list(g.voxel_size))
        _check(any(abs(xy_ratio - 2**k) <= _TOLERANCE for k in range(stages + 1)), "geometry.det_grid.resolution",
               f"the voxel size times a power of two <= 2**{stages} (one stride-2 per LiDAR stage after the first)",
               f"{det:g} = {xy_ratio:g} x {g.voxel_size[0]:g}")
        camera_stride = det / g.camera_bev.resolution
        _check(abs(camera_stride - round(camera_stride)) <= _TOLERANCE and round(camera_stride) >= 1,
               "geometry.det_grid.resolution", "a whole multiple of geometry.camera_bev.resolution",
               f"{det:g} / {g.camera_bev.resolution:g} = {camera_stride:g}")
        _check(g.image_size[0] % 32 == 0 and g.image_size[1] % 32 == 0, "geometry.image_size",
               "H and W divisible by 32 (the backbone's deepest stride)", list(g.image_size))


def lidar_stride(cfg: FullerConfig) -> int:
    """x/y downsampling of the LiDAR encoder: voxel grid -> detection grid (validated power of 2)."""
    return round(cfg.geometry.det_grid.resolution / cfg.geometry.voxel_size[0])


def camera_bev_stride(cfg: FullerConfig) -> int:
    """Downsampling of the camera BEV from the LSS pooling grid to the detection grid."""
    return round(cfg.geometry.det_grid.resolution / cfg.geometry.camera_bev.resolution)


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp)


def _schema_type(full_key: str) -> Any:
    """The declared type of a dotted key such as ``geometry.image_size[0]``, or None if unknown."""
    tp: Any = FullerConfig
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", full_key):
        if part.startswith("["):
            args = typing.get_args(tp)
            tp = args[0] if args else None
        elif dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        else:
            tp = None
        if tp is None:
            return None
    return tp


def _as_config_error(
    exc: OmegaConfBaseException, fallback_key: str, fallback_got: str
) -> ConfigError:
    """Translate an OmegaConf error; the fallbacks stand in where OmegaConf loses the key."""
    key = exc.full_key or fallback_key
    if isinstance(exc, ConfigKeyError):
        parent = exc.object_type
        is_schema = dataclasses.is_dataclass(parent)
        known = [f.name for f in dataclasses.fields(parent)] if is_schema else []
        return ConfigError(key, f"one of the known keys {known}", "an unknown key")
    expected = _schema_type(key)
    expected_text = f"a value of type {_type_name(expected)}" if expected else "a valid value"
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(key, expected_text, "a missing value")
    got = fallback_got if exc.value is None else repr(exc.value)
    return ConfigError(key, expected_text, got)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _build(
    source: dict[str, Any], overrides: Sequence[str] = (), label: str = "config"
) -> FullerConfig:
    """Merge ``source``, then each dotlist override, onto the schema; return the validated config.

    Overrides are merged one at a time because OmegaConf does not always report which key failed
    when a value replaces an existing one; the override itself then names it.
    """
    steps = [(source, label, "")]
    for item in overrides:
        key, sep, value = item.partition("=")
        _check(bool(sep and key), "overrides", "KEY=VALUE entries", repr(item))
        try:
            steps.append((OmegaConf.from_dotlist([item]), key, repr(value)))
        except yaml.YAMLError:
            raise ConfigError(key, "a YAML value", repr(value)) from None
    merged = OmegaConf.structured(FullerConfig)
    for step, fallback_key, fallback_got in steps:
        try:
            merged = OmegaConf.merge(merged, step)
        except OmegaConfBaseException as exc:
            raise _as_config_error(exc, fallback_key, fallback_got or _first_line(exc)) from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _as_config_error(exc, label, _first_line(exc)) from None
    assert isinstance(cfg, FullerConfig)
    return cfg


def _configs_dir() -> Traversable:
    return importlib.resources.files("fuller") / "configs"


def available_configs() -> list[str]:
    """Names of the packaged configs (``fuller/configs/<name>.yaml``), sorted."""
    files = _configs_dir().iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def _read_source(name_or_path: str) -> tuple[str, str]:
    """(YAML text, label for messages). A string with a '/' or a .yaml/.yml suffix is a path."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {name_or_path}")
        return path.read_text(), str(path)
    resource = _configs_dir() / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise FileNotFoundError(
            f"no packaged config named {name_or_path!r}"
            f" (available: {', '.join(available_configs())})"
        )
    return resource.read_text(), f"{name_or_path}.yaml"


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> FullerConfig:
    """Load a packaged config by name (``tiny``, ``base``) or a YAML file, then apply overrides.

    Overrides are OmegaConf dotlist entries such as ``geometry.sweeps=5``; they are type checked
    against the schema like the file itself.
    """
    text, label = _read_source(name_or_path)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(label, "valid YAML", " ".join(str(exc).split())) from None
    _check(isinstance(loaded, dict), label, "a mapping at the top level", type(loaded).__name__)
    return _build(loaded, overrides, label)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (or of one section, e.g. ``cfg.geometry``): JSON/YAML safe."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> FullerConfig:
    """Rebuild and validate a config from :func:`config_to_dict` output (checkpoints, ONNX)."""
    return _build(data)


def updated_config(cfg: FullerConfig, changes: Mapping[str, Any]) -> FullerConfig:
    """``cfg`` with dotted-key changes applied (``{"train.steps": 300}``), rebuilt and validated as a
    loaded config is. The one way to change a built config: a value set on it directly would skip
    the cross-field checks. An unknown key is a programming error (KeyError), a bad value a
    `ConfigError`."""
    data = config_to_dict(cfg)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise KeyError(f"updated_config: no config key {key!r}")
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return _build(data, label=f"changes {sorted(changes)}")


def config_to_yaml(cfg: FullerConfig) -> str:
    """YAML text that :func:`load_config` reads back to an equal config."""
    data = config_to_dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def config_hash(cfg: Any) -> str:
    """sha256 hex digest of the canonical JSON of a config or of one section (``cfg.geometry``).

    Canonical means sorted keys and fixed separators, so the hash is the same in every process.
    """
    data = config_to_dict(cfg)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
