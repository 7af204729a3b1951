"""TensorRT plugin of ``fuller::SparseConv3d`` (``tensorrt.plugin``, just-in-time implementation).

:func:`register` registers the plugin ``fuller::SparseConv3d`` (namespace ``fuller``, name
``SparseConv3d``, version "1"). Output shapes are static: (out_capacity, Cout), (out_capacity, 4)
and (1,), so no size tensors are needed; the data-dependent part is the count output (SPEC.md).

Why just-in-time and not ahead-of-time like BevPool: ``tensorrt.plugin``'s ahead-of-time interface
embeds one kernel and one launch per plugin, while this op is a sequence: fill the input index grid,
scatter the rows, mark and enumerate the output sites (regular convolutions), then the implicit
GEMM, and it sizes its grids from the valid-row count and batch indices read on the host. So
``@trtp.impl`` runs ``triton_kernel.sparse_conv3d_triton`` on TensorRT's stream through PyTorch at
inference time: an engine holding this plugin needs Python, PyTorch, Triton and this module (call
:func:`register` before deserialising it). Running without Python would take an IPluginV3 written
in C++/CUDA with the same steps.

How TensorRT's ONNX parser finds it: by op_type ``SparseConv3d`` and the STRING attribute
``plugin_namespace="fuller"`` (``plugin_version`` defaults to "1"; the ONNX domain is not used); the
INT attribute ``aot=0`` asks for this just-in-time implementation. The parser passes the op's INT
attributes (kernel_*, stride_*, padding_*, shape_*, subm, out_capacity) as int32 fields.
``tensorrt`` and ``torch`` are imported inside the functions, so importing this module never fails.
"""
from typing import Tuple

from .reference import ConvGeometry
from .schema import ATTRIBUTES as _SCHEMA_ATTRIBUTES

PLUGIN_ID = "fuller::SparseConv3d"
ATTRIBUTES = tuple(_SCHEMA_ATTRIBUTES)  # the ONNX node's INT attributes, in the plugin's argument order
_registered = False


def register() -> None:
    """Register the plugin with TensorRT's plugin registry, once per process (later calls do nothing)."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    @trtp.register(PLUGIN_ID)
    def sparse_conv3d_desc(features: trtp.TensorDesc, coords: trtp.TensorDesc, count: trtp.TensorDesc,
                           weight: trtp.TensorDesc, bias: trtp.TensorDesc, kernel_x: int, kernel_y: int,
                           kernel_z: int, stride_x: int, stride_y: int, stride_z: int, padding_x: int,
                           padding_y: int, padding_z: int, shape_x: int, shape_y: int, shape_z: int, subm: int,
                           out_capacity: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        if features.dtype not in (trt.float32, trt.float16) or weight.dtype != features.dtype \
                or bias.dtype != features.dtype:
            raise ValueError(f"{PLUGIN_ID}: features, weight, bias: expected all float32 or all float16, got "
                             f"{features.dtype}, {weight.dtype}, {bias.dtype}")
        for name, desc in (("coords", coords), ("count", count)):
            if desc.dtype != trt.int32:
                raise ValueError(f"{PLUGIN_ID}: {name}: expected int32, got {desc.dtype}")
        values = (kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                  shape_x, shape_y, shape_z, subm, out_capacity)
        ConvGeometry.from_attributes(**dict(zip(ATTRIBUTES, values)))  # validates; errors name the attribute
        return (trtp.from_shape_expr((out_capacity, weight.shape_expr[4]), dtype=features.dtype),
                trtp.from_shape_expr((out_capacity, 4), dtype=trt.int32),
                trtp.from_shape_expr((1,), dtype=trt.int32))

    @trtp.impl(PLUGIN_ID)
    def sparse_conv3d_impl(features: trtp.Tensor, coords: trtp.Tensor, count: trtp.Tensor, weight: trtp.Tensor,
                           bias: trtp.Tensor, kernel_x: int, kernel_y: int, kernel_z: int, stride_x: int,
                           stride_y: int, stride_z: int, padding_x: int, padding_y: int, padding_z: int,
                           shape_x: int, shape_y: int, shape_z: int, subm: int, out_capacity: int,
                           outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from .triton_kernel import sparse_conv3d_triton

        values = (kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                  shape_x, shape_y, shape_z, subm, out_capacity)
        geom = ConvGeometry.from_attributes(**dict(zip(ATTRIBUTES, values)))
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            inputs = [torch.as_tensor(t, device="cuda") for t in (features, coords, count, weight, bias)]
            results = sparse_conv3d_triton(*inputs, geom)
            for target, result in zip(outputs, results):
                torch.as_tensor(target, device="cuda").copy_(result)

    _registered = True

