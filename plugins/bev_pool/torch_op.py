"""``torch.ops.fuller.bev_pool``: LSS BEV pooling as a PyTorch custom op, with its fake (meta) kernel
and autograd. Importing this module registers the ops; see SPEC.md for the contract.

The pooling is a sparse matrix product. With ``A`` the (B*X*Y, BN*h*w) matrix that holds
``depth.flat[ranks_depth[p]]`` at (ranks_bev[p], ranks_feat[p]) (repeated coordinates add up):

* forward ``out_rows = A @ feat_rows``;
* ``grad_feat_rows = A^T @ grad_rows``;
* ``grad_depth.flat[ranks_depth[p]] += <grad_rows[ranks_bev[p]], feat_rows[ranks_feat[p]]>``, the
  sampled dense-dense product of ``grad_rows @ feat_rows^T`` at A's pattern.

On CPU, ``ranks_bev`` being sorted makes A a CSR matrix whose row pointers come straight from the
intervals, so the three products are ``torch.sparse.mm`` and ``torch.sparse.sampled_addmm`` (MKL),
and only ``A^T`` needs a sort (of ``ranks_feat``). The depth x context outer product
(BN*D*h*w x C) is never formed and nothing loops over points in Python; on the tiny config's batch
of two (P = 390 k points, C = 32) this was measured about nine times faster, forward plus backward,
than materialising the outer product and scatter-adding it, and faster than scatter-adds of gathered
rows. Other devices use those gathers, in bounded chunks, with ``index_add_``: generic ops whose
handling of repeated coordinates does not depend on a sparse library (the GPU gets its own kernel).
Half-precision inputs are computed in float32; the output has the wider of the two input dtypes
(`out_dtype`), each gradient its input's.
"""
from __future__ import annotations

import warnings

import torch

from .reference import RANK_NAMES, check_shapes

# Points per chunk of the gather path: CHUNK_ELEMENTS / C rows of each gathered operand.
CHUNK_ELEMENTS = 1 << 22
_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(name: str, expected: str, got: object) -> None:
    raise ValueError(f"bev_pool: {name}: expected {expected}, got {got}")


def _check_tensors(depth: torch.Tensor, feat: torch.Tensor, ranks: tuple[torch.Tensor, ...],
                   bev_shape: list[int]) -> tuple[int, int, int, int]:
    """Shapes, dtypes and devices (no values: this also runs on fake tensors)."""
    for name, t in (("depth", depth), ("feat", feat)):
        if t.dtype not in _FLOAT_TYPES:
            raise TypeError(f"bev_pool: {name}: expected a floating dtype {_FLOAT_TYPES}, got {t.dtype}")
    for name, r in zip(RANK_NAMES, ranks):
        if r.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"bev_pool: {name}: expected dtype torch.int32 or torch.int64, got {r.dtype}")
    for name, t in (("feat", feat), *zip(RANK_NAMES, ranks)):
        if t.device != depth.device:
            _fail(name, f"a tensor on {depth.device} (the device of depth)", f"one on {t.device}")
    return check_shapes(depth.shape, feat.shape, [r.shape for r in ranks], bev_shape)


def _check_values(depth_shape: torch.Size, ranks: tuple[torch.Tensor, ...], num_cells: int) -> None:
    """Index ranges, sortedness and intervals: an out-of-range index would read or write outside
    the tensors, and an unsorted ranks_bev would silently pool into the wrong cells."""
    ranks_depth, ranks_feat, ranks_bev, starts, lengths = ranks
    bn, d, h, w = depth_shape
    limits = {"ranks_depth": bn * d * h * w, "ranks_feat": bn * h * w, "ranks_bev": num_cells}
    for name, r in zip(RANK_NAMES[:3], ranks[:3]):
        if r.numel():
            lo, hi = torch.aminmax(r)
            if lo < 0 or hi >= limits[name]:
                _fail(name, f"values in [0, {limits[name]})", f"values in [{int(lo)}, {int(hi)}]")
    step = ranks_bev[1:] - ranks_bev[:-1]
    if bool((step < 0).any()):
        _fail("ranks_bev", "values sorted in non-decreasing order", "an unsorted tensor")
    boundaries = torch.nonzero(step).flatten() + 1
    num_runs = boundaries.numel() + (1 if ranks_bev.numel() else 0)
    if starts.numel() != num_runs:
        _fail("interval_starts", f"{num_runs} entries, one per run of equal ranks_bev", f"{starts.numel()}")
    if num_runs:
        want = torch.cat([boundaries.new_zeros(1), boundaries])
        if not torch.equal(starts, want):
            _fail("interval_starts", "the start offsets of the runs of equal ranks_bev", "values that differ")
        ends = torch.cat([boundaries, boundaries.new_full((1,), ranks_bev.numel())])
        if not torch.equal(lengths, ends - want):
            _fail("interval_lengths", "the lengths of the runs of equal ranks_bev", "values that differ")


