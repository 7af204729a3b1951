"""The CPU kernels of ``fuller::SparseSites`` and ``fuller::SparseRulebook`` (SPEC.md): the checks of
their inputs and attributes, around the compiled loops of `cpu_kernels.py`.

Shared by the torch ops' CPU path and the ONNX Runtime kernels, so both compute the same thing the
same way. Sites are int64 keys (`reference.site_keys`): the strided sites are the unique candidate
keys of the input rows, and the neighbours a binary search of each (site, tap) key in the input
keys, which the SPEC's contract keeps sorted.
"""
from __future__ import annotations

import itertools

import numpy as np

from .cpu_kernels import rulebook_table, strided_site_keys
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


def sparse_sites(coords: np.ndarray, count: np.ndarray, geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(out_coords (M, 4) int32, out_count (1,) int32): the valid rows for ``subm``, else the strided
    output sites by key, at most ``out_capacity`` of them."""
    c = check_coords(coords, count, geom.shape, SITES_OP)
    if geom.subm and geom.out_capacity != len(coords):
        raise ValueError(f"{SITES_OP}: out_capacity: expected {len(coords)} (= N) for subm = 1, "
                         f"got {geom.out_capacity}")
    valid = coords[:c]
    if geom.subm:
        return valid.copy(), np.array([c], dtype=np.int32)
    keys = strided_site_keys(valid, geom.kernel, geom.stride, geom.padding, geom.out_shape)[: geom.out_capacity]
    return keys_to_coords(keys, geom.out_shape), np.array([len(keys)], dtype=np.int32)


def sparse_rulebook(coords: np.ndarray, count: np.ndarray, sites: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """(M, taps) int32: for output site m and tap t, the input row at ``sites[m] * stride - padding
    + tap``, or N (the rows of ``coords``) where there is none."""
    c = check_coords(coords, count, geom.shape, RULEBOOK_OP)
    out_shape = np.array(geom.out_shape)
    if sites.ndim != 2 or sites.shape[1] != 4 or sites.dtype != np.int32:
        raise ValueError(f"{RULEBOOK_OP}: sites: expected (M, 4) int32, got {sites.shape} {sites.dtype}")
    bad = np.flatnonzero((sites[:, 0] < 0) | (sites[:, 1:] < 0).any(1) | (sites[:, 1:] >= out_shape).any(1))
    if bad.size:
        raise ValueError(f"{RULEBOOK_OP}: sites: row {bad[0]} = {sites[bad[0]].tolist()} is outside batch >= 0 "
                         f"and the output grid {tuple(out_shape)}")
    return rulebook_table(site_keys(coords[:c], geom.shape), np.ascontiguousarray(sites), geom.kernel, geom.stride,
                          geom.padding, geom.shape, len(coords))


def capacity(in_capacity: int, geom: ConvGeometry, batch_size: int) -> int:
    """Sites that can never overflow (SPEC): each input reaches at most prod(ceil(k / s)) output
    sites, and there are only so many cells."""
    if geom.subm:
        return in_capacity
    reach = int(np.prod([-(-k // s) for k, s in zip(geom.kernel, geom.stride)]))
    return int(min(in_capacity * reach, np.prod(geom.out_shape) * batch_size))
