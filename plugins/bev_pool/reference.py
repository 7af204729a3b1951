"""float64 NumPy reference of ``fuller::bev_pool``: the ground truth every implementation is tested
against (torch op, ONNX Runtime kernel, GPU kernel, TensorRT plugin). Written for clarity, not speed:
a plain scatter-add over points with ``np.add.at``, and the closed-form gradients.

It also holds the contract checks shared by the implementations: :func:`check_shapes` works on
shape tuples only (so the torch op and its fake/meta version report the same messages) and
:func:`check_indices` on NumPy index arrays. See SPEC.md.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RANK_NAMES = ("ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths")


def _fail(name: str, expected: str, got: object) -> None:
    raise ValueError(f"bev_pool: {name}: expected {expected}, got {got}")


def check_shapes(depth_shape: Sequence[int], feat_shape: Sequence[int], rank_shapes: Sequence[Sequence[int]],
                 bev_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Validate the shapes of the op's inputs; returns (B, C, X, Y), the output shape.

    ``rank_shapes`` are the shapes of ranks_depth, ranks_feat, ranks_bev, interval_starts,
    interval_lengths in that order.
    """
    depth_shape, feat_shape = tuple(depth_shape), tuple(feat_shape)
    if len(depth_shape) != 4:
        _fail("depth", "a 4-D tensor (BN, D, h, w)", f"shape {depth_shape}")
    if len(feat_shape) != 4:
        _fail("feat", "a 4-D tensor (BN, h, w, C), channels last", f"shape {feat_shape}")
    bn, _, h, w = depth_shape
    if (feat_shape[0], feat_shape[1], feat_shape[2]) != (bn, h, w):
        _fail("feat", f"shape ({bn}, {h}, {w}, C) to match depth (BN, D, h, w) = {depth_shape}",
              f"shape {feat_shape}")
    if len(rank_shapes) != len(RANK_NAMES):
        _fail("ranks", f"{len(RANK_NAMES)} index tensors {RANK_NAMES}", f"{len(rank_shapes)}")
    shapes = [tuple(s) for s in rank_shapes]
    for name, shape in zip(RANK_NAMES, shapes):
        if len(shape) != 1:
            _fail(name, "a 1-D tensor", f"shape {shape}")
    num_points = shapes[0][0]
    for name, shape in zip(RANK_NAMES[1:3], shapes[1:3]):
        if shape[0] != num_points:
            _fail(name, f"length {num_points} (that of ranks_depth)", f"length {shape[0]}")
    if shapes[4][0] != shapes[3][0]:
        _fail("interval_lengths", f"length {shapes[3][0]} (that of interval_starts)", f"length {shapes[4][0]}")
    bev = list(bev_shape)
    if len(bev) != 3 or any(int(v) < 1 for v in bev):
        _fail("bev_shape", "[B, X, Y], three positive integers", bev)
    return int(bev[0]), int(feat_shape[3]), int(bev[1]), int(bev[2])


def check_indices(depth_shape: Sequence[int], ranks: Sequence[np.ndarray], bev_shape: Sequence[int]) -> None:
    """Validate the index values: in range, ranks_bev sorted, intervals exactly its runs."""
    ranks_depth, ranks_feat, ranks_bev, starts, lengths = (np.asarray(r) for r in ranks)
    for name, r in zip(RANK_NAMES, (ranks_depth, ranks_feat, ranks_bev, starts, lengths)):
        if r.dtype not in (np.int32, np.int64):
            raise TypeError(f"bev_pool: {name}: expected dtype int32 or int64, got {r.dtype}")
    bn, d, h, w = depth_shape
    limits = {"ranks_depth": bn * d * h * w, "ranks_feat": bn * h * w,
              "ranks_bev": int(np.prod(list(bev_shape)))}
    for name, r in zip(RANK_NAMES[:3], (ranks_depth, ranks_feat, ranks_bev)):
        if r.size and (r.min() < 0 or r.max() >= limits[name]):
            _fail(name, f"values in [0, {limits[name]})", f"values in [{r.min()}, {r.max()}]")
    if ranks_bev.size and np.any(ranks_bev[1:] < ranks_bev[:-1]):
        _fail("ranks_bev", "values sorted in non-decreasing order", "an unsorted array")
    if ranks_bev.size:
        want = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]])
        want_lengths = np.diff(np.r_[want, ranks_bev.size])
    else:
        want = want_lengths = np.zeros(0, np.int64)
    if starts.shape != want.shape or np.any(starts != want):
        _fail("interval_starts", f"the {want.size} start offsets of the runs of equal ranks_bev",
              f"{starts.size} values that differ")
    if np.any(lengths != want_lengths):
        _fail("interval_lengths", "the lengths of the runs of equal ranks_bev", "values that differ")


