"""``fuller::bev_pool``: LSS BEV pooling of depth x context into BEV cells (BEVPoolv2 interface).

Everything about the op lives in this folder and depends on nothing else in the project:
``SPEC.md`` (the contract), ``reference`` (float64 NumPy ground truth, no torch) and ``torch_op``
(importing it registers ``torch.ops.fuller.bev_pool`` and its backward). Importing the package
itself loads no torch, so the runtime path can use the reference and the contract checks.
"""

DOMAIN = "fuller"
OP_NAME = "bev_pool"
