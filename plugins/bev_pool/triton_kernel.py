"""GPU kernel of ``fuller::BevPool`` (Triton): one launch writes the whole (B, C, X, Y) output.

Each program owns a block of ``BLOCK_CELLS`` consecutive BEV cells and ``BLOCK_C`` channels. It finds
the intervals (runs of equal ``ranks_bev``, one per non-empty cell) that fall in its cells with one
binary search over the interval starts, loops over their points and accumulates
``depth.flat[ranks_depth[p]] * feat_rows[ranks_feat[p]]`` in float32 registers, then stores every
cell of the block: pooled rows where a cell has an interval, zeros where it has none.

Why cells and not intervals per program: TensorRT launches exactly one kernel per ahead-of-time
plugin and does not clear output buffers, so the kernel itself must write the zeros of the empty
cells; a program that owns cells can, one that owns intervals cannot without a second launch (or
atomics). Owning cells also makes the stores coalesced, since for a fixed channel consecutive cells
are contiguous in the (B, C, X, Y) output. Intervals are distinct cells, so no two programs write the
same element and no atomics are needed.

The kernel's runtime parameters are ordered (input pointers, int32 scalars, output pointer), the
order in which ``tensorrt.plugin``'s ahead-of-time launcher passes them, so the TensorRT plugin
(``trt_plugin.py``) compiles this very kernel to PTX (:func:`compile_ptx`, through
``plugins/triton_aot.py``, which also settles Triton's trailing scratch parameters).

The kernel trusts the op's contract (SPEC.md: indices in range, ``ranks_bev`` sorted, intervals its
runs); the geometry code guarantees it and checking it would cost a pass over the points and a host
synchronisation per call. ``triton`` is import-guarded so that importing this module never fails on
machines without it (:data:`HAS_TRITON`). Under Triton's interpreter (``TRITON_INTERPRET=1``, set
before importing this module) the launcher takes CPU tensors, which is how the kernel is tested on
machines without a GPU.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from .reference import RANK_NAMES, check_shapes

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only machines: the module still imports, the kernel is absent
    triton = None
    tl = None

HAS_TRITON = triton is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Cells and channels per program, and warps per program. 64 x 32 float32 accumulators over four
# warps is 16 registers per thread; the per-program interval lookup is one binary search.
BLOCK_CELLS = 64
BLOCK_C = 32
NUM_WARPS = 4

# Runtime parameters of the kernel in order: the op's seven inputs, four int32 scalars, the output.
KERNEL_INPUTS = ("depth", "feat", *RANK_NAMES)
KERNEL_SCALARS = ("num_intervals", "num_channels", "cells_per_batch", "num_cells")
KERNEL_OUTPUTS = ("out",)

if HAS_TRITON:

    @triton.jit
    def bev_pool_kernel(depth_ptr, feat_ptr, ranks_depth_ptr, ranks_feat_ptr, ranks_bev_ptr, interval_starts_ptr,
                        interval_lengths_ptr, num_intervals, num_channels, cells_per_batch, num_cells, out_ptr,
                        BLOCK_CELLS: tl.constexpr, BLOCK_C: tl.constexpr):
        first_cell = tl.program_id(0) * BLOCK_CELLS
        channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        channel_ok = channels < num_channels

        # First interval whose cell is >= first_cell (interval cells are strictly increasing).
        hi = num_intervals + tl.full([], 0, tl.int32)
        lo = hi * 0
        while lo < hi:
            mid = (lo + hi) // 2
            mid_cell = tl.load(ranks_bev_ptr + tl.load(interval_starts_ptr + mid))
            right = mid_cell < first_cell
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(right, hi, mid)

        # The block's cells hold at most BLOCK_CELLS intervals: lo, lo + 1, ... Match them to cells.
        lane = tl.arange(0, BLOCK_CELLS)
        interval = lo + lane
        interval_ok = interval < num_intervals
        interval_start = tl.load(interval_starts_ptr + interval, mask=interval_ok, other=0)
        interval_cell = tl.load(ranks_bev_ptr + interval_start, mask=interval_ok, other=-1)
        local_row = tl.where(interval_ok & (interval_cell < first_cell + BLOCK_CELLS),
                             interval_cell - first_cell, -1)
        match = local_row[None, :] == lane[:, None]  # [cell, interval]
        has_points = tl.sum(match.to(tl.int32), axis=1) > 0
        which = tl.sum(tl.where(match, lane[None, :], 0), axis=1)
        start = tl.load(interval_starts_ptr + lo + which, mask=has_points, other=0)
        length = tl.load(interval_lengths_ptr + lo + which, mask=has_points, other=0)

        acc = tl.zeros((BLOCK_CELLS, BLOCK_C), dtype=tl.float32)
        for k in range(0, tl.max(length, axis=0)):
            point_ok = k < length
            point = start + k
            rank_depth = tl.load(ranks_depth_ptr + point, mask=point_ok, other=0)
            rank_feat = tl.load(ranks_feat_ptr + point, mask=point_ok, other=0)
            d = tl.load(depth_ptr + rank_depth, mask=point_ok, other=0.0).to(tl.float32)
            f = tl.load(feat_ptr + rank_feat.to(tl.int64)[:, None] * num_channels + channels[None, :],
                        mask=point_ok[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)
            acc += d[:, None] * f

        cell = first_cell + lane
        batch = cell // cells_per_batch
        within = cell - batch * cells_per_batch
        offset = (batch.to(tl.int64)[:, None] * num_channels + channels[None, :]) * cells_per_batch + within[:, None]
        tl.store(out_ptr + offset, acc.to(out_ptr.dtype.element_ty),
                 mask=(cell < num_cells)[:, None] & channel_ok[None, :])


_FLOAT_TYPES = {"float32": "fp32", "float16": "fp16"}
_INDEX_TYPES = {"int32": "i32", "int64": "i64"}


def grid(num_cells: int, num_channels: int) -> tuple[int, int]:
    """Programs along (cells, channels)."""
    return -(-num_cells // BLOCK_CELLS), -(-num_channels // BLOCK_C)


def aot_signature(float_type: str, index_type: str = "int32") -> dict[str, str]:
    """Triton signature of :func:`bev_pool_kernel` for ahead-of-time compilation, parameters in
    kernel order: ``float_type`` 'float32' | 'float16' for depth, feat and out, ``index_type`` for
    the five index arrays, the scalars int32, the block sizes compile-time constants."""
    if float_type not in _FLOAT_TYPES:
        raise ValueError(f"bev_pool: float_type: expected one of {sorted(_FLOAT_TYPES)}, got {float_type!r}")
    if index_type not in _INDEX_TYPES:
        raise ValueError(f"bev_pool: index_type: expected one of {sorted(_INDEX_TYPES)}, got {index_type!r}")
    f, i = _FLOAT_TYPES[float_type], _INDEX_TYPES[index_type]
    inputs = {f"{name}_ptr": f"*{f}" if name in ("depth", "feat") else f"*{i}" for name in KERNEL_INPUTS}
    scalars = {name: "i32" for name in KERNEL_SCALARS}
    outputs = {f"{name}_ptr": f"*{f}" for name in KERNEL_OUTPUTS}
    return {**inputs, **scalars, **outputs, "BLOCK_CELLS": "constexpr", "BLOCK_C": "constexpr"}


def compile_ptx(float_type: str, index_type: str = "int32", target=None):
    """The kernel as PTX for TensorRT's ahead-of-time launcher (a ``triton_aot.PtxKernel``: name,
    PTX, threads per block, dynamic shared memory), compiled for ``target`` (a
    ``triton.backends.compiler.GPUTarget``; default the current GPU) with exactly the parameters
    TensorRT passes: inputs, scalars, output (``triton_aot`` says why Triton's scratch pointers are
    removed)."""
    if not HAS_TRITON:
        raise RuntimeError("bev_pool: compiling the GPU kernel needs Triton (pip install triton)")
    from ..triton_aot import compile_for_tensorrt

    return compile_for_tensorrt(bev_pool_kernel, aot_signature(float_type, index_type),
                                {"BLOCK_CELLS": BLOCK_CELLS, "BLOCK_C": BLOCK_C}, NUM_WARPS, target)


def bev_pool_triton(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                    bev_shape: Sequence[int]):
    """(B, C, X, Y) in the dtype of ``feat`` on the GPU: SPEC.md's ``bev_pool`` with float32
    accumulation. Tensors on one CUDA device; depth and feat float32 or float16 (same dtype), the
    five index arrays int32 or int64. Index values are trusted (module docstring)."""
    import torch

    ranks = (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
    b, c, x, y = check_shapes(depth.shape, feat.shape, [r.shape for r in ranks], bev_shape)
    for name, t in (("depth", depth), ("feat", feat)):
        if t.dtype not in (torch.float32, torch.float16):
            raise TypeError(f"bev_pool: {name}: expected dtype torch.float32 or torch.float16, got {t.dtype}")
    if feat.dtype != depth.dtype:
        raise TypeError(f"bev_pool: feat: expected dtype {depth.dtype} (that of depth), got {feat.dtype}")
    for name, r in zip(RANK_NAMES, ranks):
        if r.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"bev_pool: {name}: expected dtype torch.int32 or torch.int64, got {r.dtype}")
    for name, t in (("depth", depth), ("feat", feat), *zip(RANK_NAMES, ranks)):
        if not (t.is_cuda or INTERPRETED) or t.device != depth.device:
            raise ValueError(f"bev_pool: {name}: expected a CUDA tensor on {depth.device}, got one on {t.device}")
    if not HAS_TRITON:
        raise RuntimeError("bev_pool: the GPU kernel needs Triton (pip install triton)")
    if max(depth.numel(), feat.numel(), b * c * x * y) >= 2**31:
        raise ValueError(f"bev_pool: tensors of 2**31 or more elements are not supported, got depth "
                         f"{tuple(depth.shape)}, feat {tuple(feat.shape)}, out {(b, c, x, y)}")
    out = torch.empty((b, c, x, y), dtype=feat.dtype, device=feat.device)
    depth, feat = depth.contiguous(), feat.contiguous()
    ranks = tuple(r.contiguous() for r in ranks)
    with torch.cuda.device(depth.device) if depth.is_cuda else contextlib.nullcontext():
        bev_pool_kernel[grid(b * x * y, c)](depth, feat, *ranks, interval_starts.shape[0], c, x * y, b * x * y, out,
                                            BLOCK_CELLS=BLOCK_CELLS, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return out
