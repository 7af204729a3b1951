"""The compiled CPU loops of the sparse layer (Numba): the strided output sites, the rulebook and the
fused gather-GEMM that ONNX Runtime runs in place of each layer's Gather + MatMul + Add.

Why compiled: as NumPy these were 185 ms of the tiny model's 320 ms ONNX Runtime frame, most of
it in temporaries (every (site, tap) key of a layer materialised as int64, the gathered rows and
products of every tap) rather than in arithmetic. Here each loop visits its data once, in parallel
over output sites, and the GEMMs go to BLAS on blocks that stay in cache. Numba compiles each
function once per machine and caches it next to this file (or in the user's cache where that is
read-only), so only the first process pays the compile.

The algorithms are the Triton kernels' (`triton_kernel.py`): the rulebook is a binary search among
the sorted input keys (here one per z column, `rulebook_table`), the strided sites the sorted unique
candidate keys.
Keys are ``((b * X + x) * Y + y) * Z + z`` (`reference.site_keys`). Inputs are checked by the
callers (`rulebook.py`, `ort_kernel.py`); these functions trust them.
"""
from __future__ import annotations

import numba
import numpy as np

BLOCK = 64
"""Output sites per gather-GEMM block: their gathered rows (at most 64 x Cin floats) and the product
stay in cache while a tap's filter is applied (64 and 128 measure the same on the tiny model's
layers, 256 is 1.6x slower)."""


@numba.njit(parallel=True, cache=True)
def rulebook_table(in_keys, sites, kernel, stride, padding, shape, none):
    """(M, taps) int32: the row of ``in_keys`` (sorted int64) at each site's tap ``sites[m] * stride
    - padding + tap``, or ``none`` where there is no input there; taps in the filter's row-major
    order.

    The z taps of one (x, y) column are consecutive keys, so one binary search finds the first and
    a step forward each of the others (the input keys are sorted and unique): a third of the
    searches of looking up every tap."""
    c = len(in_keys)
    kx, ky, kz = kernel
    gx, gy, gz = shape
    table = np.empty((len(sites), kx * ky * kz), np.int32)
    for m in numba.prange(len(sites)):
        table[m] = none
        b = np.int64(sites[m, 0])
        for i in range(kx):
            x = np.int64(sites[m, 1]) * stride[0] - padding[0] + i
            for j in range(ky):
                y = np.int64(sites[m, 2]) * stride[1] - padding[1] + j
                if not (0 <= x < gx and 0 <= y < gy):
                    continue
                column = ((b * gx + x) * gy + y) * gz
                pos = -1
                for k in range(kz):
                    z = np.int64(sites[m, 3]) * stride[2] - padding[2] + k
                    if not 0 <= z < gz:
                        continue
                    key = column + z
                    if pos < 0:
                        pos = np.searchsorted(in_keys, key)
                    while pos < c and in_keys[pos] < key:
                        pos += 1
                    if pos < c and in_keys[pos] == key:
                        table[m, (i * ky + j) * kz + k] = pos
    return table


@numba.njit(cache=True)
def strided_site_keys(coords, kernel, stride, padding, out_shape):
    """The sorted unique keys on ``out_shape`` of the sites that some row of ``coords`` (valid rows
    only) reaches: ``o = (p + padding - tap) / stride`` where that divides and lands in the grid.

    Unique by marking a flag per output cell and reading the flags in order where there are at most
    64 cells per candidate, else by sorting the candidates: flags cost a pass over the cells,
    sorting n log n in the candidates, and the two measure the same near 128 cells per candidate
    (a tiny-model frame has under 10; at 8, 60 000 candidates take 0.6 ms where sorting takes 4.4)."""
    reach = 1
    for a in range(3):
        reach *= -(-kernel[a] // stride[a])
    keys = np.empty(len(coords) * reach, np.int64)
    n = 0
    ox, oy, oz = out_shape
    for r in range(len(coords)):
        b = np.int64(coords[r, 0])
        for i in range(kernel[0]):
            nx = np.int64(coords[r, 1]) + padding[0] - i
            if nx < 0 or nx % stride[0] or nx // stride[0] >= ox:
                continue
            for j in range(kernel[1]):
                ny = np.int64(coords[r, 2]) + padding[1] - j
                if ny < 0 or ny % stride[1] or ny // stride[1] >= oy:
                    continue
                for k in range(kernel[2]):
                    nz = np.int64(coords[r, 3]) + padding[2] - k
                    if nz < 0 or nz % stride[2] or nz // stride[2] >= oz:
                        continue
                    keys[n] = ((b * ox + nx // stride[0]) * oy + ny // stride[1]) * oz + nz // stride[2]
                    n += 1
    cells = (np.int64(coords[:, 0].max()) + 1) * ox * oy * oz if n else 0
    if cells > 64 * n:
        return np.unique(keys[:n])
    seen = np.zeros(cells, np.bool_)
    for q in range(n):
        seen[keys[q]] = True
    return np.flatnonzero(seen).astype(np.int64)


@numba.njit(parallel=True, cache=True)
def gather_gemm(features, neighbours, weight, bias):
    """(M, Cout) float32: ``bias + sum over taps t of features[neighbours[:, t]] @ W_t`` where the
    neighbour exists (``< N``, the rows of ``features``); ``weight`` is (taps * Cin, Cout).

    Output-stationary, spconv's gather-GEMM-scatter per block of output sites: per tap, the block's
    sites that have a neighbour there gather it, one GEMM with that tap's filter, each product row
    added to its site. Blocks own disjoint output rows, so they run in parallel without atomics, and
    only (site, tap) pairs with a neighbour are multiplied (on a tiny-model frame 16-23 % of them at
    full resolution, 52-61 % at the coarser levels)."""
    n, cin = features.shape
    m, taps = neighbours.shape
    cout = weight.shape[1]
    w = weight.reshape(taps, cin, cout)
    out = np.empty((m, cout), np.float32)
    for block in numba.prange((m + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        hi = min(m, lo + BLOCK)
        rows = np.empty((BLOCK, cin), np.float32)
        product = np.empty((BLOCK, cout), np.float32)
        owner = np.empty(BLOCK, np.int64)
        for i in range(lo, hi):
            out[i] = bias
        for t in range(taps):
            h = 0
            for i in range(lo, hi):
                r = neighbours[i, t]
                if r < n:
                    rows[h] = features[r]
                    owner[h] = i
                    h += 1
            if h:
                np.dot(rows[:h], w[t], product[:h])
                for q in range(h):
                    out[owner[q]] += product[q]
    return out


def compile_all() -> None:
    """Compile every loop (about 13 s on first use on a machine) or load it from the cache (about
    0.5 s), for the argument types the kernels pass, so that an engine pays it when it loads and its
    first frame runs at speed: a first frame that stalls for seconds trips a vehicle's watchdog."""
    coords = np.zeros((1, 4), np.int32)
    ones, zeros = (1, 1, 1), (0, 0, 0)
    rulebook_table(np.zeros(1, np.int64), coords, ones, ones, zeros, ones, 1)
    strided_site_keys(coords, ones, ones, zeros, ones)
    gather_gemm(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32),
                np.zeros(1, np.float32))
