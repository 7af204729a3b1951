"""Triton kernels compiled to PTX for TensorRT's ahead-of-time plugin launcher (engine build only).

``tensorrt.plugin``'s ahead-of-time interface embeds one PTX kernel per plugin in the engine, and
TensorRT's C++ runtime launches it with the plugin's input pointers, then the ``SymIntExprs`` the
``aot_impl`` returned (int32 scalars), then the output pointers: nothing else (``aot_impl``'s
docstring in python/packaging/bindings_wheel/tensorrt/plugin/_lib.py of NVIDIA/TensorRT: "extra_args:
Symbolic expressions for scalar inputs to the kernel, located after the tensor inputs and before the
tensor outputs"; the interface, ``IPluginV3QuickAOTBuild`` in include/impl/NvInferPythonPlugin.h,
has ``getKernel`` and ``getLaunchParams`` only, no workspace and no further arguments).

Triton (3.3 on) appends two pointer parameters to every kernel, ``global_scratch`` and
``profile_scratch``, which TensorRT does not pass, and TensorRT's launcher is not open source, so
nothing shows what it would put there. :func:`compile_for_tensorrt` therefore removes them from the
PTX, so that the kernel's parameters are exactly the ones TensorRT passes. That is safe because the
kernel never reads them:

* Triton itself passes null for both when the compiled kernel's ``global_scratch_size`` and
  ``profile_scratch_size`` are 0 (third_party/nvidia/backend/driver.py of triton-lang/triton,
  ``CudaLauncher.__call__``: ``allocate_scratch`` returns None for size 0; driver.c ``_launch`` /
  ``extractPointer`` turns None into a null ``CUdeviceptr``), so such a kernel must not dereference
  them; this module refuses a kernel whose sizes are not 0;
* and the removal checks the PTX: a removed parameter may appear only in the ``.entry``
  declaration, never in the body (no ``ld.param`` of it), otherwise compilation fails.

Triton writes PTX of the ISA of the ptxas it bundles, which may be newer than the installed driver
loads (the driver compiles an engine's PTX when TensorRT loads it), so the kernel is recompiled for
the driver's ISA when needed. ``triton`` is imported inside the functions: this module is imported
by kernel modules that must stay importable without it.
"""
from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PtxKernel:
    """What ``aot_impl`` returns to TensorRT about one compiled kernel."""

    name: str
    ptx: str
    threads: int  # per block: num_warps * 32
    shared: int  # dynamic shared memory, bytes


def driver_ptx_version() -> int | None:
    """The newest PTX ISA (as Triton writes it: 90 for 9.0) the installed NVIDIA driver can load,
    or None if the driver or Triton's mapping from CUDA versions is not available."""
    try:
        from triton.backends.nvidia.compiler import ptx_get_version

        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
        return ptx_get_version(f"{version.value // 1000}.{version.value % 1000 // 10}")
    except (ImportError, OSError, AttributeError, RuntimeError):  # no driver, or Triton moved the mapping
        return None


def entry_parameters(ptx: str, name: str) -> list[str]:
    """The ``.param`` declarations of kernel ``name``'s ``.entry``, in order."""
    entry = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if entry is None:
        raise ValueError(f"no .entry {name} in the PTX")
    return [p.strip() for p in entry.group(1).split(",") if p.strip()]


def strip_trailing_parameters(ptx: str, name: str, keep: int) -> str:
    """``ptx`` with kernel ``name`` declaring only its first ``keep`` parameters. Raises ValueError
    if the body uses one of the removed ones."""
    params = entry_parameters(ptx, name)
    if len(params) < keep:
        raise ValueError(f"{name}: the PTX declares {len(params)} parameters, fewer than the {keep} expected")
    removed = [p.split()[-1] for p in params[keep:]]
    for param in removed:
        if len(re.findall(r"\b" + re.escape(param) + r"\b", ptx)) != 1:
            raise ValueError(f"{name}: the kernel body uses {param}, a parameter TensorRT does not pass")
    if not removed:
        return ptx
    entry = re.search(r"(\.entry\s+" + re.escape(name) + r"\s*\()(.*?)(\))", ptx, re.S)
    kept = ",\n".join("\t" + p for p in params[:keep])
    return ptx[:entry.start(2)] + "\n" + kept + "\n" + ptx[entry.end(2):]


def compile_for_tensorrt(fn, signature: dict[str, str], constexprs: dict[str, object], num_warps: int,
                         target=None) -> PtxKernel:
    """Compile the ``triton.jit`` function ``fn`` for ``target`` (a
    ``triton.backends.compiler.GPUTarget``; default the current GPU). ``signature`` lists every
    parameter in kernel order, ``"constexpr"`` for those in ``constexprs``; the others must be
    ordered (input pointers, int32 scalars, output pointers) as TensorRT passes them."""
    try:
        import triton
    except ImportError as exc:
        raise RuntimeError("compiling the fuller plugins' GPU kernels needs Triton (pip install triton)") from exc

    runtime = [n for n, kind in signature.items() if kind != "constexpr"]

    def compile_(ptx_version: int | None):
        source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        options = {"num_warps": num_warps, **({"ptx_version": ptx_version} if ptx_version else {})}
        return triton.compile(source, target=target, options=options)

    compiled = compile_(None)
    isa = re.search(r"^\s*\.version\s+(\d+)\.(\d+)", compiled.asm["ptx"], re.M)
    limit = driver_ptx_version()
    if limit is not None and isa is not None and int(isa.group(1)) * 10 + int(isa.group(2)) > limit:
        compiled = compile_(limit)
    name = compiled.metadata.name
    scratch = {k: getattr(compiled.metadata, k, 0) for k in ("global_scratch_size", "profile_scratch_size")}
    if any(scratch.values()):
        raise RuntimeError(f"{name}: the compiled kernel needs Triton scratch memory {scratch}, which TensorRT's "
                           "ahead-of-time launcher does not provide")
    ptx = strip_trailing_parameters(compiled.asm["ptx"], name, len(runtime))
    return PtxKernel(name, ptx, compiled.metadata.num_warps * 32, compiled.metadata.shared)
