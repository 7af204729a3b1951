"""fuller::bev_pool against its float64 NumPy reference, and the LSS frustum geometry against an
independent back-projection through the rig's intrinsics and extrinsics."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fuller.plugins.bev_pool.torch_op as torch_op
from fuller.bev_pool_geometry import BEVPoolGeometry, GeometryCache, batch_geometries, compute_geometry
from fuller.config import load_config
from fuller.geometry import project
from fuller.plugins.bev_pool.reference import bev_pool_backward_reference, bev_pool_reference, check_indices
from fuller.synth.rig import make_cameras, make_lidar, pose_matrix, yaw_rotation

# ---------------------------------------------------------------------------------------------
# The op


def random_case(seed: int, bn=4, d=5, h=3, w=4, c=6, bev=(2, 5, 6), points=300):
    """Random inputs satisfying the contract, with repeated (cell, feature row) pairs, repeated
    depth indices and empty cells (only every other cell of the grid can receive points)."""
    rng = np.random.default_rng(seed)
    cells = int(np.prod(bev))
    ranks_bev = np.sort(rng.choice(np.arange(0, cells, 2), points))
    ranks_feat = rng.integers(0, bn * h * w, points)
    ranks_feat[::2] = rng.integers(0, 5, (points + 1) // 2)  # half in a few rows: many repeated pairs
    ranks_depth = rng.integers(0, bn * d * h * w, points)
    ranks_depth[1::10] = ranks_depth[0]
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]])
    lengths = np.diff(np.r_[starts, points])
    depth = rng.random((bn, d, h, w))
    feat = rng.standard_normal((bn, h, w, c))
    return depth, feat, (ranks_depth, ranks_feat, ranks_bev, starts, lengths), list(bev)


def long_sum_case(seed: int, points: int = 8192, c: int = 8, bev=(1, 4, 4), short_cells=(1, 2, 9, 14),
                  short: int = 200):
    """One cell (5) pooling ``points`` positive products (0.25 to 1.5, about 6000 in all) and
    ``short`` points over a few other cells. A half-precision accumulator cannot hold that sum:
    past 4096 float16's step is 4 and past 512 bfloat16's is 4, so every later increment rounds
    away and the sum stops there. All terms are positive, so accumulated in float32 each output is
    the exact sum within float32's error (1e-5 relative here; 5e-4 at worst) and one rounding to
    the half type: within that type's epsilon."""
    rng = np.random.default_rng(seed)
    bn, d, h, w = 2, 4, 4, 4
    ranks_bev = np.sort(np.r_[np.full(points, 5), rng.choice(short_cells, short)])
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]])
    lengths = np.diff(np.r_[starts, ranks_bev.size])
    ranks_feat = rng.integers(0, bn * h * w, ranks_bev.size)
    ranks_depth = rng.integers(0, bn * d * h * w, ranks_bev.size)
    depth = rng.uniform(0.5, 1.0, (bn, d, h, w))
    feat = rng.uniform(0.5, 1.5, (bn, h, w, c))
    return depth, feat, (ranks_depth, ranks_feat, ranks_bev, starts, lengths), list(bev)


def assert_float32_accumulation(got: np.ndarray, want: np.ndarray, eps: float) -> None:
    """``got`` (a half-precision result of `long_sum_case`) within ``eps`` of the float64 ``want``,
    relative to each element, empty cells exactly zero."""
    assert want.max() > 5000
    np.testing.assert_array_equal(got[want == 0], 0)
    np.testing.assert_allclose(got, want, rtol=eps, atol=0)


def as_torch(ranks):
    return tuple(torch.from_numpy(np.ascontiguousarray(r, dtype=np.int64)) for r in ranks)


@pytest.fixture(params=["sparse", "gather"])
def path(request, monkeypatch):
    """Run each op test through both CPU kernels: sparse products and chunked gathers."""
    if request.param == "gather":
        monkeypatch.setattr(torch_op, "_use_sparse", lambda device: False)
        monkeypatch.setattr(torch_op, "CHUNK_ELEMENTS", 64)  # several chunks even on small cases
    return request.param


