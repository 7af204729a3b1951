"""The float32 NumPy kernel of ``fuller::BevPool`` for CPU runtimes: the pooling as one SciPy CSR
product, ``out_rows = A @ feat_rows`` with A's row pointers taken from the intervals (the same
formulation as the torch op's CPU path, see torch_op.py); the depth x context product is never
formed."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse

from .reference import check_indices, check_shapes


def bev_pool_numpy(depth: np.ndarray, feat: np.ndarray, ranks_depth: np.ndarray, ranks_feat: np.ndarray,
                   ranks_bev: np.ndarray, interval_starts: np.ndarray, interval_lengths: np.ndarray,
                   bev_shape: Sequence[int], validate: bool = True) -> np.ndarray:
    """(B, C, X, Y) in the dtype of ``feat`` (float16 accumulates in float32). ``validate`` checks
    the index contract (SPEC.md) first; the per-frame cost is small next to the product."""
    ranks = (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
    b, c, x, y = check_shapes(depth.shape, feat.shape, [r.shape for r in ranks], bev_shape)
    if validate:
        check_indices(depth.shape, ranks, bev_shape)
    compute = np.float64 if feat.dtype == np.float64 else np.float32
    cells, rows = b * x * y, feat.shape[0] * feat.shape[1] * feat.shape[2]
    indptr = np.zeros(cells + 1, dtype=np.int64)
    indptr[ranks_bev[interval_starts].astype(np.int64) + 1] = interval_lengths
    values = depth.reshape(-1)[ranks_depth].astype(compute)
    a = sparse.csr_array((values, ranks_feat.astype(np.int64), np.cumsum(indptr)), shape=(cells, rows))
    out = a @ feat.reshape(rows, c).astype(compute, copy=False)
    return np.ascontiguousarray(out.reshape(b, x, y, c).transpose(0, 3, 1, 2)).astype(feat.dtype, copy=False)