def _compute_dtype(depth: torch.Tensor, feat: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (depth.dtype, feat.dtype) else torch.float32


def out_dtype(depth: torch.Tensor, feat: torch.Tensor) -> torch.dtype:
    """The pooled BEV's dtype: the wider of the two inputs'. They may differ: CUDA autocast runs the
    depth softmax in float32 and leaves the context in bfloat16 (CPU autocast keeps both bfloat16)."""
    return torch.promote_types(depth.dtype, feat.dtype)


def _operands(depth: torch.Tensor, feat: torch.Tensor, ranks_depth: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The depth value of every point (P,) and the feature rows (BN*h*w, C), in the compute dtype."""
    dtype = _compute_dtype(depth, feat)
    values = depth.reshape(-1)[ranks_depth].to(dtype)
    return values, feat.reshape(-1, feat.shape[-1]).to(dtype)


def _index_dtype(*sizes: int) -> torch.dtype:
    """int32 sparse indices where they fit: MKL's native width, so nothing is converted per call."""
    return torch.int32 if max(sizes) < 2**31 else torch.int64


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols.to(crow.dtype), values, shape, check_invariants=False)


def _pool_matrix(values, ranks_feat, ranks_bev, starts, lengths, shape: tuple[int, int]) -> torch.Tensor:
    """A as CSR. Row pointers come from the intervals (one per non-empty row, validated against
    ranks_bev by the forward call), in O(I + rows) rather than a pass over the P points."""
    crow = torch.zeros(shape[0] + 1, dtype=_index_dtype(values.numel(), *shape), device=values.device)
    if lengths.numel():
        crow[ranks_bev[starts] + 1] = lengths.to(crow.dtype)
    return _csr(crow.cumsum(0, dtype=crow.dtype), ranks_feat, values, shape)


def _pool_matrix_t(values, ranks_feat, ranks_bev, shape: tuple[int, int]) -> torch.Tensor:
    """A^T as CSR: the points grouped by feature row (a sort of the int32 keys, the costliest step
    of the backward pass)."""
    dtype = _index_dtype(values.numel(), *shape)
    order = torch.argsort(ranks_feat.to(dtype), stable=True)
    crow = torch.zeros(shape[0] + 1, dtype=dtype, device=values.device)
    crow[1:] = torch.cumsum(torch.bincount(ranks_feat, minlength=shape[0]), 0)
    return _csr(crow, ranks_bev[order], values[order], shape)


def _chunk_length(channels: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(channels, 1))


def _forward_rows(values, feat_rows, ranks_feat, ranks_bev, starts, lengths, num_cells, sparse: bool
                  ) -> torch.Tensor:
    """(num_cells, C) pooled rows."""
    if sparse:
        a = _pool_matrix(values, ranks_feat, ranks_bev, starts, lengths, (num_cells, feat_rows.shape[0]))
        return torch.sparse.mm(a, feat_rows)
    out = feat_rows.new_zeros(num_cells, feat_rows.shape[1])
    step = _chunk_length(feat_rows.shape[1])
    for s in range(0, values.numel(), step):
        e = s + step
        out.index_add_(0, ranks_bev[s:e], values[s:e, None] * feat_rows[ranks_feat[s:e]])
    return out


def _backward_rows(grad_rows, values, feat_rows, ranks_feat, ranks_bev, starts, lengths, sparse: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-point depth gradient (P,), feature-row gradient (BN*h*w, C))."""
    num_cells, num_rows = grad_rows.shape[0], feat_rows.shape[0]
    if sparse:
        a = _pool_matrix(values, ranks_feat, ranks_bev, starts, lengths, (num_cells, num_rows))
        point_grad = torch.sparse.sampled_addmm(a, grad_rows, feat_rows.t(), beta=0.0).values()
        a_t = _pool_matrix_t(values, ranks_feat, ranks_bev, (num_rows, num_cells))
        return point_grad, torch.sparse.mm(a_t, grad_rows)
    point_grad = values.new_empty(values.shape)
    grad_feat = feat_rows.new_zeros(feat_rows.shape)
    step = _chunk_length(feat_rows.shape[1])
    for s in range(0, values.numel(), step):
        e = s + step
        g, fr = grad_rows[ranks_bev[s:e]], ranks_feat[s:e]
        point_grad[s:e] = (g * feat_rows[fr]).sum(1)
        grad_feat.index_add_(0, fr, values[s:e, None] * g)
    return point_grad, grad_feat


def _exact(device: torch.device):
    """Autocast off inside the op: it computes in the dtype it chose (an enclosing autocast would
    turn its float32 sparse products back into bfloat16, which MKL's CSR kernels do not take)."""
    return torch.autocast(device.type, enabled=False)


def _use_sparse(device: torch.device) -> bool:
    return device.type == "cpu"


@torch.library.custom_op("fuller::bev_pool", mutates_args=())
def bev_pool(depth: torch.Tensor, feat: torch.Tensor, ranks_depth: torch.Tensor, ranks_feat: torch.Tensor,
             ranks_bev: torch.Tensor, interval_starts: torch.Tensor, interval_lengths: torch.Tensor,
             bev_shape: list[int]) -> torch.Tensor:
    """(B, C, X, Y): out[b, :, ix, iy] = sum over points p with ranks_bev[p] = b*X*Y + ix*Y + iy of
    depth.flat[ranks_depth[p]] * feat.view(-1, C)[ranks_feat[p]] (SPEC.md)."""
    ranks = (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
    b, c, x, y = _check_tensors(depth, feat, ranks, bev_shape)
    _check_values(depth.shape, ranks, b * x * y)
    with _exact(depth.device):
        values, feat_rows = _operands(depth, feat, ranks_depth)
        rows = _forward_rows(values, feat_rows, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                             b * x * y, _use_sparse(depth.device))
    return rows.view(b, x, y, c).permute(0, 3, 1, 2).to(out_dtype(depth, feat), memory_format=torch.contiguous_format)


@bev_pool.register_fake
def _bev_pool_fake(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, bev_shape):
    ranks = (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
    b, c, x, y = _check_tensors(depth, feat, ranks, bev_shape)
    return feat.new_empty((b, c, x, y), dtype=out_dtype(depth, feat))


@torch.library.custom_op("fuller::bev_pool_backward", mutates_args=())
def bev_pool_backward(grad_out: torch.Tensor, depth: torch.Tensor, feat: torch.Tensor,
                      ranks_depth: torch.Tensor, ranks_feat: torch.Tensor, ranks_bev: torch.Tensor,
                      interval_starts: torch.Tensor, interval_lengths: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_depth, grad_feat) of :func:`bev_pool` for the upstream gradient grad_out (B, C, X, Y).
    The indices were validated by the forward call that saved them."""
    c = feat.shape[-1]
    with _exact(depth.device):
        values, feat_rows = _operands(depth, feat, ranks_depth)
        grad_rows = grad_out.permute(0, 2, 3, 1).reshape(-1, c).to(values.dtype)
        point_grad, grad_feat = _backward_rows(grad_rows, values, feat_rows, ranks_feat, ranks_bev,
                                               interval_starts, interval_lengths, _use_sparse(depth.device))
        grad_depth = torch.zeros(depth.numel(), dtype=values.dtype, device=depth.device)
        grad_depth.index_add_(0, ranks_depth, point_grad)
    return grad_depth.view(depth.shape).to(depth.dtype), grad_feat.view(feat.shape).to(feat.dtype)


@bev_pool_backward.register_fake
def _bev_pool_backward_fake(grad_out, depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                            interval_lengths):
    return torch.empty_like(depth, memory_format=torch.contiguous_format), \
        torch.empty_like(feat, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:7])


def _backward(ctx, grad_out):
    grad_depth, grad_feat = torch.ops.fuller.bev_pool_backward(grad_out.contiguous(), *ctx.saved_tensors)
    need_depth, need_feat = ctx.needs_input_grad[:2]
    return (grad_depth if need_depth else None, grad_feat if need_feat else None,
            None, None, None, None, None, None)


bev_pool.register_autograd(_backward, setup_context=_setup_context)


def register_onnx_symbolic(opset: int) -> None:
    """Teach the TorchScript exporter the ``fuller::BevPool`` node (SPEC.md, schema.py)."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    from .schema import AOT, DOMAIN, OP_TYPE

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "v", "is")
    def symbolic(g, depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, bev_shape):
        out = g.op(f"{DOMAIN}::{OP_TYPE}", depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                   interval_lengths, batch_size_i=bev_shape[0], grid_x_i=bev_shape[1], grid_y_i=bev_shape[2],
                   plugin_namespace_s=DOMAIN, aot_i=AOT)
        channels = symbolic_helper._get_tensor_sizes(feat)[-1]
        out.setType(feat.type().with_sizes([bev_shape[0], channels, bev_shape[1], bev_shape[2]]))
        return out

    register_custom_op_symbolic("fuller::bev_pool", symbolic, opset)