def test_case_has_repeats_and_empty_cells():
    _, _, (rd, rf, rb, _, _), bev = random_case(0)
    pairs = rb * 1000 + rf
    assert len(np.unique(pairs)) < len(pairs)
    assert len(np.unique(rd)) < len(rd)
    assert len(np.unique(rb)) <= np.prod(bev) // 2  # odd cells stay empty


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward_match_reference(path, dtype):
    depth, feat, ranks, bev = random_case(1)
    d = torch.tensor(depth, dtype=dtype, requires_grad=True)
    f = torch.tensor(feat, dtype=dtype, requires_grad=True)
    out = torch.ops.fuller.bev_pool(d, f, *as_torch(ranks), bev)
    assert out.shape == (bev[0], feat.shape[-1], bev[1], bev[2]) and out.dtype == dtype and out.is_contiguous()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(out.detach().numpy(), bev_pool_reference(depth, feat, *ranks, bev), rtol=tol, atol=tol)

    grad = np.random.default_rng(2).standard_normal(out.shape)
    out.backward(torch.tensor(grad, dtype=dtype))
    want_depth, want_feat = bev_pool_backward_reference(grad, depth, feat, *ranks)
    np.testing.assert_allclose(d.grad.numpy(), want_depth, rtol=tol, atol=tol)
    np.testing.assert_allclose(f.grad.numpy(), want_feat, rtol=tol, atol=tol)


def test_reference_pools_a_hand_computed_cell():
    depth = np.arange(1, 9, dtype=np.float64).reshape(1, 2, 2, 2)  # (BN, D, h, w)
    feat = np.array([[[[1.0, 10.0], [2.0, 20.0]], [[3.0, 30.0], [4.0, 40.0]]]])  # (BN, h, w, C)
    # cell 3 = (ix 1, iy 1) of a 2x2 grid gets depth[0,1,0,1] * row 1 twice and depth[0,0,1,1] * row 3
    ranks = (np.array([5, 5, 3]), np.array([1, 1, 3]), np.array([3, 3, 3]), np.array([0]), np.array([3]))
    out = bev_pool_reference(depth, feat, *ranks, [1, 2, 2])
    assert out[0, :, 1, 1].tolist() == [6 * 2 * 2 + 4 * 4, 6 * 20 * 2 + 4 * 40]
    assert np.count_nonzero(out) == 2


def test_gradcheck_float64(path):
    depth, feat, ranks, bev = random_case(3, bn=2, d=3, h=2, w=2, c=3, bev=(1, 3, 4), points=25)
    d = torch.tensor(depth, requires_grad=True)
    f = torch.tensor(feat, requires_grad=True)
    r = as_torch(ranks)
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.fuller.bev_pool(a, b, *r, bev), (d, f))


def test_registrations_pass_opcheck():
    depth, feat, ranks, bev = random_case(4, points=40)
    d = torch.tensor(depth, dtype=torch.float32, requires_grad=True)
    f = torch.tensor(feat, dtype=torch.float32, requires_grad=True)
    r = as_torch(ranks)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.fuller.bev_pool.default, (d, f, *r, bev), test_utils=checks)
    grad = torch.randn(bev[0], feat.shape[-1], bev[1], bev[2])
    torch.library.opcheck(torch.ops.fuller.bev_pool_backward.default, (grad, d.detach(), f.detach(), *r),
                          test_utils=checks)