def _rows(depth: np.ndarray, feat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return depth.astype(np.float64).reshape(-1), feat.astype(np.float64).reshape(-1, feat.shape[-1])


def bev_pool_reference(depth: np.ndarray, feat: np.ndarray, ranks_depth: np.ndarray, ranks_feat: np.ndarray,
                       ranks_bev: np.ndarray, interval_starts: np.ndarray, interval_lengths: np.ndarray,
                       bev_shape: Sequence[int]) -> np.ndarray:
    """(B, C, X, Y) float64: out[b, :, ix, iy] = sum over points p of cell b*X*Y + ix*Y + iy of
    depth.flat[ranks_depth[p]] * feat rows[ranks_feat[p]]."""
    ranks = (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
    b, c, x, y = check_shapes(np.shape(depth), np.shape(feat), [np.shape(r) for r in ranks], bev_shape)
    check_indices(np.shape(depth), ranks, bev_shape)
    depth_flat, feat_rows = _rows(depth, feat)
    out = np.zeros((b * x * y, c), dtype=np.float64)
    np.add.at(out, ranks_bev, depth_flat[ranks_depth][:, None] * feat_rows[ranks_feat])
    return out.reshape(b, x, y, c).transpose(0, 3, 1, 2).copy()


def bev_pool_backward_reference(grad_out: np.ndarray, depth: np.ndarray, feat: np.ndarray,
                                ranks_depth: np.ndarray, ranks_feat: np.ndarray, ranks_bev: np.ndarray,
                                interval_starts: np.ndarray, interval_lengths: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray]:
    """(grad_depth, grad_feat) float64 for the upstream gradient grad_out (B, C, X, Y).

    The output is bilinear in depth and feat, so with g the grad_out row of a point's cell:
    d/d depth.flat[ranks_depth[p]] += <g, feat_row[ranks_feat[p]]> and
    d/d feat_row[ranks_feat[p]] += depth.flat[ranks_depth[p]] * g.
    """
    grad_out = np.asarray(grad_out, dtype=np.float64)
    bev_shape = (grad_out.shape[0], grad_out.shape[2], grad_out.shape[3])
    ranks = (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
    b, c, x, y = check_shapes(np.shape(depth), np.shape(feat), [np.shape(r) for r in ranks], bev_shape)
    if grad_out.shape != (b, c, x, y):
        _fail("grad_out", f"shape {(b, c, x, y)}", f"shape {grad_out.shape}")
    check_indices(np.shape(depth), ranks, bev_shape)
    depth_flat, feat_rows = _rows(depth, feat)
    grad_rows = grad_out.transpose(0, 2, 3, 1).reshape(-1, c)
    grad_depth = np.zeros_like(depth_flat)
    np.add.at(grad_depth, ranks_depth, np.einsum("pc,pc->p", grad_rows[ranks_bev], feat_rows[ranks_feat]))
    grad_feat = np.zeros_like(feat_rows)
    np.add.at(grad_feat, ranks_feat, depth_flat[ranks_depth][:, None] * grad_rows[ranks_bev])
    return grad_depth.reshape(np.shape(depth)), grad_feat.reshape(np.shape(feat))
