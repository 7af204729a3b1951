"""Calibration-dependent geometry of the LSS BEV pooling: which frustum point lands in which cell.

The camera branch predicts, for every camera-feature pixel, a depth distribution over D bins and a
context vector; LSS lifts each (pixel, depth bin) pair to a 3-D point of the camera frustum and
pools depth x context into the camera BEV grid. Where each frustum point lands depends only on the
calibration (intrinsics, extrinsics, image and LiDAR augmentation), not on the images, so it is
computed here once per calibration and fed to the ``fuller::bev_pool`` op as index arrays (the
CUDA-BEVFusion ``update()`` pattern). NumPy only: the runtime engine uses this module without torch.

Index conventions (those of the op, see ``plugins/bev_pool/SPEC.md``), for N cameras, D depth bins,
an (h, w) feature map and an (X, Y) BEV grid:

* ``ranks_depth = n*D*h*w + k*h*w + i*w + j``: the element of ``depth`` (N, D, h, w);
* ``ranks_feat = n*h*w + i*w + j``: the row of ``feat`` (N, h, w, C) seen as (N*h*w, C);
* ``ranks_bev = ix*Y + iy``: the cell of the BEV output (C, X, Y), the project's ``[..., ix, iy]``.

Batches concatenate samples with offsets (:func:`batch_geometries`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .config import GeometryConfig

_INDEX_FIELDS = ("ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths")


# Image pixels per camera feature pixel: the camera encoder's FPN output stride.
FEATURE_STRIDE = 8

@dataclass
class BEVPoolGeometry:
    """Frustum-to-BEV index arrays for one sample (``batch_size`` 1) or a batch of samples.

    The five arrays are int64 and are the op's inputs in its argument order (:meth:`op_inputs`);
    points are sorted by ``ranks_bev`` and each interval is one run of equal ``ranks_bev``, i.e.
    one non-empty BEV cell.
    """

    ranks_depth: np.ndarray
    ranks_feat: np.ndarray
    ranks_bev: np.ndarray
    interval_starts: np.ndarray
    interval_lengths: np.ndarray
    num_cameras: int  # per sample
    feature_size: tuple[int, int]  # (h, w)
    num_depth_bins: int
    bev_shape: tuple[int, int]  # (X, Y) of geometry.camera_bev
    batch_size: int = 1

    @property
    def num_points(self) -> int:
        """P: frustum points that fall inside the BEV grid."""
        return int(self.ranks_bev.shape[0])

    @property
    def op_bev_shape(self) -> list[int]:
        """The op's ``bev_shape`` attribute, [B, X, Y]."""
        return [self.batch_size, *self.bev_shape]

    def op_inputs(self) -> tuple[np.ndarray, ...]:
        """(ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)."""
        return tuple(getattr(self, name) for name in _INDEX_FIELDS)


