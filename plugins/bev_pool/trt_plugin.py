"""TensorRT plugin of ``fuller::BevPool`` (``tensorrt.plugin``, ahead-of-time Triton kernel).

:func:`register` registers the plugin ``fuller::BevPool`` (namespace ``fuller``, name ``BevPool``,
version "1") with TensorRT's plugin registry. Its ahead-of-time implementation compiles
``triton_kernel.bev_pool_kernel`` to PTX at engine build time; TensorRT embeds the PTX in the engine
and launches it itself, so an engine that holds this plugin runs without Python (trtexec, C++).

How TensorRT's ONNX parser finds it: a node the parser has no importer for is looked up in the
plugin registry by (op_type, attribute ``plugin_version`` (default "1"), attribute
``plugin_namespace`` (default "")); the node's ONNX domain is not used. An INT attribute ``aot``
= 1 asks for the ahead-of-time implementation. So the exported node is
``BevPool(..., batch_size, grid_x, grid_y, plugin_namespace="fuller", aot=1)``; the parser hands
the node's attributes that the plugin declares (batch_size, grid_x, grid_y, as int32) to it and
ignores the others.

Contract as in SPEC.md, with the ONNX types: depth and feat float32 or float16 (one type), the five
index arrays int32, P and I dynamic; the kernel trusts the index values (see triton_kernel.py).

What the ``aot_impl`` relies on, read in python/packaging/bindings_wheel/tensorrt/plugin/ of
NVIDIA/TensorRT: ``get_launch_params`` (_plugin_class.py) passes every attribute positionally in
registration order, so ``aot_impl`` takes all three; each extra kernel argument must be a
``trtp.SymInt32``; the kernel receives the input pointers, those int32 scalars and the output
pointer, nothing more (``aot_impl``'s docstring, _lib.py), which is why the PTX is compiled without
Triton's trailing scratch parameters (``plugins/triton_aot.py`` has the evidence that this is safe).
The launch is one kernel, no host synchronisation, no memory of its own.

``tensorrt`` is imported inside :func:`register` and ``triton`` (through ``triton_kernel``) inside
the ``aot_impl`` body, which runs at engine build only: importing this module and registering the
plugin need neither torch nor Triton, and an engine that holds the plugin needs neither to run.
"""
from typing import Tuple, Union

from .reference import RANK_NAMES

PLUGIN_ID = "fuller::BevPool"
_registered = False


def register() -> None:
    """Register the plugin with TensorRT's plugin registry, once per process (later calls do
    nothing). Needs ``tensorrt`` with ahead-of-time plugin support; the engine build also needs Triton."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if not hasattr(trtp, "aot_impl"):
        raise RuntimeError(f"{PLUGIN_ID}: TensorRT {trt.__version__} has no ahead-of-time Python plugins "
                           "(tensorrt.plugin.aot_impl); install a newer TensorRT 10 or 11")
    floats = {trt.float32: "float32", trt.float16: "float16"}

    @trtp.register(PLUGIN_ID)
    def bev_pool_desc(depth: trtp.TensorDesc, feat: trtp.TensorDesc, ranks_depth: trtp.TensorDesc,
                      ranks_feat: trtp.TensorDesc, ranks_bev: trtp.TensorDesc, interval_starts: trtp.TensorDesc,
                      interval_lengths: trtp.TensorDesc, batch_size: int, grid_x: int,
                      grid_y: int) -> trtp.TensorDesc:
        if depth.dtype not in floats or feat.dtype != depth.dtype:
            raise ValueError(f"{PLUGIN_ID}: depth, feat: expected both float32 or both float16, got "
                             f"{depth.dtype}, {feat.dtype}")
        for name, desc in zip(RANK_NAMES, (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)):
            if desc.dtype != trt.int32:
                raise ValueError(f"{PLUGIN_ID}: {name}: expected int32, got {desc.dtype}")
        if min(batch_size, grid_x, grid_y) < 1:
            raise ValueError(f"{PLUGIN_ID}: batch_size, grid_x, grid_y: expected positive integers, got "
                             f"{batch_size}, {grid_x}, {grid_y}")
        return trtp.from_shape_expr((batch_size, feat.shape_expr[3], grid_x, grid_y), dtype=feat.dtype)

    @trtp.aot_impl(PLUGIN_ID)
    def bev_pool_aot(depth: trtp.TensorDesc, feat: trtp.TensorDesc, ranks_depth: trtp.TensorDesc,
                     ranks_feat: trtp.TensorDesc, ranks_bev: trtp.TensorDesc, interval_starts: trtp.TensorDesc,
                     interval_lengths: trtp.TensorDesc, batch_size: int, grid_x: int, grid_y: int,
                     outputs: Tuple[trtp.TensorDesc], tactic: int
                     ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        from .triton_kernel import BLOCK_C, BLOCK_CELLS, compile_ptx

        kernel = compile_ptx(floats[feat.dtype], "int32")
        cells, channels = batch_size * grid_x * grid_y, feat.shape_expr[3]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = -(-cells // BLOCK_CELLS)
        launch.grid_y = trtp.cdiv(channels, BLOCK_C)
        launch.block_x = kernel.threads
        launch.shared_mem = kernel.shared
        # The kernel's scalars, in its order (triton_kernel.KERNEL_SCALARS); each must be a SymInt32.
        scalars = (interval_starts.shape_expr[0], channels, grid_x * grid_y, cells)
        return kernel.name, kernel.ptx, launch, trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])

    _registered = True
