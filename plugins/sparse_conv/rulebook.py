"""The NumPy kernels of ``fuller::SparseSites`` and ``fuller::SparseRulebook`` (SPEC.md).

Shared by the torch ops' CPU path and the ONNX Runtime kernels, so both compute the same thing the
same way. Sites are int64 keys (`reference.site_keys`), linear in the coordinates, so every
(row, tap) key of a layer is one broadcast sum of per-axis terms: the strided sites are the unique
candidate keys, and the neighbours one ``searchsorted`` of all (site, tap) keys in the input keys,
which the SPEC's contract keeps sorted. No Python loop over voxels or taps.
"""
from __future__ import annotations

import itertools

import numpy as np

from .reference import ConvGeometry, check_coords, site_keys

SITES_OP, RULEBOOK_OP = "fuller::SparseSites", "fuller::SparseRulebook"


def keys_to_coords(keys: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    rest, z = np.divmod(keys, shape[2])
    rest, y = np.divmod(rest, shape[1])
    b, x = np.divmod(rest, shape[0])
    return np.stack([b, x, y, z], axis=1).astype(np.int32)


def taps(geom: ConvGeometry) -> list[tuple[int, int, int]]:
    """Kernel offsets in tap order ``t = (i * Ky + j) * Kz + k``, the filter's row-major order."""
    return list(itertools.product(*(range(k) for k in geom.kernel)))


def _axis_terms(values: np.ndarray, valid: np.ndarray, axis: int, grid: tuple[int, int, int]) -> np.ndarray:
    """An axis's share of the key, ``value * (cells per step along it)``, with invalid entries
    pushed far below any key, so that a sum over the three axes is a key exactly when every axis
    is valid (the key is linear in the coordinates)."""
    step = int(np.prod(grid[axis + 1:]))
    return np.where(valid, values * step, np.int64(-1) << 60)


def _keys_by_tap(batch: np.ndarray, per_axis: list[tuple[np.ndarray, np.ndarray]],
                 grid: tuple[int, int, int]) -> np.ndarray:
    """(taps, rows) keys on ``grid`` from per-axis (rows, K_a) coordinates and validity, taps in
    the filter's order; negative where any axis is invalid. Tap-major, so each tap's keys are in
    the rows' order: for sorted rows, sorted runs, which a binary search walks through faster."""
    (x, vx), (y, vy), (z, vz) = per_axis
    keys = (batch * int(np.prod(grid)))[None, None, None, :] \
        + _axis_terms(x, vx, 0, grid).T[:, None, None, :] + _axis_terms(y, vy, 1, grid).T[None, :, None, :] \
        + _axis_terms(z, vz, 2, grid).T[None, None, :, :]
    return keys.reshape(x.shape[1] * y.shape[1] * z.shape[1], len(batch))


def sparse_sites(coords: np.ndarray, count: np.ndarray, geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(out_coords (M, 4) int32, out_count (1,) int32): the valid rows for ``subm``, else the strided
    output sites by key, at most ``out_capacity`` of them. Each input's candidates, ``o = (p +
    padding - tap) / stride`` where that divides and lands in the grid, form one (rows, taps) key
    array; the sites are its unique keys."""
    c = check_coords(coords, count, geom.shape, SITES_OP)
    if geom.subm and geom.out_capacity != len(coords):
        raise ValueError(f"{SITES_OP}: out_capacity: expected {len(coords)} (= N) for subm = 1, "
                         f"got {geom.out_capacity}")
    valid = coords[:c]
    if geom.subm:
        return valid.copy(), np.array([c], dtype=np.int32)
    per_axis = []
    for a in range(3):
        num = valid[:, 1 + a, None].astype(np.int64) + geom.padding[a] - np.arange(geom.kernel[a])
        o, rem = np.divmod(num, geom.stride[a])
        per_axis.append((o, (rem == 0) & (o >= 0) & (o < geom.out_shape[a])))
    keys = _keys_by_tap(valid[:, 0].astype(np.int64), per_axis, geom.out_shape)
    keys = np.unique(keys[keys >= 0])[: geom.out_capacity]
    return keys_to_coords(keys, geom.out_shape), np.array([len(keys)], dtype=np.int32)


def sparse_rulebook(coords: np.ndarray, count: np.ndarray, sites: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """(M, taps) int32: for output site m and tap t, the input row at ``sites[m] * stride - padding
    + tap``, or N (the rows of ``coords``) where there is none: every (site, tap) key at once, looked
    up with one ``searchsorted`` in the sorted input keys."""
    c = check_coords(coords, count, geom.shape, RULEBOOK_OP)
    out_shape = np.array(geom.out_shape)
    if sites.ndim != 2 or sites.shape[1] != 4 or sites.dtype != np.int32:
        raise ValueError(f"{RULEBOOK_OP}: sites: expected (M, 4) int32, got {sites.shape} {sites.dtype}")
    bad = np.flatnonzero((sites[:, 0] < 0) | (sites[:, 1:] < 0).any(1) | (sites[:, 1:] >= out_shape).any(1))
    if bad.size:
        raise ValueError(f"{RULEBOOK_OP}: sites: row {bad[0]} = {sites[bad[0]].tolist()} is outside batch >= 0 "
                         f"and the output grid {tuple(out_shape)}")
    table = np.full((len(sites), geom.taps), len(coords), dtype=np.int32)
    if not c or not len(sites):
        return table
    per_axis = []
    for a in range(3):
        p = sites[:, 1 + a, None].astype(np.int64) * geom.stride[a] - geom.padding[a] + np.arange(geom.kernel[a])
        per_axis.append((p, (p >= 0) & (p < geom.shape[a])))
    keys = _keys_by_tap(sites[:, 0].astype(np.int64), per_axis, geom.shape)
    in_keys = site_keys(coords[:c], geom.shape)
    pos = np.minimum(np.searchsorted(in_keys, keys), c - 1)
    hit = in_keys[pos] == keys  # an invalid (negative) key never equals an input key
    table.T[hit] = pos[hit]
    return table


def capacity(in_capacity: int, geom: ConvGeometry, batch_size: int) -> int:
    """Sites that can never overflow (SPEC): each input reaches at most prod(ceil(k / s)) output
    sites, and there are only so many cells."""
    if geom.subm:
        return in_capacity
    reach = int(np.prod([-(-k // s) for k, s in zip(geom.kernel, geom.stride)]))
    return int(min(in_capacity * reach, np.prod(geom.out_shape) * batch_size))
