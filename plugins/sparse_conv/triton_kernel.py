"""GPU kernels of ``fuller::SparseSites`` and ``fuller::SparseRulebook`` (Triton), one launch each.

Every kernel reads the valid-row count from its device tensor, writes only into outputs its caller
allocated at their capacity, and never synchronises with the host, so TensorRT can launch each as
the single kernel of an ahead-of-time plugin (``trt_plugin.py``). Each kernel's runtime parameters
are ordered (input pointers, int32 scalars, output pointers), the order of TensorRT's launcher
(:data:`KERNELS`); the geometry is compile-time constants, so each layer gets its own PTX. All rely
on the SPEC's contract (valid rows inside the grid, sorted by key, unique), which the voxeliser and
the ops themselves guarantee, and check nothing on the device.

**Rulebook** (:func:`rulebook_kernel`): one program per ``BLOCK_SITES`` output sites, all taps at
once; each (site, tap) computes its neighbour's key and finds it by binary search among the valid
input keys (the sorted contract), writing the row or N. Memory: reads only.

**Submanifold sites** (:func:`compact_kernel`, ``subm = 1``): one program per ``BLOCK_COPY`` rows
copies the valid rows; program 0 writes the count.

**Strided sites** (``subm = 0``): the output sites by key need, for every site, the number of sites
before it, a prefix over the whole grid. A single launch could get it only from a scan across
programs (decoupled look-back), whose flags must start in a known state, and TensorRT gives an
ahead-of-time plugin no such memory: ``IPluginV3QuickAOTBuild`` (include/impl/NvInferPythonPlugin.h
of NVIDIA/TensorRT) has no workspace request, output buffers are not cleared, and the ONNX parser
requires a node to have exactly the plugin's outputs (ModelImporter.cpp of onnx/onnx-tensorrt:
``nonEmptyOutputs == outputs.size()``), so no hidden scratch output either. A single program over
the whole grid would need no flags, but it would walk every output slab in sequence (720 per sample
at the paper's first strided layer), each step a chain of dependent global loads on one SM, where
the traversal below spreads the slabs over all programs. So the strided sites are two launches of
the same traversal, each one TensorRT plugin (``SparseSiteCounts`` then ``SparseStridedSites``,
see ``trt_plugin.py``):

* The input rows are cut into blocks of ``BLOCK_ROWS``. An output x-slab ``(b, ox)`` (all its
  ``(oy, oz)``) belongs to the block holding the first row of the first non-empty input x-column
  ``(b, x)`` of its window ``ox * stride - padding + [0, kernel)``: a column start whose previous
  column (in the same sample) lies before the window. Slabs so owned are in key order across
  blocks, since that row, the first input at or after the window's first column, is monotone in
  ``(b, ox)``; each non-empty slab has exactly one owner.
* Per owned slab, the output rows ``oy`` are taken ``BLOCK_OY`` at a time; for each row and window
  column the inputs of the window's y-lines are one key range (two binary searches inside the
  slab's input range), and their z-taps mark a (row, oz) occupancy tile of ``BLOCK_OZ`` columns.
* :func:`site_counts_kernel` writes each block's site count; :func:`strided_sites_kernel` sums the
  counts of the earlier blocks (its write offset), redoes its block's traversal and writes every
  occupied cell at its offset, the first ``out_capacity`` only, and program 0 writes the count.

Memory: the block counts, ``cdiv(N, BLOCK_ROWS)`` int32, between the two launches; registers
otherwise. Work is proportional to the output slabs times their rows, independent of the sparsity
of the rest of the grid.

The torch launchers (:func:`sparse_sites_triton`, :func:`sparse_rulebook_triton`) run the same
kernels for the torch op's CUDA path; only they read the site count on the host, to return tensors
of the data-dependent size. ``triton`` is import-guarded so that importing this module never fails
(:data:`HAS_TRITON`); under Triton's interpreter (``TRITON_INTERPRET=1`` before importing this
module) the launchers take CPU tensors, which is how the kernels are tested without a GPU.
"""
from __future__ import annotations

import contextlib
import os

from .reference import ConvGeometry

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only machines: the module still imports, the kernels are absent
    triton = None
    tl = None

HAS_TRITON = triton is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

