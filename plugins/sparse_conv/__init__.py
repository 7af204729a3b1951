"""Sparse 3-D convolution as index ops (``fuller::SparseSites``, ``fuller::SparseRulebook``) plus
standard ONNX Gather and MatMul (SPEC.md)."""
