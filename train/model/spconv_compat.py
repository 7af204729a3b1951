"""Make spconv 2.3.8's CPU package train correctly on machines without CUDA.

Two defects of the CPU path, each fixed by replacing one name in ``spconv.pytorch.ops`` (where the
sparse conv forward and backward look them up), and only where it bites: a machine with CUDA and
``spconv-cu12x`` is left untouched. Applied when this module is imported
(``fuller.train.model.lidar_encoder`` imports it); idempotent.

1. Backward raises. ``indice_conv_backward`` asks ``get_current_stream()`` for the CUDA stream
   before it looks at the device of its tensors, and that is
   ``torch.cuda.current_stream().cuda_stream``: "Torch not compiled with CUDA enabled" on a CPU-only
   torch. The CPU kernels ignore the stream, and 0 is CUDA's default stream, so returning 0 is exact.
   Applied where CUDA is unavailable.

2. Forward and backward are silently wrong, now and then. ``SpconvOps.scatter_add_cpu`` (the
   scatter of every conv's per-offset products, ``spconv/csrc/sparse/gather.py``) runs an OpenMP
   loop whose row pointers are declared outside the loop body and shared by the threads, so with
   more than one thread a row is sometimes added to the wrong output row. Its thread count follows
   torch's (``torch.set_num_threads(1)`` hides the race): on 2 threads about half of the forwards of
   a small encoder differed from the dense reference. It is replaced by torch's ``index_add_``,
   exact and as fast (the pair tables never repeat an output row within one kernel offset, and
   ``index_add_`` would be right even if they did). Applied with spconv's CPU-only build, the one
   whose convs run this Python path. The CUDA build's C++ conv path has the same loop for CPU
   tensors and cannot be patched from Python; only spconv-cu12x run on CPU tensors reaches it, which
   this project does not do.
"""
from __future__ import annotations

import spconv.pytorch.ops as spconv_ops
import torch
from spconv.core_cc.csrc.sparse.all import SpconvOps
from spconv.cppconstants import CPU_ONLY_BUILD


def _cpu_stream() -> int:
    """CUDA's default stream handle; spconv's CPU kernels take it and ignore it."""
    return 0


class _SpconvOpsCPU(SpconvOps):
    """spconv's ops with a race-free CPU scatter-add; everything else inherited unchanged."""

    @staticmethod
    def scatter_add_cpu(out, inp, inds) -> None:
        """out[inds[i]] += inp[i] for i < len(inds), on tensorview CPU tensors (shared memory)."""
        index = torch.from_numpy(inds.numpy_view()).long()
        target = torch.from_numpy(out.numpy_view())
        source = torch.from_numpy(inp.numpy_view())[: len(index)]
        target.index_add_(0, index, source)


def patch_spconv_cpu() -> bool:
    """Apply the fixes this machine needs (module docstring); return whether any is in effect."""
    if not torch.cuda.is_available():
        spconv_ops.get_current_stream = _cpu_stream
    if CPU_ONLY_BUILD:
        spconv_ops.SpconvOps = _SpconvOpsCPU
    return not torch.cuda.is_available() or CPU_ONLY_BUILD


SPCONV_CPU_PATCHED = patch_spconv_cpu()
