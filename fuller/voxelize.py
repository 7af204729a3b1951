"""Hard voxelisation of LiDAR points, as mmdet3d/BEVFusion's ``hard_voxelize``, in NumPy only.

NumPy only because the runtime engine shares this module and must not need torch. The rules follow
BEVFusion so that a model trained here sees the voxels it would see there:

* A point is kept when ``min <= p < max`` on x, y and z (``geometry.point_cloud_range``, half-open).
  The bounds are first rounded to float32, the precision of the points, so a point written as the
  bound itself (``np.float32(-51.2)``) lies on it rather than a rounding error below it.
* Its voxel is ``floor((p - min) / voxel_size)`` per axis, in float64, clamped to the last cell so
  that a point kept by the range test always has a valid index: coords are (ix, iy, iz), the
  project's axis order (fuller/config.py), with ix growing with x.
* Voxels are counted in the order their first point appears in the input; only the first
  ``geometry.max_voxels`` of them are kept. Each keeps its first ``geometry.max_points_per_voxel``
  points (input order) and its feature is their mean, over every point column (x, y, z,
  intensity, dt), as BEVFusion's ``HardSimpleVFE`` does.
* The kept voxels are listed by key ``(ix * Y + iy) * Z + iz``: the exported sparse encoder's
  index ops find neighbours by binary search over sorted sites (plugins/sparse_conv/SPEC.md), and
  spconv's result does not depend on the order.

Clipping by ``max_voxels`` loses data silently in BEVFusion; here each :class:`Voxels` counts what
was cut and :class:`Voxelizer` logs it, so a config whose ``max_voxels`` is too small shows up in
the training log.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fuller.config import GeometryConfig

logger = logging.getLogger(__name__)

# After the first clipped frame, warn again once per this many clipped frames.
WARN_EVERY = 100


@dataclass
class Voxels:
    """The voxels of one point cloud, sorted by key (the ``max_voxels`` cut is by first appearance)."""

    features: np.ndarray  # (V, F) float32: mean of the kept points of each voxel, all F columns
    coords: np.ndarray  # (V, 3) int32: (ix, iy, iz)
    num_points: np.ndarray  # (V,) int32: points averaged, 1..max_points_per_voxel
    dropped_points: int  # in-range points that fell into voxels cut by max_voxels
    dropped_voxels: int  # in-range voxels beyond max_voxels


def _check_points(points: np.ndarray) -> np.ndarray:
    """The points as a float32 (P, F>=3) array, or a ValueError naming what is wrong."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points: expected a (P, F>=3) array (x, y, z, ...), got shape {points.shape}")
    if not np.issubdtype(points.dtype, np.floating):
        raise ValueError(f"points: expected a floating-point array (float32), got dtype {points.dtype}")
    points = points.astype(np.float32, copy=False)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"points: expected finite values, got NaN or inf in {len(rows)} rows (first: row {rows[0]})")
    return points


def _empty(num_features: int) -> Voxels:
    return Voxels(np.zeros((0, num_features), np.float32), np.zeros((0, 3), np.int32), np.zeros(0, np.int32), 0, 0)


def voxelize(points: np.ndarray, geometry: GeometryConfig) -> Voxels:
    """Hard-voxelise one point cloud (P, F>=3): see the module docstring for the rules.

    Vectorised: one stable sort of the in-range points by voxel key groups each voxel's points in
    input order, which gives at once each voxel's first appearance (for the voxel order and the
    ``max_voxels`` cut) and each point's rank inside its voxel (for ``max_points_per_voxel``).
    """
    points = _check_points(points)
    num_features = points.shape[1]
    r = np.asarray(geometry.point_cloud_range, dtype=np.float32)
    lo, hi = r[:3], r[3:]
    shape = np.asarray(geometry.voxel_grid_shape, dtype=np.int64)

    xyz = points[:, :3]
    kept = np.flatnonzero(((xyz >= lo) & (xyz < hi)).all(axis=1))
    if len(kept) == 0:
        return _empty(num_features)
    cell = np.floor((xyz[kept].astype(np.float64) - lo.astype(np.float64)) / np.asarray(geometry.voxel_size))
    cell = np.minimum(cell.astype(np.int64), shape - 1)
    key = (cell[:, 0] * shape[1] + cell[:, 1]) * shape[2] + cell[:, 2]

    order = np.argsort(key, kind="stable")  # groups voxels; input order inside each group
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    counts = np.diff(np.r_[starts, len(sorted_key)])
    first_seen = order[starts]  # index (into `kept`, so input order) of each voxel's first point

    appearance = np.argsort(first_seen)  # voxel groups in order of first appearance
    max_voxels = geometry.max_voxels
    selected = np.sort(appearance[:max_voxels])  # voxel groups are numbered in key order
    dropped_voxels = max(0, len(starts) - max_voxels)
    dropped_points = int(counts[appearance[max_voxels:]].sum())

    rank_in_voxel = np.arange(len(order)) - np.repeat(starts, counts)
    take = order[rank_in_voxel < geometry.max_points_per_voxel]  # still grouped by voxel
    num_points = np.minimum(counts, geometry.max_points_per_voxel)
    group_starts = np.r_[0, np.cumsum(num_points)[:-1]]
    sums = np.add.reduceat(points[kept[take]].astype(np.float64), group_starts, axis=0)

    features = (sums[selected] / num_points[selected, None]).astype(np.float32)
    coords = cell[first_seen[selected]].astype(np.int32)
    return Voxels(features, coords, num_points[selected].astype(np.int32), dropped_points, dropped_voxels)


class Voxelizer:
    """:func:`voxelize` with counters of clipped frames, and a warning when ``max_voxels`` cuts.

    The warning names the numbers and the config field on the first clipped frame, then on every
    ``WARN_EVERY``-th clipped frame, so a too-small ``geometry.max_voxels`` is visible in training
    logs without flooding them. Counters are per process (each DataLoader worker has its own).
    """

    def __init__(self, geometry: GeometryConfig):
        self.geometry = geometry
        self.frames = 0
        self.clipped_frames = 0
        self.dropped_voxels_total = 0

    def __call__(self, points: np.ndarray) -> Voxels:
        voxels = voxelize(points, self.geometry)
        self.frames += 1
        if voxels.dropped_voxels:
            self.clipped_frames += 1
            self.dropped_voxels_total += voxels.dropped_voxels
            if self.clipped_frames == 1 or self.clipped_frames % WARN_EVERY == 0:
                logger.warning(
                    "voxelisation cut %d voxels (%d points) beyond geometry.max_voxels=%d in one frame; "
                    "%d of %d frames clipped so far, %d voxels dropped in total. Raise geometry.max_voxels "
                    "or shrink geometry.point_cloud_range.",
                    voxels.dropped_voxels, voxels.dropped_points, self.geometry.max_voxels,
                    self.clipped_frames, self.frames, self.dropped_voxels_total)
        return voxels


def batch_coords(voxels: list[Voxels]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the voxels of a batch: features (V, F) float32 and coords (V, 4) int32 rows
    (batch, ix, iy, iz), the layout the sparse encoder takes."""
    if len(voxels) == 0:
        raise ValueError("voxels: expected at least one Voxels, got an empty list")
    widths = sorted({v.features.shape[1] for v in voxels})
    if len(widths) > 1:
        raise ValueError(f"voxels: expected the same number of point features in every sample, got {widths}")
    features = np.concatenate([v.features for v in voxels]).astype(np.float32, copy=False)
    batch = np.repeat(np.arange(len(voxels), dtype=np.int32), [len(v.coords) for v in voxels])
    coords = np.concatenate([batch[:, None], np.concatenate([v.coords for v in voxels]).astype(np.int32)], axis=1)
    return features, coords