def test_int32_indices_as_in_the_exported_graph(path):
    depth, feat, ranks, bev = random_case(12)
    r32 = tuple(t.int() for t in as_torch(ranks))
    out = torch.ops.fuller.bev_pool(torch.tensor(depth), torch.tensor(feat), *r32, bev)
    np.testing.assert_allclose(out.numpy(), bev_pool_reference(depth, feat, *ranks, bev), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(path, dtype):
    depth, feat, ranks, bev = long_sum_case(5)
    d, f = torch.tensor(depth, dtype=dtype), torch.tensor(feat, dtype=dtype)
    out = torch.ops.fuller.bev_pool(d, f, *as_torch(ranks), bev)
    assert out.dtype == dtype
    want = bev_pool_reference(d.double().numpy(), f.double().numpy(), *ranks, bev)
    assert_float32_accumulation(out.double().numpy(), want, torch.finfo(dtype).eps)


def test_float32_depth_with_bfloat16_context_as_cuda_autocast_makes_them(path):
    """Under CUDA autocast the depth softmax is float32 and the context bfloat16: the op pools them in
    float32, returns float32, and gives each input a gradient of its own dtype."""
    depth, feat, ranks, bev = random_case(11, points=2000)
    d = torch.tensor(depth, dtype=torch.float32, requires_grad=True)
    f = torch.tensor(feat, dtype=torch.bfloat16, requires_grad=True)
    out = torch.ops.fuller.bev_pool(d, f, *as_torch(ranks), bev)
    assert out.dtype == torch.float32
    want = bev_pool_reference(d.detach().double().numpy(), f.detach().double().numpy(), *ranks, bev)
    np.testing.assert_allclose(out.detach().double().numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    grad = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(torch.tensor(grad, dtype=torch.float32))
    assert (d.grad.dtype, f.grad.dtype) == (torch.float32, torch.bfloat16)
    want_d, want_f = bev_pool_backward_reference(grad, d.detach().double().numpy(), f.detach().double().numpy(),
                                                 *ranks)
    np.testing.assert_allclose(d.grad.double().numpy(), want_d, rtol=1e-4, atol=1e-4 * np.abs(want_d).max())
    np.testing.assert_allclose(f.grad.double().numpy(), want_f, rtol=1e-2, atol=1e-2 * np.abs(want_f).max())
    meta = torch.ops.fuller.bev_pool(d.to("meta"), f.to("meta"), *(r.to("meta") for r in as_torch(ranks)), bev)
    assert meta.dtype == torch.float32


def test_non_contiguous_feat():
    """Channels-last feat is usually a permuted view of a conv output (BN, C, h, w)."""
    depth, feat, ranks, bev = random_case(6)
    f = torch.tensor(feat).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert not f.is_contiguous()
    out = torch.ops.fuller.bev_pool(torch.tensor(depth), f, *as_torch(ranks), bev)
    np.testing.assert_allclose(out.numpy(), bev_pool_reference(depth, feat, *ranks, bev), rtol=1e-12, atol=1e-12)


def test_no_points_gives_zeros(path):
    depth, feat, _, bev = random_case(7)
    empty = (np.zeros(0, np.int64),) * 5
    d = torch.tensor(depth, requires_grad=True)
    f = torch.tensor(feat, requires_grad=True)
    out = torch.ops.fuller.bev_pool(d, f, *as_torch(empty), bev)
    assert out.shape == (2, 6, 5, 6) and not out.any()
    out.sum().backward()
    assert not d.grad.any() and not f.grad.any()
    assert not bev_pool_reference(depth, feat, *empty, bev).any()


def _bad_inputs():
    depth, feat, ranks, bev = random_case(8)
    rd, rf, rb, st, ln = ranks
    reordered = rb.copy()
    reordered[[0, -1]] = reordered[[-1, 0]]
    return {
        "depth": (depth[0], feat, ranks, bev),
        "feat": (depth, feat[:, :, :-1], ranks, bev),
        "ranks_feat": (depth, feat, (rd, rf[:-1], rb, st, ln), bev),
        "interval_lengths": (depth, feat, (rd, rf, rb, st, ln[:-1]), bev),
        "bev_shape": (depth, feat, ranks, bev[1:]),
        "ranks_depth": (depth, feat, (rd + depth.size, rf, rb, st, ln), bev),
        "ranks_bev": (depth, feat, (rd, rf, reordered, st, ln), bev),
        "interval_starts": (depth, feat, (rd, rf, rb, st + 1, ln), bev),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_contract_violations_raise_naming_the_argument(name):
    depth, feat, ranks, bev = _bad_inputs()[name]
    with pytest.raises(ValueError, match=f"{name}: expected"):
        torch.ops.fuller.bev_pool(torch.tensor(depth), torch.tensor(feat), *as_torch(ranks), bev)
    with pytest.raises(ValueError, match=f"{name}: expected"):
        bev_pool_reference(depth, feat, *ranks, bev)


def test_wrong_dtypes_raise():
    depth, feat, ranks, bev = random_case(9)
    r = as_torch(ranks)
    with pytest.raises(TypeError, match="ranks_bev: expected dtype torch.int32 or torch.int64, got torch.int16"):
        torch.ops.fuller.bev_pool(torch.tensor(depth), torch.tensor(feat), r[0], r[1], r[2].short(), *r[3:], bev)
    with pytest.raises(TypeError, match="depth: expected a floating dtype"):
        torch.ops.fuller.bev_pool(torch.tensor(depth).int(), torch.tensor(feat), *r, bev)


def test_mixed_devices_raise_and_meta_tensors_give_the_shape():
    depth, feat, ranks, bev = random_case(10)
    d, f, r = torch.tensor(depth), torch.tensor(feat), as_torch(ranks)
    with pytest.raises(ValueError, match="ranks_bev: expected a tensor on cpu"):
        torch.ops.fuller.bev_pool(d, f, r[0], r[1], r[2].to("meta"), *r[3:], bev)
    out = torch.ops.fuller.bev_pool(d.to("meta"), f.to("meta"), *(x.to("meta") for x in r), bev)
    assert out.shape == (2, 6, 5, 6) and out.device.type == "meta"


# ---------------------------------------------------------------------------------------------
# The geometry


def rig(geometry, image_scale=0.25, lidar_yaw=0.0, extra_zoom=1.0):
    """(lidar2image, img_aug, cam2lidar, intrinsics) of the synthetic nuScenes rig for the configured
    cameras. img_aug scales the original image to cover the network input (times extra_zoom) and
    crops the bottom rows and centre columns; lidar_yaw rotates the LiDAR frame (a LiDAR augmentation)."""
    cams = {c.channel: c for c in make_cameras(image_scale)}
    lidar = make_lidar(1.0)
    lidar_aug = pose_matrix(yaw_rotation(lidar_yaw), [0.5, -0.25, 0.1])
    height, width = geometry.image_size
    l2i, augs, c2l, ks = [], [], [], []
    for name in geometry.cameras:
        cam = cams[name]
        cam2lidar = lidar_aug @ np.linalg.inv(pose_matrix(lidar.rotation, lidar.translation)) @ pose_matrix(
            cam.rotation, cam.translation)
        k = np.eye(4)
        k[:3, :3] = cam.intrinsic
        scale = max(width / cam.width, height / cam.height) * extra_zoom
        aug = np.eye(4)
        aug[0, 0] = aug[1, 1] = scale
        aug[0, 3], aug[1, 3] = -(cam.width * scale - width) / 2, -(cam.height * scale - height)
        l2i.append(k @ np.linalg.inv(cam2lidar))
        augs.append(aug)
        c2l.append(cam2lidar)
        ks.append(cam.intrinsic)
    return np.stack(l2i), np.stack(augs), np.stack(c2l), np.stack(ks)


def back_project(u, v, d, aug, cam2lidar, k):
    """LiDAR-frame points of network pixels (u, v) at depth d, undoing the scale+crop and the pinhole
    by hand: no inverse of lidar2image involved."""
    scale, tx, ty = aug[0, 0], aug[0, 3], aug[1, 3]
    u0, v0 = (u - tx) / scale, (v - ty) / scale
    x_cam = (u0 - k[0, 2]) / k[0, 0] * d
    y_cam = (v0 - k[1, 2]) / k[1, 1] * d
    cam = np.stack([x_cam, y_cam, d, np.ones_like(d)], -1)
    return (cam @ cam2lidar.T)[..., :3]


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny").geometry


@pytest.mark.parametrize("lidar_yaw, extra_zoom", [(0.0, 1.0), (0.7, 1.3)])
def test_geometry_matches_independent_back_projection(tiny, lidar_yaw, extra_zoom):
    geometry = dataclasses.replace(tiny, cameras=["CAM_FRONT", "CAM_BACK_LEFT"])
    l2i, aug, c2l, ks = rig(geometry, lidar_yaw=lidar_yaw, extra_zoom=extra_zoom)
    g = compute_geometry(geometry, l2i, aug)
    (height, width), stride = geometry.image_size, 8
    h, w, num_d = height // stride, width // stride, geometry.num_depth_bins
    assert (g.feature_size, g.num_depth_bins, g.bev_shape, g.num_cameras) == ((h, w), num_d, (128, 128), 2)

    d_min, _, step = geometry.depth_bins
    k_, i_, j_ = np.meshgrid(np.arange(num_d), np.arange(h), np.arange(w), indexing="ij")
    u = j_ * (width - 1) / (w - 1)
    v = i_ * (height - 1) / (h - 1)
    d = d_min + k_ * step
    grid, (z_lo, z_hi) = geometry.camera_bev, geometry.camera_z_range
    expected, ambiguous = {}, np.zeros(0, np.int64)
    for n in range(2):
        xyz = back_project(u, v, d, aug[n], c2l[n], ks[n]).reshape(-1, 3)
        fx = (xyz[:, 0] - grid.x_range[0]) / grid.resolution
        fy = (xyz[:, 1] - grid.y_range[0]) / grid.resolution
        ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        inside = (ix >= 0) & (ix < 128) & (iy >= 0) & (iy < 128) & (xyz[:, 2] >= z_lo) & (xyz[:, 2] < z_hi)
        near_edge = ((np.abs(fx - np.round(fx)) < 1e-6) | (np.abs(fy - np.round(fy)) < 1e-6)
                     | (np.abs(xyz[:, 2] - z_lo) < 1e-6) | (np.abs(xyz[:, 2] - z_hi) < 1e-6))
        rank_depth = n * num_d * h * w + np.arange(num_d * h * w)
        expected.update(zip(rank_depth[inside & ~near_edge].tolist(), (ix * 128 + iy)[inside & ~near_edge].tolist()))
        ambiguous = np.r_[ambiguous, rank_depth[near_edge]]
    assert len(ambiguous) < 0.001 * 2 * num_d * h * w
    got = dict(zip(g.ranks_depth.tolist(), g.ranks_bev.tolist()))
    for r in ambiguous.tolist():
        got.pop(r, None)
    assert len(expected) > 10000 and got == expected
    cam, rest = np.divmod(g.ranks_depth, num_d * h * w)
    np.testing.assert_array_equal(g.ranks_feat, cam * h * w + rest % (h * w))
    check_indices((2, num_d, h, w), g.op_inputs(), g.op_bev_shape)
    assert all(a.dtype == np.int64 for a in g.op_inputs())


def test_projected_point_lands_in_its_frustum_cell(tiny):
    """A LiDAR point placed on a frustum sample projects (fuller.geometry.project) to that feature
    pixel and depth, and the geometry pools that sample into the point's BEV cell."""
    l2i, aug, c2l, ks = rig(tiny, lidar_yaw=-0.4, extra_zoom=1.2)
    g = compute_geometry(tiny, l2i, aug)
    (height, width), (h, w), num_d = tiny.image_size, g.feature_size, g.num_depth_bins
    n, k, i, j = 2, 17, 11, 30  # CAM_FRONT_LEFT, 18 m, a pixel below the horizon
    u, v = j * (width - 1) / (w - 1), i * (height - 1) / (h - 1)
    depth = tiny.depth_bins[0] + k * tiny.depth_bins[2]
    point = back_project(np.array([u]), np.array([v]), np.array([depth]), aug[n], c2l[n], ks[n])
    pixel, z = project(point, l2i[n], aug[n])
    np.testing.assert_allclose(pixel[0], [u, v], atol=1e-9)
    np.testing.assert_allclose(z[0], depth, atol=1e-9)

    grid = tiny.camera_bev
    fx = (point[0, 0] - grid.x_range[0]) / grid.resolution
    fy = (point[0, 1] - grid.y_range[0]) / grid.resolution
    assert min(abs(fx - round(fx)), abs(fy - round(fy))) > 0.01  # clear of cell edges
    ix, iy = int(np.floor(fx)), int(np.floor(fy))
    assert 0 <= ix < 128 and 0 <= iy < 128
    where = np.flatnonzero(g.ranks_depth == n * num_d * h * w + k * h * w + i * w + j)
    assert len(where) == 1
    assert g.ranks_feat[where[0]] == n * h * w + i * w + j
    assert g.ranks_bev[where[0]] == ix * 128 + iy


def test_batching_offsets_every_index(tiny):
    geometry = dataclasses.replace(tiny, cameras=["CAM_FRONT", "CAM_BACK"])
    first = compute_geometry(geometry, *rig(geometry)[:2])
    second = compute_geometry(geometry, *rig(geometry, lidar_yaw=0.3, extra_zoom=1.1)[:2])
    batch = batch_geometries([first, second])
    (h, w), num_d, cells = first.feature_size, first.num_depth_bins, 128 * 128
    assert batch.batch_size == 2 and batch.op_bev_shape == [2, 128, 128]
    p = first.num_points
    assert batch.num_points == p + second.num_points
    np.testing.assert_array_equal(batch.ranks_bev[p:], second.ranks_bev + cells)
    np.testing.assert_array_equal(batch.ranks_depth[p:], second.ranks_depth + 2 * num_d * h * w)
    np.testing.assert_array_equal(batch.ranks_feat[p:], second.ranks_feat + 2 * h * w)
    np.testing.assert_array_equal(batch.interval_starts[len(first.interval_starts):], second.interval_starts + p)
    np.testing.assert_array_equal(batch.ranks_bev[:p], first.ranks_bev)
    check_indices((4, num_d, h, w), batch.op_inputs(), batch.op_bev_shape)
    nested = batch_geometries([batch, first])
    assert nested.batch_size == 3
    np.testing.assert_array_equal(nested.ranks_bev[batch.num_points:], first.ranks_bev + 2 * cells)


def test_batching_rejects_mismatched_layouts(tiny):
    geometry = dataclasses.replace(tiny, cameras=["CAM_FRONT"])
    g = compute_geometry(geometry, *rig(geometry)[:2])
    other = dataclasses.replace(g, num_depth_bins=g.num_depth_bins + 1)
    with pytest.raises(ValueError, match=r"geoms\[1\].num_depth_bins"):
        batch_geometries([g, other])
    with pytest.raises(ValueError, match="geoms"):
        batch_geometries([])


def test_geometry_feeds_the_op(tiny):
    """With all-ones depth and feat, each BEV cell receives its number of frustum points."""
    geometry = dataclasses.replace(tiny, cameras=["CAM_FRONT_RIGHT"])
    g = batch_geometries([compute_geometry(geometry, *rig(geometry)[:2])] * 2)
    (h, w), num_d = g.feature_size, g.num_depth_bins
    out = torch.ops.fuller.bev_pool(torch.ones(2, num_d, h, w), torch.ones(2, h, w, 3),
                                    *as_torch(g.op_inputs()), g.op_bev_shape)
    counts = np.bincount(g.ranks_bev, minlength=2 * 128 * 128).reshape(2, 128, 128)
    np.testing.assert_array_equal(out[:, 0].numpy(), counts)
    assert isinstance(g, BEVPoolGeometry)


def test_cache_computes_once_per_calibration(tiny):
    geometry = dataclasses.replace(tiny, cameras=["CAM_FRONT"])
    l2i, aug = rig(geometry)[:2]
    cache = GeometryCache(geometry, feature_stride=8, max_entries=2)
    first = cache.get(l2i, aug)
    assert cache.get(l2i.copy(), aug.copy()) is first
    assert (cache.hits, cache.misses) == (1, 1)
    moved = l2i.copy()
    moved[0, 0, 3] += 1e-9
    assert cache.get(moved, aug) is not first and (cache.hits, cache.misses) == (1, 2)
    assert cache.get(l2i, aug) is first and (cache.hits, cache.misses) == (2, 2)
    zoomed = aug.copy()
    zoomed[:, :2, :2] *= 1.01
    cache.get(l2i, zoomed)  # a third calibration evicts the least recently used one (moved)
    assert len(cache) == 2 and (cache.hits, cache.misses) == (2, 3)
    assert cache.get(l2i, aug) is first
    cache.get(moved, aug)
    assert (cache.hits, cache.misses) == (3, 4)


def test_geometry_rejects_bad_calibration(tiny):
    geometry = dataclasses.replace(tiny, cameras=["CAM_FRONT", "CAM_BACK"])
    l2i, aug = rig(geometry)[:2]
    with pytest.raises(ValueError, match=r"lidar2image: expected shape \(2, 4, 4\)"):
        compute_geometry(geometry, l2i[:1], aug)
    singular = aug.copy()
    singular[1, 2] = 0.0
    with pytest.raises(ValueError, match="img_aug: expected invertible"):
        compute_geometry(geometry, l2i, singular)
    with pytest.raises(ValueError, match="feature_stride"):
        compute_geometry(geometry, l2i, aug, feature_stride=7)


# ---------------------------------------------------------------------------------------------
# Runtime kernels: NumPy (SciPy CSR) and ONNX Runtime, float32, int32 indices


def _int32(ranks):
    return tuple(np.asarray(r, dtype=np.int32) for r in ranks)


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_kernel_matches_reference(seed):
    from fuller.plugins.bev_pool.numpy_kernel import bev_pool_numpy

    depth, feat, ranks, bev = random_case(seed)
    want = bev_pool_reference(depth, feat, *ranks, bev)
    got = bev_pool_numpy(depth.astype(np.float32), feat.astype(np.float32), *_int32(ranks), bev)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_numpy_kernel_float16_accumulates_in_float32():
    from fuller.plugins.bev_pool.numpy_kernel import bev_pool_numpy

    depth, feat, ranks, bev = long_sum_case(6)
    depth16, feat16 = depth.astype(np.float16), feat.astype(np.float16)
    got = bev_pool_numpy(depth16, feat16, *_int32(ranks), bev)
    assert got.dtype == np.float16
    want = bev_pool_reference(depth16.astype(np.float64), feat16.astype(np.float64), *ranks, bev)
    assert_float32_accumulation(got.astype(np.float64), want, float(np.finfo(np.float16).eps))


def test_numpy_kernel_checks_the_contract():
    from fuller.plugins.bev_pool.numpy_kernel import bev_pool_numpy

    depth, feat, ranks, bev = random_case(2)
    rd, rf, rb, starts, lengths = _int32(ranks)
    with pytest.raises(ValueError, match="ranks_bev: expected values sorted"):
        bev_pool_numpy(depth, feat, rd, rf, rb[::-1].copy(), starts, lengths, bev)


@pytest.fixture(scope="module")
def ort_bev_pool():
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install fuller[export])")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install fuller[export])")
    pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")
    from onnx import TensorProto, helper

    from fuller.plugins import ort_session_options, register_onnx_schemas
    from fuller.plugins.bev_pool.reference import RANK_NAMES

    register_onnx_schemas()
    options = ort_session_options()

    def run(depth, feat, ranks, bev):
        b, x, y = bev
        inputs = [helper.make_tensor_value_info("depth", TensorProto.FLOAT, list(depth.shape)),
                  helper.make_tensor_value_info("feat", TensorProto.FLOAT, list(feat.shape)),
                  *(helper.make_tensor_value_info(n, TensorProto.INT32, ["P" if i < 3 else "I"])
                    for i, n in enumerate(RANK_NAMES))]
        node = helper.make_node("BevPool", ["depth", "feat", *RANK_NAMES], ["out"], domain="fuller",
                                batch_size=b, grid_x=x, grid_y=y)
        out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [b, feat.shape[-1], x, y])
        model = helper.make_model(helper.make_graph([node], "bev_pool", inputs, [out]), ir_version=10,
                                  opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("fuller", 1)])
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"depth": depth.astype(np.float32), "feat": feat.astype(np.float32),
                 **dict(zip(RANK_NAMES, _int32(ranks)))}
        return session.run(None, feeds)[0]

    return run


@pytest.mark.parametrize("points", [300, 0])
def test_onnxruntime_kernel_matches_reference(ort_bev_pool, points):
    """Including no points at all (every cell empty) and cells no point reaches."""
    depth, feat, ranks, bev = random_case(3)
    if points == 0:
        ranks = tuple(np.zeros(0, np.int64) for _ in ranks)
    want = bev_pool_reference(depth, feat, *ranks, bev)
    got = ort_bev_pool(depth, feat, ranks, bev)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if points == 0:
        assert not got.any()