def _check_matrices(name: str, value: np.ndarray, n: int) -> np.ndarray:
    m = np.asarray(value, dtype=np.float64)
    if m.shape != (n, 4, 4):
        raise ValueError(f"{name}: expected shape ({n}, 4, 4) (one matrix per configured camera), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return m


def _invert(name: str, m: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(m)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}: expected invertible 4x4 matrices, got a singular one") from None


def frustum(geometry: GeometryConfig, feature_stride: int = FEATURE_STRIDE) -> np.ndarray:
    """(D, h, w, 3) network-input (u, v, d) of every frustum point, as BEVFusion's LSS builds it:
    feature cells spread over the full image width/height (``linspace(0, W - 1, w)``), depths
    ``depth_min + k * step``."""
    if not isinstance(feature_stride, (int, np.integer)) or feature_stride < 1:
        raise ValueError(f"feature_stride: expected a positive integer, got {feature_stride!r}")
    height, width = (int(s) for s in geometry.image_size)
    if height % feature_stride or width % feature_stride:
        raise ValueError(f"feature_stride: expected a divisor of geometry.image_size {[height, width]}, "
                         f"got {feature_stride}")
    h, w = height // feature_stride, width // feature_stride
    d_min, _, step = geometry.depth_bins
    ds = d_min + np.arange(geometry.num_depth_bins, dtype=np.float64) * step
    xs = np.linspace(0.0, width - 1.0, w)
    ys = np.linspace(0.0, height - 1.0, h)
    d, v, u = np.meshgrid(ds, ys, xs, indexing="ij")
    return np.stack([u, v, d], axis=-1)


def intervals(ranks_bev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the runs of equal values in the sorted ``ranks_bev``."""
    if ranks_bev.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]]).astype(np.int64)
    lengths = np.diff(np.r_[starts, ranks_bev.size]).astype(np.int64)
    return starts, lengths


def compute_geometry(geometry: GeometryConfig, lidar2image: np.ndarray, img_aug: np.ndarray,
                     feature_stride: int = FEATURE_STRIDE) -> BEVPoolGeometry:
    """The pooling geometry of one sample's calibration.

    ``lidar2image`` (N, 4, 4) maps the (augmented) LiDAR frame to original-image (u z, v z, z, 1)
    and ``img_aug`` (N, 4, 4) original-image (u, v, z, 1) to network-input (u, v, z, 1), one per
    camera of ``geometry.cameras`` (``Sample.lidar2image``, ``Sample.img_aug``). Each frustum point
    (u, v, d) goes back through ``inv(img_aug)`` to (u', v', d'), then (u' d', v' d', d', 1) through
    ``inv(lidar2image)`` to the LiDAR frame: exactly the inverse of ``fuller.geometry.project``.
    Points inside ``camera_bev`` (x, y, cells by ``BEVGrid.index``) and ``camera_z_range``
    [zmin, zmax) are kept. All in float64: float32 rounding (micrometres at 60 m, after the matrix
    products) already moves points that lie near a cell edge into the neighbouring cell.
    """
    n = len(geometry.cameras)
    l2i = _check_matrices("lidar2image", lidar2image, n)
    aug = _check_matrices("img_aug", img_aug, n)
    image2lidar = _invert("lidar2image", l2i)
    aug_inv = _invert("img_aug", aug)

    points = frustum(geometry, feature_stride)
    num_d, h, w, _ = points.shape
    uvd1 = np.concatenate([points.reshape(-1, 3), np.ones((num_d * h * w, 1))], axis=1)
    grid = geometry.camera_bev
    nx, ny = grid.shape
    z_min, z_max = geometry.camera_z_range
    local = np.arange(num_d * h * w, dtype=np.int64)  # k*h*w + i*w + j: frustum order
    ranks_depth, ranks_bev = [], []
    for cam in range(n):
        original = uvd1 @ aug_inv[cam].T
        d = original[:, 2]
        homogeneous = np.stack([original[:, 0] * d, original[:, 1] * d, d, np.ones_like(d)], axis=1)
        xyz = homogeneous @ image2lidar[cam].T
        ix, iy = grid.index(xyz[:, 0], xyz[:, 1])
        keep = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (xyz[:, 2] >= z_min) & (xyz[:, 2] < z_max)
        ranks_depth.append(cam * num_d * h * w + local[keep])
        ranks_bev.append(ix[keep] * ny + iy[keep])
    rd = np.concatenate(ranks_depth)
    rb = np.concatenate(ranks_bev)
    order = np.argsort(rb, kind="stable")
    rd, rb = rd[order], rb[order]
    cam, rest = np.divmod(rd, num_d * h * w)
    rf = cam * h * w + rest % (h * w)
    starts, lengths = intervals(rb)
    return BEVPoolGeometry(ranks_depth=rd, ranks_feat=rf, ranks_bev=rb, interval_starts=starts,
                           interval_lengths=lengths, num_cameras=n, feature_size=(h, w),
                           num_depth_bins=num_d, bev_shape=(nx, ny))


def batch_geometries(geoms: list[BEVPoolGeometry]) -> BEVPoolGeometry:
    """One geometry for a batch: sample b's indices offset by b*X*Y (cells), b*N*D*h*w (depth)
    and b*N*h*w (feature rows), for depth (B*N, D, h, w), feat (B*N, h, w, C) and output
    (B, C, X, Y). Sample b's cells all precede sample b+1's, so the result stays sorted."""
    if not geoms:
        raise ValueError("geoms: expected at least one BEVPoolGeometry, got an empty list")
    first = geoms[0]
    layout = ("num_cameras", "feature_size", "num_depth_bins", "bev_shape")
    for b, g in enumerate(geoms[1:], start=1):
        for name in layout:
            if tuple(np.atleast_1d(getattr(g, name))) != tuple(np.atleast_1d(getattr(first, name))):
                raise ValueError(f"geoms[{b}].{name}: expected {getattr(first, name)} as in geoms[0], "
                                 f"got {getattr(g, name)}")
    h, w = first.feature_size
    feat_rows = first.num_cameras * h * w
    depth_size = feat_rows * first.num_depth_bins
    cells = first.bev_shape[0] * first.bev_shape[1]
    parts = {name: [] for name in _INDEX_FIELDS}
    batch = points = 0
    for g in geoms:
        parts["ranks_depth"].append(g.ranks_depth + batch * depth_size)
        parts["ranks_feat"].append(g.ranks_feat + batch * feat_rows)
        parts["ranks_bev"].append(g.ranks_bev + batch * cells)
        parts["interval_starts"].append(g.interval_starts + points)
        parts["interval_lengths"].append(g.interval_lengths)
        batch += g.batch_size
        points += g.num_points
    arrays = {name: np.concatenate(v).astype(np.int64, copy=False) for name, v in parts.items()}
    return BEVPoolGeometry(**arrays, num_cameras=first.num_cameras, feature_size=first.feature_size,
                           num_depth_bins=first.num_depth_bins, bev_shape=first.bev_shape, batch_size=batch)


class GeometryCache:
    """Per-calibration memo of :func:`compute_geometry`: a fixed rig computes its geometry once.

    Keys are the exact bytes of the float64 matrices, so any change of calibration or augmentation
    (however small) is a miss; least recently used entries are dropped beyond ``max_entries``.
    ``hits`` and ``misses`` count lookups, for the engine's timers and for tests.
    """

    def __init__(self, geometry_cfg: GeometryConfig, feature_stride: int = FEATURE_STRIDE,
                 max_entries: int = 16) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries: expected an integer >= 1, got {max_entries}")
        self.geometry_cfg = geometry_cfg
        self.feature_stride = feature_stride
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, BEVPoolGeometry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, lidar2image: np.ndarray, img_aug: np.ndarray) -> BEVPoolGeometry:
        """The geometry of this calibration, computed only if not cached. Treat it as read-only:
        the same object is returned to every caller with this calibration."""
        l2i = np.ascontiguousarray(lidar2image, dtype=np.float64)
        aug = np.ascontiguousarray(img_aug, dtype=np.float64)
        key = repr((l2i.shape, aug.shape)).encode() + l2i.tobytes() + aug.tobytes()
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return entry
        self.misses += 1
        entry = compute_geometry(self.geometry_cfg, l2i, aug, self.feature_stride)
        self._entries[key] = entry
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry
