"""fuller.voxelize against a plain-Python reference (dicts, float64) and hand-worked cases."""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest

from fuller.config import load_config
from fuller.voxelize import WARN_EVERY, Voxelizer, Voxels, batch_coords, voxelize

GEOMETRY = load_config("tiny").geometry  # range [-51.2, 51.2)^2 x [-5, 3), voxels 0.4 x 0.4 x 0.5: 256x256x16


def reference_voxelize(points: np.ndarray, geometry) -> tuple[list, list, list, int, int]:
    """One point at a time: range test against the float32-rounded bounds, floor index in float64
    clamped to the grid, a dict in insertion order for first appearance (the ``max_voxels`` cut),
    plain means, and the kept voxels listed by cell (lexicographic (ix, iy, iz) is the key order)."""
    bounds = [float(np.float32(b)) for b in geometry.point_cloud_range]
    lo, hi = bounds[:3], bounds[3:]
    shape = geometry.voxel_grid_shape
    voxels: dict[tuple[int, int, int], list[list[float]]] = {}
    for row in points.tolist():
        if not all(lo[a] <= row[a] < hi[a] for a in range(3)):
            continue
        cell = tuple(min(math.floor((row[a] - lo[a]) / geometry.voxel_size[a]), shape[a] - 1) for a in range(3))
        voxels.setdefault(cell, []).append(row)
    items = list(voxels.items())
    kept, cut = sorted(items[: geometry.max_voxels]), items[geometry.max_voxels:]
    features, coords, counts = [], [], []
    for cell, rows in kept:
        rows = rows[: geometry.max_points_per_voxel]
        features.append([sum(col) / len(rows) for col in zip(*rows)])
        coords.append(list(cell))
        counts.append(len(rows))
    return features, coords, counts, sum(len(rows) for _, rows in cut), len(cut)


def assert_matches_reference(points: np.ndarray, geometry) -> Voxels:
    got = voxelize(points, geometry)
    features, coords, counts, dropped_points, dropped_voxels = reference_voxelize(points, geometry)
    assert got.coords.dtype == np.int32 and got.num_points.dtype == np.int32 and got.features.dtype == np.float32
    assert got.coords.tolist() == coords
    assert got.num_points.tolist() == counts
    np.testing.assert_allclose(got.features, np.asarray(features, np.float64).reshape(-1, points.shape[1]),
                               rtol=1e-6, atol=1e-5)
    assert (got.dropped_points, got.dropped_voxels) == (dropped_points, dropped_voxels)
    return got


def random_cloud(rng: np.random.Generator, n: int) -> np.ndarray:
    """Points crowded into a few metres (so voxels overflow max_points_per_voxel), some out of range
    on every axis, and points exactly on the range bounds and on voxel faces."""
    xyz = np.concatenate([
        rng.uniform([-2, -1, -5.5], [2, 1, 3.5], (n, 3)),  # dense: > 10 points per voxel, z partly outside
        rng.uniform([-60, -60, -6], [60, 60, 4], (n // 4, 3)),  # sparse, partly outside in x and y
        [[-51.2, 0.3, 0.1], [51.2, 0.3, 0.1], [0.3, -51.2, 0.1], [0.3, 51.2, 0.1],  # on the x/y bounds
         [0.3, 0.3, -5.0], [0.3, 0.3, 3.0], [-51.2, -51.2, -5.0], [51.2, 51.2, 3.0],  # on the z bounds, corners
         [0.4, 0.8, 0.5], [-0.4, -0.8, -0.5]],  # on voxel faces
    ])
    extra = rng.uniform(0, 1, (len(xyz), 2))  # intensity, dt
    points = np.concatenate([xyz, extra], axis=1).astype(np.float32)
    return points[rng.permutation(len(points))]


def test_random_cloud_matches_reference():
    points = random_cloud(np.random.default_rng(0), 3000)
    got = assert_matches_reference(points, GEOMETRY)
    assert got.num_points.max() == GEOMETRY.max_points_per_voxel  # the cap was exercised
    assert got.dropped_voxels == 0


@pytest.mark.parametrize("max_voxels", [1, 7, 40])
def test_max_voxels_clipping_matches_reference(max_voxels):
    geometry = dataclasses.replace(GEOMETRY, max_voxels=max_voxels, max_points_per_voxel=3)
    got = assert_matches_reference(random_cloud(np.random.default_rng(max_voxels), 400), geometry)
    assert len(got.coords) == max_voxels and got.dropped_voxels > 0 and got.dropped_points >= got.dropped_voxels


def test_first_appearance_cut_then_key_order_by_hand():
    # Voxels B, A, B, C, A, D in input order; max_voxels=2 keeps B and A, cuts C and D (one point
    # each), and lists A before B: its key (ix = 128) is smaller.
    a, b, c, d = [0.1, 0.1, 0.1], [10.1, -20.3, 0.2], [-30.0, 40.0, -4.9], [50.0, 50.0, 2.9]
    xyz = np.array([b, a, b, c, a, d], np.float32)
    points = np.concatenate([xyz, np.arange(12, dtype=np.float32).reshape(6, 2)], axis=1)
    got = voxelize(points, dataclasses.replace(GEOMETRY, max_voxels=2))
    # ix = floor((x + 51.2) / 0.4), iy = floor((y + 51.2) / 0.4), iz = floor((z + 5) / 0.5)
    assert got.coords.tolist() == [[128, 128, 10], [153, 77, 10]]
    assert got.num_points.tolist() == [2, 2]
    np.testing.assert_allclose(got.features[0], np.mean(points[[1, 4]], axis=0), rtol=1e-6)
    np.testing.assert_allclose(got.features[1], np.mean(points[[0, 2]], axis=0), rtol=1e-6)
    assert (got.dropped_voxels, got.dropped_points) == (2, 2)


def test_range_is_half_open_at_float32_bounds():
    points = np.array([[-51.2, -51.2, -5.0, 1, 0],  # exactly the minimum: kept, voxel (0, 0, 0)
                       [51.2, 0.0, 0.0, 1, 0],  # exactly the x maximum: dropped
                       [0.0, 51.2, 0.0, 1, 0],
                       [0.0, 0.0, 3.0, 1, 0],
                       [np.nextafter(np.float32(51.2), np.float32(0)), 51.1, 2.99, 1, 0]],  # just below: last voxel
                      np.float32)
    got = voxelize(points, GEOMETRY)
    assert got.coords.tolist() == [[0, 0, 0], [255, 255, 15]]


def test_point_just_below_the_maximum_stays_in_the_last_voxel():
    # z range [-10, 0) in 0.5 m voxels: the largest float32 below 0 gives (z + 10) / 0.5 == 20.0 in
    # float64, one past the last voxel (19); the range test keeps the point, so it must land in 19.
    geometry = dataclasses.replace(GEOMETRY, point_cloud_range=[-51.2, -51.2, -10.0, 51.2, 51.2, 0.0])
    z = np.nextafter(np.float32(0), np.float32(-1))
    got = voxelize(np.array([[0.1, 0.1, z, 1, 0]], np.float32), geometry)
    assert got.coords.tolist() == [[128, 128, 19]]


def test_max_points_keeps_the_first_points():
    points = np.zeros((25, 5), np.float32)
    points[:, 3] = np.arange(25)  # intensity tells the points apart; all in one voxel
    got = voxelize(points, GEOMETRY)
    assert got.num_points.tolist() == [10]
    assert got.features[0, 3] == pytest.approx(4.5)  # mean of 0..9
    assert (got.dropped_points, got.dropped_voxels) == (0, 0)


@pytest.mark.parametrize("points", [np.zeros((0, 5), np.float32), np.full((4, 5), 100.0, np.float32)],
                         ids=["empty", "all-out-of-range"])
def test_no_points_in_range_gives_zero_voxels(points):
    got = voxelize(points, GEOMETRY)
    assert got.features.shape == (0, 5) and got.coords.shape == (0, 3) and got.num_points.shape == (0,)
    assert (got.dropped_points, got.dropped_voxels) == (0, 0)


@pytest.mark.parametrize("points, message", [
    (np.zeros((4, 2), np.float32), r"points: expected a \(P, F>=3\) array .* got shape \(4, 2\)"),
    (np.zeros(5, np.float32), r"points: expected a \(P, F>=3\) array .* got shape \(5,\)"),
    (np.zeros((4, 5), np.int32), "points: expected a floating-point array .* got dtype int32"),
    (np.array([[0, 0, 0, 1, 0], [np.nan, 0, 0, 1, 0]], np.float32), "points: expected finite values, got NaN or inf "
                                                                    r"in 1 rows \(first: row 1\)"),
])
def test_bad_points_are_named(points, message):
    with pytest.raises(ValueError, match=message):
        voxelize(points, GEOMETRY)


def test_voxelizer_warns_on_first_and_every_hundredth_clipped_frame(caplog):
    voxelizer = Voxelizer(dataclasses.replace(GEOMETRY, max_voxels=2))
    clipped = np.array([[0, 0, 0, 1, 0], [5, 0, 0, 1, 0], [10, 0, 0, 1, 0]], np.float32)  # 3 voxels
    fits = clipped[:2]
    with caplog.at_level(logging.WARNING, logger="fuller.voxelize"):
        voxelizer(fits)
        assert caplog.records == []
        voxelizer(clipped)
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert "geometry.max_voxels=2" in message and "cut 1 voxels (1 points)" in message
        assert "1 of 2 frames clipped" in message
        for _ in range(WARN_EVERY - 2):
            voxelizer(clipped)
            voxelizer(fits)
        assert len(caplog.records) == 1
        voxelizer(clipped)  # the 100th clipped frame
        assert len(caplog.records) == 2
        assert f"{WARN_EVERY} of {2 * WARN_EVERY - 1} frames clipped" in caplog.records[1].getMessage()
    assert (voxelizer.frames, voxelizer.clipped_frames, voxelizer.dropped_voxels_total) == (
        2 * WARN_EVERY - 1, WARN_EVERY, WARN_EVERY)


def test_batch_coords_prefixes_the_sample_index():
    first = voxelize(np.array([[0, 0, 0, 1, 0], [5, 0, 0, 2, 0]], np.float32), GEOMETRY)
    empty = voxelize(np.zeros((0, 5), np.float32), GEOMETRY)
    third = voxelize(np.array([[-5, 3, 1, 3, 0.5]], np.float32), GEOMETRY)
    features, coords = batch_coords([first, empty, third])
    assert coords.dtype == np.int32 and features.dtype == np.float32
    assert coords.tolist() == [[0, 128, 128, 10], [0, 140, 128, 10], [2, 115, 135, 12]]
    np.testing.assert_array_equal(features, np.concatenate([first.features, third.features]))


def test_batch_coords_rejects_bad_batches():
    with pytest.raises(ValueError, match="voxels: expected at least one"):
        batch_coords([])
    a = voxelize(np.zeros((1, 5), np.float32), GEOMETRY)
    b = voxelize(np.zeros((1, 4), np.float32), GEOMETRY)
    with pytest.raises(ValueError, match=r"voxels: expected the same number of point features .* got \[4, 5\]"):
        batch_coords([a, b])