BLOCK_SITES = 64  # rulebook: output sites per program
BLOCK_COPY = 256  # submanifold sites: rows per program
BLOCK_ROWS = 128  # strided sites: input rows per block (one program each)
BLOCK_OY = 32  # strided sites: output rows of a slab per step
BLOCK_COUNTS = 1024  # strided sites: block counts summed per step
NUM_WARPS = 4

# Per kernel, its runtime parameters as TensorRT passes them: input pointers, int32 scalars, output pointers.
KERNELS = {
    "compact": (("coords", "count"), ("n_rows",), ("out_coords", "out_count")),
    "site_counts": (("coords", "count"), ("n_rows",), ("block_counts",)),
    "strided_sites": (("coords", "count", "block_counts"), ("n_rows",), ("out_coords", "out_count")),
    "rulebook": (("coords", "count", "sites"), ("n_rows", "n_sites"), ("neighbours",)),
}


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def blocks(n_rows: int) -> int:
    """Input-row blocks of the strided-sites kernels: the length of their block counts."""
    return -(-n_rows // BLOCK_ROWS)


def geometry_constants(geom: ConvGeometry) -> dict[str, int]:
    """The compile-time constants a layer's kernels are specialised for."""
    (kx, ky, kz), (sx, sy, sz), (px, py, pz) = geom.kernel, geom.stride, geom.padding
    (x, y, z), (ox, oy, oz) = geom.shape, geom.out_shape
    return dict(KX=kx, KY=ky, KZ=kz, SX=sx, SY=sy, SZ=sz, PX=px, PY=py, PZ=pz, X=x, Y=y, Z=z, OX=ox, OY=oy, OZ=oz)


if HAS_TRITON:

    @triton.jit
    def _key(coords_ptr, row, mask, X: tl.constexpr, Y: tl.constexpr, Z: tl.constexpr):
        """int64 key ``((b * X + x) * Y + y) * Z + z`` of ``row`` of an (N, 4) int32 site list."""
        base = coords_ptr + row.to(tl.int64) * 4
        b = tl.load(base, mask=mask, other=0).to(tl.int64)
        x = tl.load(base + 1, mask=mask, other=0)
        y = tl.load(base + 2, mask=mask, other=0)
        z = tl.load(base + 3, mask=mask, other=0)
        return ((b * X + x) * Y + y) * Z + z

    @triton.jit
    def _lower_bound(coords_ptr, lo, hi, target, steps, X: tl.constexpr, Y: tl.constexpr, Z: tl.constexpr):
        """Per lane, the first row in [lo, hi) whose key is >= target (hi if none), for key-sorted
        rows; ``steps`` >= the bit length of the longest hi - lo."""
        n = hi - lo
        for _ in range(steps):
            half = n // 2
            mid = lo + half
            right = (n > 0) & (_key(coords_ptr, mid, n > 0, X, Y, Z) < target)
            lo = tl.where(right, mid + 1, lo)
            n = tl.where(right, n - half - 1, half)
        return lo

    @triton.jit
    def _bit_length(n):
        steps = n * 0
        while n > 0:
            n = n // 2
            steps += 1
        return steps

    @triton.jit
    def rulebook_kernel(coords_ptr, count_ptr, sites_ptr, n_rows, n_sites, neighbours_ptr,
                        KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr, SX: tl.constexpr,
                        SY: tl.constexpr, SZ: tl.constexpr, PX: tl.constexpr, PY: tl.constexpr,
                        PZ: tl.constexpr, X: tl.constexpr, Y: tl.constexpr, Z: tl.constexpr,
                        TAPS: tl.constexpr, BLOCK_SITES: tl.constexpr):
        count = tl.minimum(tl.maximum(tl.load(count_ptr), 0), n_rows)
        site = tl.program_id(0) * BLOCK_SITES + tl.arange(0, BLOCK_SITES)
        site_ok = site < n_sites
        base = sites_ptr + site.to(tl.int64) * 4
        b = tl.load(base, mask=site_ok, other=0).to(tl.int64)
        ox = tl.load(base + 1, mask=site_ok, other=0)
        oy = tl.load(base + 2, mask=site_ok, other=0)
        oz = tl.load(base + 3, mask=site_ok, other=0)
        tap = tl.arange(0, TAPS)
        x = (ox * SX - PX)[:, None] + (tap // (KY * KZ))[None, :]
        y = (oy * SY - PY)[:, None] + ((tap // KZ) % KY)[None, :]
        z = (oz * SZ - PZ)[:, None] + (tap % KZ)[None, :]
        inside = (site_ok[:, None] & (tap < KX * KY * KZ)[None, :] & (x >= 0) & (x < X) & (y >= 0) & (y < Y)
                  & (z >= 0) & (z < Z))
        target = ((b[:, None] * X + x) * Y + y) * Z + z
        row = _lower_bound(coords_ptr, tl.zeros_like(x), tl.where(inside, count, 0), target, _bit_length(count),
                           X, Y, Z)
        hit = inside & (row < count) & (_key(coords_ptr, row, inside & (row < count), X, Y, Z) == target)
        out = tl.where(hit, row, n_rows)
        tl.store(neighbours_ptr + site.to(tl.int64)[:, None] * (KX * KY * KZ) + tap[None, :], out,
                 mask=site_ok[:, None] & (tap < KX * KY * KZ)[None, :])

    @triton.jit
    def compact_kernel(coords_ptr, count_ptr, n_rows, out_coords_ptr, out_count_ptr, CAPACITY: tl.constexpr,
                       BLOCK_COPY: tl.constexpr):
        count = tl.minimum(tl.minimum(tl.maximum(tl.load(count_ptr), 0), n_rows), CAPACITY)
        flat = tl.program_id(0) * BLOCK_COPY * 4 + tl.arange(0, BLOCK_COPY * 4)
        ok = flat < count * 4
        tl.store(out_coords_ptr + flat, tl.load(coords_ptr + flat, mask=ok), mask=ok)
        if tl.program_id(0) == 0:
            tl.store(out_count_ptr, count)

    @triton.jit
    def _block_sites(coords_ptr, count, block, out_coords_ptr, offset,
                     KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr, SX: tl.constexpr, SY: tl.constexpr,
                     SZ: tl.constexpr, PX: tl.constexpr, PY: tl.constexpr, PZ: tl.constexpr, X: tl.constexpr,
                     Y: tl.constexpr, Z: tl.constexpr, OX: tl.constexpr, OY: tl.constexpr, OZ: tl.constexpr,
                     CAPACITY: tl.constexpr, WRITE: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                     BLOCK_OY: tl.constexpr, BLOCK_OZ: tl.constexpr, SLABS_PER_COLUMN: tl.constexpr):
        """The sites of the slabs owned by input-row block ``block`` (module docstring), in key
        order; with WRITE, written from row ``offset`` of ``out_coords`` (rows >= CAPACITY dropped).
        Returns their number."""
        row = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        valid = row < count
        b = tl.load(coords_ptr + row.to(tl.int64) * 4, mask=valid, other=0)
        x = tl.load(coords_ptr + row.to(tl.int64) * 4 + 1, mask=valid, other=0)
        has_prev = valid & (row > 0)
        prev_b = tl.load(coords_ptr + (row - 1).to(tl.int64) * 4, mask=has_prev, other=-1)
        prev_x = tl.load(coords_ptr + (row - 1).to(tl.int64) * 4 + 1, mask=has_prev, other=-1)
        start = valid & ((prev_b != b) | (prev_x != x))
        # The previous non-empty column of the same sample, or one before any window.
        before = tl.where(prev_b == b, prev_x, -PX - 1)

        # Candidate slabs of each column start, in increasing ox: the windows that hold column x.
        j = tl.arange(0, SLABS_PER_COLUMN)
        ox = ((x + PX) // SX)[:, None] - (SLABS_PER_COLUMN - 1) + j[None, :]
        first_col = ox * SX - PX
        owned = (start[:, None] & (ox >= 0) & (ox < OX) & (first_col + KX > x[:, None])
                 & (first_col > before[:, None]))
        owned = tl.reshape(owned, [BLOCK_ROWS * SLABS_PER_COLUMN])
        slab_b = tl.reshape(tl.broadcast_to(b[:, None], [BLOCK_ROWS, SLABS_PER_COLUMN]),
                            [BLOCK_ROWS * SLABS_PER_COLUMN])
        slab_ox = tl.reshape(ox, [BLOCK_ROWS * SLABS_PER_COLUMN])
        slab_row = tl.reshape(tl.broadcast_to(row[:, None], [BLOCK_ROWS, SLABS_PER_COLUMN]),
                              [BLOCK_ROWS * SLABS_PER_COLUMN])
        rank = tl.cumsum(owned.to(tl.int32), axis=0) - 1
        n_owned = tl.sum(owned.to(tl.int32), axis=0)

        lane = tl.arange(0, BLOCK_OY)
        cols = tl.arange(0, BLOCK_OZ)
        total = n_owned * 0
        for s in range(n_owned):
            pick = owned & (rank == s)
            sb = tl.sum(tl.where(pick, slab_b, 0), axis=0)
            sox = tl.sum(tl.where(pick, slab_ox, 0), axis=0)
            lo = tl.sum(tl.where(pick, slab_row, 0), axis=0)  # first row of the slab's window
            x0 = sox * SX - PX
            window_end = ((sb.to(tl.int64) * X + tl.minimum(x0 + KX, X)) * Y) * Z  # first key past the window
            hi = _lower_bound(coords_ptr, lo, count, window_end, _bit_length(count - lo), X, Y, Z)
            steps = _bit_length(hi - lo)
            for oy0 in range(0, OY, BLOCK_OY):
                oy = oy0 + lane
                oy_ok = oy < OY
                y0 = oy * SY - PY
                for zc in tl.static_range(0, OZ, BLOCK_OZ):
                    occupied = tl.zeros([BLOCK_OY, BLOCK_OZ], dtype=tl.int32)
                    for i in tl.static_range(KX):
                        xi = x0 + i
                        if (xi >= 0) & (xi < X):
                            line = (sb.to(tl.int64) * X + xi) * Y
                            first = lo + lane * 0
                            a = _lower_bound(coords_ptr, first, hi + lane * 0, (line + tl.maximum(y0, 0)) * Z,
                                             steps, X, Y, Z)
                            e = _lower_bound(coords_ptr, first, hi + lane * 0,
                                             (line + tl.minimum(y0 + KY, Y)) * Z, steps, X, Y, Z)
                            e = tl.where(oy_ok & (y0 + KY > 0), tl.maximum(e, a), a)
                            for t in range(tl.max(e - a, axis=0)):
                                r = a + t
                                in_range = r < e
                                z = tl.load(coords_ptr + r.to(tl.int64) * 4 + 3, mask=in_range, other=0)
                                for k in tl.static_range(KZ):
                                    num = z + PZ - k
                                    num_ok = in_range & (num >= 0)
                                    num = tl.where(num_ok, num, 0)
                                    oz = num // SZ
                                    reach = num_ok & (num % SZ == 0) & (oz < OZ)
                                    occupied |= (reach[:, None] & ((oz - zc)[:, None] == cols[None, :])).to(tl.int32)
                    per_row = tl.sum(occupied, axis=1)
                    if WRITE:
                        at = offset + total + tl.cumsum(per_row, axis=0) - per_row
                        pos = at[:, None] + tl.cumsum(occupied, axis=1) - occupied
                        keep = (occupied != 0) & (pos < CAPACITY)
                        dst = out_coords_ptr + pos.to(tl.int64) * 4
                        tile = pos * 0
                        tl.store(dst, tile + sb, mask=keep)
                        tl.store(dst + 1, tile + sox, mask=keep)
                        tl.store(dst + 2, tile + oy[:, None], mask=keep)
                        tl.store(dst + 3, tile + zc + cols[None, :], mask=keep)
                    total += tl.sum(per_row, axis=0)
        return total

    @triton.jit
    def site_counts_kernel(coords_ptr, count_ptr, n_rows, block_counts_ptr,
                           KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr, SX: tl.constexpr,
                           SY: tl.constexpr, SZ: tl.constexpr, PX: tl.constexpr, PY: tl.constexpr,
                           PZ: tl.constexpr, X: tl.constexpr, Y: tl.constexpr, Z: tl.constexpr,
                           OX: tl.constexpr, OY: tl.constexpr, OZ: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                           BLOCK_OY: tl.constexpr, BLOCK_OZ: tl.constexpr, SLABS_PER_COLUMN: tl.constexpr):
        block = tl.program_id(0)
        count = tl.minimum(tl.maximum(tl.load(count_ptr), 0), n_rows)
        # Counting only: the helper's output pointer and capacity are unused without WRITE.
        sites = _block_sites(coords_ptr, count, block, block_counts_ptr, 0, KX, KY, KZ, SX, SY, SZ, PX, PY, PZ,
                             X, Y, Z, OX, OY, OZ, 0, False, BLOCK_ROWS, BLOCK_OY, BLOCK_OZ, SLABS_PER_COLUMN)
        if block * BLOCK_ROWS < n_rows:
            tl.store(block_counts_ptr + block, sites)

    @triton.jit
    def strided_sites_kernel(coords_ptr, count_ptr, block_counts_ptr, n_rows, out_coords_ptr, out_count_ptr,
                             KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr, SX: tl.constexpr,
                             SY: tl.constexpr, SZ: tl.constexpr, PX: tl.constexpr, PY: tl.constexpr,
                             PZ: tl.constexpr, X: tl.constexpr, Y: tl.constexpr, Z: tl.constexpr,
                             OX: tl.constexpr, OY: tl.constexpr, OZ: tl.constexpr, CAPACITY: tl.constexpr,
                             BLOCK_ROWS: tl.constexpr, BLOCK_OY: tl.constexpr, BLOCK_OZ: tl.constexpr,
                             SLABS_PER_COLUMN: tl.constexpr, BLOCK_COUNTS: tl.constexpr):
        block = tl.program_id(0)
        count = tl.minimum(tl.maximum(tl.load(count_ptr), 0), n_rows)
        n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
        upto = tl.where(block == 0, n_blocks, block)  # program 0 also sums every block for the count
        offset = block * 0
        total = block * 0
        for c0 in range(0, upto, BLOCK_COUNTS):
            c = c0 + tl.arange(0, BLOCK_COUNTS)
            counts = tl.load(block_counts_ptr + c, mask=c < upto, other=0)
            offset += tl.sum(tl.where(c < block, counts, 0), axis=0)
            total += tl.sum(counts, axis=0)
        if block == 0:
            tl.store(out_count_ptr, tl.minimum(total, CAPACITY))
        _block_sites(coords_ptr, count, block, out_coords_ptr, offset, KX, KY, KZ, SX, SY, SZ, PX, PY, PZ, X, Y, Z,
                     OX, OY, OZ, CAPACITY, True, BLOCK_ROWS, BLOCK_OY, BLOCK_OZ, SLABS_PER_COLUMN)


def constants(kernel: str, geom: ConvGeometry) -> dict[str, int]:
    """The compile-time constants of ``kernel`` (a :data:`KERNELS` name) for one layer."""
    g = geometry_constants(geom)
    if kernel == "compact":
        return {"CAPACITY": geom.out_capacity, "BLOCK_COPY": BLOCK_COPY}
    if kernel == "rulebook":
        spatial = {k: g[k] for k in ("KX", "KY", "KZ", "SX", "SY", "SZ", "PX", "PY", "PZ", "X", "Y", "Z")}
        return {**spatial, "TAPS": _pow2(geom.taps), "BLOCK_SITES": BLOCK_SITES}
    traversal = {"BLOCK_ROWS": BLOCK_ROWS, "BLOCK_OY": BLOCK_OY, "BLOCK_OZ": min(_pow2(g["OZ"]), 32),
                 "SLABS_PER_COLUMN": _pow2(-(-g["KX"] // g["SX"]))}
    if kernel == "site_counts":
        return {**g, **traversal}
    return {**g, "CAPACITY": geom.out_capacity, **traversal, "BLOCK_COUNTS": BLOCK_COUNTS}


def _function(kernel: str):
    return {"compact": compact_kernel, "site_counts": site_counts_kernel, "strided_sites": strided_sites_kernel,
            "rulebook": rulebook_kernel}[kernel]


def grid(kernel: str, n_rows: int, n_sites: int = 0) -> int:
    """Programs of a launch (at least one: the count outputs are always written)."""
    per = {"compact": BLOCK_COPY, "site_counts": BLOCK_ROWS, "strided_sites": BLOCK_ROWS}
    if kernel == "rulebook":
        return max(1, -(-n_sites // BLOCK_SITES))
    return max(1, -(-n_rows // per[kernel]))


def compile_ptx(kernel: str, geom: ConvGeometry, target=None):
    """``kernel`` (a :data:`KERNELS` name) for one layer as PTX for TensorRT (a
    ``triton_aot.PtxKernel``); ``target`` a ``triton.backends.compiler.GPUTarget``, default the
    current GPU. Pointers are int32, scalars int32."""
    if not HAS_TRITON:
        raise RuntimeError("sparse_conv: compiling the GPU kernels needs Triton (pip install triton)")
    from ..triton_aot import compile_for_tensorrt

    inputs, scalars, outputs = KERNELS[kernel]
    consts = constants(kernel, geom)
    signature = {**{f"{n}_ptr": "*i32" for n in inputs}, **{n: "i32" for n in scalars},
                 **{f"{n}_ptr": "*i32" for n in outputs}, **{n: "constexpr" for n in consts}}
    return compile_for_tensorrt(_function(kernel), signature, consts, NUM_WARPS, target)


def _check(op: str, **tensors) -> None:
    import torch

    device = next(iter(tensors.values())).device
    for name, t in tensors.items():
        if t.dtype != torch.int32:
            raise ValueError(f"{op}: {name}: expected int32, got {t.dtype}")
        if not (t.is_cuda or INTERPRETED) or t.device != device:
            raise ValueError(f"{op}: {name}: expected a CUDA tensor on {device}, got one on {t.device}")
    coords, count = tensors["coords"], tensors["count"]
    if coords.dim() != 2 or coords.shape[1] != 4 or count.shape != (1,):
        raise ValueError(f"{op}: coords, count: expected (N, 4) and (1,), got {tuple(coords.shape)} and "
                         f"{tuple(count.shape)}")
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: the GPU kernels need Triton (pip install triton)")


def sparse_sites_triton(coords, count, geom: ConvGeometry):
    """(out_coords (M, 4) int32, out_count (1,) int32) on the GPU: SPEC.md's ``SparseSites``. The
    kernels write at capacity; M is read on the host to return the rows (one synchronisation, the
    torch op's, not the kernels')."""
    import torch

    _check("fuller::SparseSites", coords=coords, count=count)
    n = coords.shape[0]
    if geom.subm and geom.out_capacity != n:
        raise ValueError(f"fuller::SparseSites: out_capacity: expected {n} (= N) for subm = 1, got {geom.out_capacity}")
    coords, count = coords.contiguous(), count.contiguous()
    out_coords = torch.empty((geom.out_capacity, 4), dtype=torch.int32, device=coords.device)
    out_count = torch.empty((1,), dtype=torch.int32, device=coords.device)
    with torch.cuda.device(coords.device) if coords.is_cuda else contextlib.nullcontext():
        if geom.subm:
            compact_kernel[(grid("compact", n),)](coords, count, n, out_coords, out_count, **constants("compact", geom),
                                                  num_warps=NUM_WARPS)
        else:
            block_counts = torch.empty((blocks(n),), dtype=torch.int32, device=coords.device)
            site_counts_kernel[(grid("site_counts", n),)](coords, count, n, block_counts,
                                                          **constants("site_counts", geom), num_warps=NUM_WARPS)
            strided_sites_kernel[(grid("strided_sites", n),)](coords, count, block_counts, n, out_coords, out_count,
                                                              **constants("strided_sites", geom), num_warps=NUM_WARPS)
    return out_coords[: int(out_count[0])], out_count


def sparse_rulebook_triton(coords, count, sites, geom: ConvGeometry):
    """neighbours (M, taps) int32 on the GPU: SPEC.md's ``SparseRulebook``."""
    import torch

    _check("fuller::SparseRulebook", coords=coords, count=count, sites=sites)
    if sites.dim() != 2 or sites.shape[1] != 4:
        raise ValueError(f"fuller::SparseRulebook: sites: expected (M, 4), got {tuple(sites.shape)}")
    n, m = coords.shape[0], sites.shape[0]
    coords, count, sites = coords.contiguous(), count.contiguous(), sites.contiguous()
    out = torch.empty((m, geom.taps), dtype=torch.int32, device=coords.device)
    with torch.cuda.device(coords.device) if coords.is_cuda else contextlib.nullcontext():
        rulebook_kernel[(grid("rulebook", n, m),)](coords, count, sites, n, m, out, **constants("rulebook", geom),
                                                   num_warps=NUM_WARPS)
    return out
