"""The NumPy kernel of ``fuller::SparseConv3d``: output sites, neighbour pairs, gather-GEMM-scatter.

Shared by the torch op's CPU path and the ONNX Runtime kernel, so both compute the same thing the
same way. Sites are int64 keys ``((b * X + x) * Y + y) * Z + z``; neighbours are found with one
``searchsorted`` per tap over the sorted keys (no Python loop over voxels) into a (sites, taps)
table, and the convolution is a GEMM of each block of gathered neighbourhoods with the whole
filter, so nothing is scattered.
"""
from __future__ import annotations

import itertools

import numpy as np

from .reference import ConvGeometry, check_inputs


# Gathered neighbourhood elements per GEMM block (16 MB of float32): bounds memory at any capacity.
BLOCK_ELEMENTS = 1 << 22


def site_keys(coords: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """int64 keys of (b, x, y, z) rows on a grid of ``shape``; sorted keys are the SPEC's row order."""
    c = coords.astype(np.int64)
    return ((c[:, 0] * shape[0] + c[:, 1]) * shape[1] + c[:, 2]) * shape[2] + c[:, 3]


def keys_to_coords(keys: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    rest, z = np.divmod(keys, shape[2])
    rest, y = np.divmod(rest, shape[1])
    b, x = np.divmod(rest, shape[0])
    return np.stack([b, x, y, z], axis=1).astype(np.int32)


def _taps(geom: ConvGeometry) -> list[tuple[int, int, int]]:
    return list(itertools.product(*(range(k) for k in geom.kernel)))


def output_sites(coords: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """(M, 4) int32 output sites of the valid input ``coords`` (SPEC: input order for subm, else
    sorted by key), before the capacity cut."""
    if geom.subm:
        return coords
    out_shape = np.array(geom.out_shape)
    candidates = []
    for tap in _taps(geom):
        num = coords[:, 1:].astype(np.int64) + np.array(geom.padding) - np.array(tap)
        o, rem = np.divmod(num, np.array(geom.stride))
        ok = (rem == 0).all(1) & (o >= 0).all(1) & (o < out_shape).all(1)
        candidates.append(site_keys(np.concatenate([coords[ok, :1], o[ok]], axis=1), geom.out_shape))
    keys = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, np.int64)
    return keys_to_coords(keys, geom.out_shape)


def neighbour_table(in_coords: np.ndarray, out_coords: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """(M, taps) int64: for output site m and tap t, the input row at m * stride - padding + t,
    or ``len(in_coords)`` (a zero row appended by the caller) where there is none."""
    in_keys = site_keys(in_coords, geom.shape)
    order = np.argsort(in_keys, kind="stable")
    sorted_keys = in_keys[order]
    if len(sorted_keys) > 1 and (np.diff(sorted_keys) == 0).any():
        dup = order[np.flatnonzero(np.diff(sorted_keys) == 0)[0]]
        raise ValueError(f"sparse_conv3d: coords: site {in_coords[dup].tolist()} appears in more than one row")
    shape = np.array(geom.shape)
    table = np.full((len(out_coords), geom.taps), len(in_coords), dtype=np.int64)
    if not len(sorted_keys):
        return table
    base = out_coords[:, 1:].astype(np.int64) * np.array(geom.stride) - np.array(geom.padding)
    for t, tap in enumerate(_taps(geom)):
        p = base + np.array(tap)
        inside = np.flatnonzero(((p >= 0) & (p < shape)).all(1))
        keys = site_keys(np.concatenate([out_coords[inside, :1], p[inside]], axis=1), geom.shape)
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        hit = sorted_keys[pos] == keys
        table[inside[hit], t] = order[pos[hit]]
    return table


def sparse_conv3d(features: np.ndarray, coords: np.ndarray, count: np.ndarray, weight: np.ndarray,
                  bias: np.ndarray, geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SPEC.md semantics; outputs in the dtype of ``features`` (float16 accumulates in float32).

    Each block of output rows gathers its (rows, taps x Cin) neighbourhood, with a zero row standing
    in for missing neighbours, and multiplies it by the (taps x Cin, Cout) filter: one GEMM per
    block instead of a gather, a GEMM and a scatter per tap."""
    c = check_inputs(features, coords, count, weight, bias, geom)
    compute = np.float64 if features.dtype == np.float64 else np.float32
    cin, cout = weight.shape[3], weight.shape[4]
    rows = np.zeros((c + 1, cin), dtype=compute)
    rows[:c] = features[:c]
    in_coords = coords[:c]
    out_coords = output_sites(in_coords, geom)[: geom.out_capacity]
    m = len(out_coords)
    w = weight.astype(compute, copy=False).reshape(geom.taps * cin, cout)
    out = np.zeros((geom.out_capacity, cout), dtype=compute)
    if m:
        table = neighbour_table(in_coords, out_coords, geom)
        step = max(1, BLOCK_ELEMENTS // (geom.taps * cin))
        for s in range(0, m, step):
            e = min(s + step, m)
            out[s:e] = rows[table[s:e]].reshape(e - s, geom.taps * cin) @ w
        out[:m] += bias.astype(compute)
    padded = np.full((geom.out_capacity, 4), -1, dtype=np.int32)
    padded[:m] = out_coords
    return out.astype(features.dtype, copy=False), padded, np.array([m], dtype=np.int32)


def capacity(in_capacity: int, geom: ConvGeometry, batch_size: int) -> int:
    """Rows that can never overflow (SPEC): each input reaches at most prod(ceil(k / s)) output
    sites, and there are only so many cells."""
    if geom.subm:
        return in_capacity
    reach = int(np.prod([-(-k // s) for k, s in zip(geom.kernel, geom.stride)]))
    return int(min(in_capacity * reach, np.prod(geom.out_shape) * batch_size))
