"""``fuller::BevPool``: LSS BEV pooling of depth x context into BEV cells (BEVPoolv2 interface).

Everything about the op lives in this folder and depends on nothing else in the project:
``SPEC.md`` (the contract), ``reference`` (float64 NumPy ground truth), ``numpy_kernel`` (the CPU
runtime kernel), ``schema`` (ONNX), ``ort_kernel`` (ONNX Runtime), ``torch_op`` (importing it
registers ``torch.ops.fuller.bev_pool`` and its backward), ``triton_kernel`` (GPU) and
``trt_plugin`` (TensorRT). Importing the package itself loads no torch, so the runtime path can
use everything but the torch op.
"""
