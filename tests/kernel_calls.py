"""The Triton kernels' launchers behind NumPy in and out, for tests/test_gpu_kernels.py: in the test
process on a CUDA GPU, else in one subprocess under Triton's interpreter (``TRITON_INTERPRET=1``
set for that process only, before it imports Triton: the variable is read when kernels are
decorated, and setting it in the test process would leak into every later test).

``python kernel_calls.py`` is that subprocess: it answers pickled ``(name, args)`` requests on stdin
with ``("ok", result)`` or ``("error", exception type name, message)`` on stdout.
"""
from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path


def _torch_device():
    import torch

    from fuller.plugins.bev_pool.triton_kernel import INTERPRETED

    return (torch.device("cpu"), torch.device("meta")) if INTERPRETED else (torch.device("cuda"), torch.device("cpu"))


def bev_pool(depth, feat, ranks, bev, dtype: str, index_dtype: str, feat_dtype: str | None = None,
             moved: int | None = None):
    """``bev_pool_triton`` on the arrays; ``feat_dtype`` overrides feat's dtype, ``moved`` puts that
    index array on a device the kernel must refuse."""
    import torch

    from fuller.plugins.bev_pool.triton_kernel import bev_pool_triton

    device, other = _torch_device()
    types = {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32, "int64": torch.int64}
    args = [torch.tensor(depth, dtype=types[dtype], device=device),
            torch.tensor(feat, dtype=types[feat_dtype or dtype], device=device)]
    args += [torch.tensor(r, dtype=types[index_dtype], device=other if i == moved else device)
             for i, r in enumerate(ranks)]
    return bev_pool_triton(*args, bev).cpu().numpy()


def _geometry(spec: dict):
    from fuller.plugins.sparse_conv.reference import ConvGeometry

    return ConvGeometry(**spec)


def sparse_sites(coords, count, geom: dict):
    import torch

    from fuller.plugins.sparse_conv.triton_kernel import sparse_sites_triton

    device, _ = _torch_device()
    out = sparse_sites_triton(torch.tensor(coords, device=device), torch.tensor(count, device=device),
                              _geometry(geom))
    return tuple(t.cpu().numpy() for t in out)


def sparse_rulebook(coords, count, sites, geom: dict):
    import torch

    from fuller.plugins.sparse_conv.triton_kernel import sparse_rulebook_triton

    device, _ = _torch_device()
    out = sparse_rulebook_triton(torch.tensor(coords, device=device), torch.tensor(count, device=device),
                                 torch.tensor(sites, device=device), _geometry(geom))
    return out.cpu().numpy()


CALLS = {f.__name__: f for f in (bev_pool, sparse_sites, sparse_rulebook)}


class Runner:
    """``runner(name, *args)``: the call of :data:`CALLS` in this process (``in_process``) or in the
    interpreter subprocess, started on first use; exceptions come back with their builtin type."""

    def __init__(self, in_process: bool) -> None:
        self.in_process = in_process
        self.worker: subprocess.Popen | None = None
        self.log = None

    def __call__(self, name: str, *args):
        if self.in_process:
            return CALLS[name](*args)
        if self.worker is None:
            self.log = tempfile.TemporaryFile()
            env = {**os.environ, "TRITON_INTERPRET": "1"}
            self.worker = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=self.log, env=env)
        pickle.dump((name, args), self.worker.stdin)
        self.worker.stdin.flush()
        try:
            status, *answer = pickle.load(self.worker.stdout)
        except EOFError:
            self.log.seek(0)
            raise RuntimeError(f"the interpreter subprocess died: {self.log.read().decode(errors='replace')[-3000:]}")
        if status == "ok":
            return answer[0]
        kind, message = answer
        raise getattr(builtins, kind, RuntimeError)(message)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stdin.close()
            self.worker.wait(timeout=60)
            self.log.close()
            self.worker = None


def serve() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed goes to the log, not into the answers
    while True:
        try:
            name, args = pickle.load(stdin)
        except EOFError:
            return
        try:
            answer = ("ok", CALLS[name](*args))
        except Exception as exc:  # sent back to the test, which raises it
            answer = ("error", type(exc).__name__, str(exc))
        pickle.dump(answer, stdout)
        stdout.flush()


if __name__ == "__main__":
    serve()
