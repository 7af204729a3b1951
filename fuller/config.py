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
from collections.abc import Sequence
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


@dataclass
class FullerConfig:
    """The whole config. Constructing one validates it; add sections as fields with a validate()."""

    name: str
    geometry: GeometryConfig
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "a non-empty string", "''")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)


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
