"""GPU kernel of ``fuller::SparseConv3d`` (Triton): dense index grid, output sites, implicit GEMM.

Steps, each a kernel or one torch op on the same stream:

1. **Input index grid.** An int32 grid over ``(B, X, Y, Z)`` (B from the valid rows' batch
   indices), filled with -1, gets each valid row's index at its site (:func:`_scatter_rows_kernel`).
   A dense grid rather than a hash table: lookups are one load, and the grid of the largest layer
   (1440 x 1440 x 41 cells per sample at paper scale) is 340 MB, affordable on the GPUs this runs on.
2. **Output sites.** ``subm = 1``: the input sites, in input order. ``subm = 0``: every valid row
   marks the output cells its taps reach in a dense int8 occupancy over ``(B, X', Y', Z')``
   (:func:`_mark_outputs_kernel`, plain stores: every writer writes 1). The occupied cells in flat
   index order are exactly the SPEC's order by key ``((b * X' + x) * Y' + y) * Z' + z``;
   ``torch.nonzero`` lists them and the first ``out_capacity`` are kept.
3. **Implicit GEMM** (:func:`_implicit_gemm_kernel`): per block of output rows and output channels,
   for each tap, the input row under each output site is looked up in the grid, the rows are
   gathered and multiplied with ``weight[tap]`` by ``tl.dot``, accumulated in float32 (float16
   inputs; float32 inputs use IEEE float32 products, not TF32, to match the float64 reference to
   float32 rounding). Taps with no neighbour in the whole block are skipped. The bias is added and
   every row up to ``out_capacity`` is written (zeros past the output count), so no output buffer
   needs clearing beforehand.

The launcher reads the valid-row count and the largest batch index on the host to size the grids
(one synchronisation per call, two for regular convolutions, whose ``torch.nonzero`` sizes its
result on the host too); the kernels trust the SPEC contract (sites inside the grid and
unique), which the voxeliser guarantees. Several launches and those synchronisations are why the
TensorRT plugin of this op runs it just-in-time through Python (``trt_plugin.py``).
``triton`` is import-guarded so that importing this module never fails (:data:`HAS_TRITON`); under
Triton's interpreter (``TRITON_INTERPRET=1`` before importing this module) the launcher takes CPU
tensors, which is how the kernels are tested on machines without a GPU.
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

ROWS_PER_PROGRAM = 256  # steps 1 and 2: input rows per program
BLOCK_M = 64  # step 3: output rows per program
NUM_WARPS = 4

if HAS_TRITON:

    @triton.jit
    def _load_sites(coords_ptr, rows, mask):
        """(b as int64, x, y, z) of ``rows`` of an (N, 4) int32 coordinate list."""
        b = tl.load(coords_ptr + rows * 4, mask=mask, other=0).to(tl.int64)
        x = tl.load(coords_ptr + rows * 4 + 1, mask=mask, other=0)
        y = tl.load(coords_ptr + rows * 4 + 2, mask=mask, other=0)
        z = tl.load(coords_ptr + rows * 4 + 3, mask=mask, other=0)
        return b, x, y, z

    @triton.jit
    def _scatter_rows_kernel(coords_ptr, n_valid, grid_ptr, size_x, size_y, size_z, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = rows < n_valid
        b, x, y, z = _load_sites(coords_ptr, rows, ok)
        tl.store(grid_ptr + ((b * size_x + x) * size_y + y) * size_z + z, rows, mask=ok)

    @triton.jit
    def _mark_outputs_kernel(coords_ptr, n_valid, occupancy_ptr, out_x, out_y, out_z,
                             KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr, SX: tl.constexpr,
                             SY: tl.constexpr, SZ: tl.constexpr, PX: tl.constexpr, PY: tl.constexpr,
                             PZ: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = rows < n_valid
        b, x, y, z = _load_sites(coords_ptr, rows, ok)
        for tap in range(KX * KY * KZ):
            # Output o receives input p through tap t when p = o * stride - padding + t.
            nx = x + PX - tap // (KY * KZ)
            ny = y + PY - (tap // KZ) % KY
            nz = z + PZ - tap % KZ
            hit = ok & (nx >= 0) & (ny >= 0) & (nz >= 0) & (nx % SX == 0) & (ny % SY == 0) & (nz % SZ == 0)
            ox, oy, oz = nx // SX, ny // SY, nz // SZ
            hit = hit & (ox < out_x) & (oy < out_y) & (oz < out_z)
            site = ((b * out_x + ox) * out_y + oy) * out_z + oz
            tl.store(occupancy_ptr + site, tl.full((BLOCK,), 1, tl.int8), mask=hit)

    @triton.jit
    def _implicit_gemm_kernel(feat_ptr, grid_ptr, out_coords_ptr, n_out, weight_ptr, bias_ptr, out_ptr, capacity,
                              c_in, c_out, size_x, size_y, size_z,
                              KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr, SX: tl.constexpr,
                              SY: tl.constexpr, SZ: tl.constexpr, PX: tl.constexpr, PY: tl.constexpr,
                              PZ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_out
        b, ox, oy, oz = _load_sites(out_coords_ptr, rows, row_ok)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < c_out
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tap in range(KX * KY * KZ):
            ix = ox * SX - PX + tap // (KY * KZ)
            iy = oy * SY - PY + (tap // KZ) % KY
            iz = oz * SZ - PZ + tap % KZ
            inside = row_ok & (ix >= 0) & (ix < size_x) & (iy >= 0) & (iy < size_y) & (iz >= 0) & (iz < size_z)
            src = tl.load(grid_ptr + ((b * size_x + ix) * size_y + iy) * size_z + iz, mask=inside, other=-1)
            if tl.max(src, axis=0) >= 0:
                src_ok = src >= 0
                for k0 in range(0, c_in, BLOCK_K):
                    k = k0 + ks
                    k_ok = k < c_in
                    a = tl.load(feat_ptr + src.to(tl.int64)[:, None] * c_in + k[None, :],
                                mask=src_ok[:, None] & k_ok[None, :], other=0.0)
                    w = tl.load(weight_ptr + (tap * c_in + k)[:, None] * c_out + cols[None, :],
                                mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                    if IEEE:
                        acc = tl.dot(a, w, acc, input_precision="ieee")
                    else:
                        acc = tl.dot(a, w, acc)
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        result = tl.where(row_ok[:, None], acc + bias[None, :], 0.0)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * c_out + cols[None, :], result.to(out_ptr.dtype.element_ty),
                 mask=(rows < capacity)[:, None] & col_ok[None, :])


def _block(n: int, low: int, high: int) -> int:
    """The power of two >= n, clipped to [low, high] (tl.dot needs tiles of at least 16)."""
    return max(low, min(high, 1 << max(n - 1, 0).bit_length()))


def _check(features, coords, count, weight, bias, geom: ConvGeometry) -> None:
    import torch

    if features.dtype not in (torch.float32, torch.float16) or features.dim() != 2:
        raise ValueError(f"sparse_conv3d: features: expected (N, Cin) float32 or float16, got "
                         f"{tuple(features.shape)} {features.dtype}")
    n, c_in = features.shape
    if coords.shape != (n, 4) or coords.dtype != torch.int32:
        raise ValueError(f"sparse_conv3d: coords: expected ({n}, 4) int32, got {tuple(coords.shape)} {coords.dtype}")
    if count.shape != (1,) or count.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"sparse_conv3d: count: expected (1,) int32, got {tuple(count.shape)} {count.dtype}")
    if weight.dim() != 5 or tuple(weight.shape[:4]) != (*geom.kernel, c_in) or weight.dtype != features.dtype:
        raise ValueError(f"sparse_conv3d: weight: expected ({', '.join(map(str, geom.kernel))}, {c_in}, Cout) "
                         f"{features.dtype}, got {tuple(weight.shape)} {weight.dtype}")
    if bias.shape != (weight.shape[4],) or bias.dtype != features.dtype:
        raise ValueError(f"sparse_conv3d: bias: expected ({weight.shape[4]},) {features.dtype}, got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    if geom.subm and geom.out_capacity != n:
        raise ValueError(f"sparse_conv3d: out_capacity: expected {n} (= N) for a submanifold conv, "
                         f"got {geom.out_capacity}")
    for name, t in (("features", features), ("coords", coords), ("count", count), ("weight", weight),
                    ("bias", bias)):
        if not (t.is_cuda or INTERPRETED) or t.device != features.device:
            raise ValueError(f"sparse_conv3d: {name}: expected a CUDA tensor on {features.device}, got one on "
                             f"{t.device}")


def _valid_rows_and_batches(coords, count) -> tuple[int, int]:
    """(valid rows, 1 + largest batch index among them), read in one host synchronisation."""
    import torch

    n = coords.shape[0]
    if n == 0:
        return 0, 0
    valid = torch.arange(n, device=coords.device) < count.to(torch.int64)
    top = torch.where(valid, coords[:, 0].to(torch.int64), -1).max()
    rows, top = torch.stack([count.to(torch.int64).reshape(()), top]).tolist()
    if not 0 <= rows <= n:
        raise ValueError(f"sparse_conv3d: count: expected 0 <= count <= {n} (rows of features), got {rows}")
    return rows, top + 1


def sparse_conv3d_triton(features, coords, count, weight, bias, geom: ConvGeometry):
    """(out_features (out_capacity, Cout) in the dtype of features, out_coords (out_capacity, 4)
    int32, out_count (1,) int32) on the GPU, with SPEC.md's semantics (row order, -1 padding,
    capacity cut, float32 accumulation)."""
    import torch

    _check(features, coords, count, weight, bias, geom)
    if not HAS_TRITON:
        raise RuntimeError("sparse_conv3d: the GPU kernel needs Triton (pip install triton)")
    device, cap = features.device, geom.out_capacity
    c_in, c_out = features.shape[1], weight.shape[4]
    features, coords, weight, bias = (t.contiguous() for t in (features, coords, weight, bias))
    out_features = torch.empty((cap, c_out), dtype=features.dtype, device=device)
    out_coords = torch.full((cap, 4), -1, dtype=torch.int32, device=device)
    n_valid, batches = _valid_rows_and_batches(coords, count)
    constants = dict(zip(("KX", "KY", "KZ", "SX", "SY", "SZ", "PX", "PY", "PZ"),
                         (*geom.kernel, *geom.stride, *geom.padding)))
    with torch.cuda.device(device) if features.is_cuda else contextlib.nullcontext():
        grid = torch.full((batches * geom.shape[0] * geom.shape[1] * geom.shape[2],), -1, dtype=torch.int32,
                          device=device)
        row_programs = (triton.cdiv(n_valid, ROWS_PER_PROGRAM),)
        if n_valid:
            _scatter_rows_kernel[row_programs](coords, n_valid, grid, *geom.shape, BLOCK=ROWS_PER_PROGRAM)
        if geom.subm:
            n_out = n_valid
            out_coords[:n_valid] = coords[:n_valid]
        else:
            ox, oy, oz = geom.out_shape
            occupancy = torch.zeros(batches * ox * oy * oz, dtype=torch.int8, device=device)
            if n_valid:
                _mark_outputs_kernel[row_programs](coords, n_valid, occupancy, ox, oy, oz, **constants,
                                                   BLOCK=ROWS_PER_PROGRAM)
            sites = torch.nonzero(occupancy).squeeze(1)[:cap]
            n_out = sites.numel()
            rest, z = sites.div(oz, rounding_mode="floor"), sites % oz
            rest, y = rest.div(oy, rounding_mode="floor"), rest % oy
            out_coords[:n_out] = torch.stack([rest.div(ox, rounding_mode="floor"), rest % ox, y, z], 1).to(torch.int32)
        block_n, block_k = _block(c_out, 16, 64), _block(c_in, 16, 32)
        if cap and c_out:
            _implicit_gemm_kernel[(triton.cdiv(cap, BLOCK_M), triton.cdiv(c_out, block_n))](
                features, grid, out_coords, n_out, weight, bias, out_features, cap, c_in, c_out, *geom.shape,
                **constants, BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k,
                IEEE=features.dtype == torch.float32, num_warps=NUM_WARPS)
    return out_features, out_coords, torch.tensor([n_out], dtype=torch.int32, device=device)
