"""Preparing the exported graph for the ONNX converters that rewrite it by type: the float16 cast
(`fp16`) and the INT8 quantiser (`fuller.export.quantize`).

Both run ONNX shape inference and act on the tensors it types. The ``fuller`` custom ops have no
inference function, so everything downstream of them would stay untyped and be skipped (the
camera branch after BevPool, the whole LiDAR branch); declaring the custom outputs' types lets
inference carry on through them. Both also address nodes by name (block lists, Casts and Q/DQ
pairs named after the node they serve), so every node gets one.
"""
from __future__ import annotations

from fuller.plugins import custom_output_types


def name_nodes(graph) -> None:
    """Give every unnamed node a unique name (``<op type>_<index>``)."""
    taken = {node.name for node in graph.node if node.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def declare_custom_outputs(graph) -> None:
    """Add a typed value_info (float for BevPool's features, int32 for the sparse index ops'
    outputs) for each ``fuller`` node output that has none."""
    from onnx import helper

    types = custom_output_types()
    known = {v.name for v in (*graph.value_info, *graph.output)}
    for node in graph.node:
        for name, elem_type in zip(node.output, types.get((node.domain, node.op_type), ())):
            if name and name not in known:
                graph.value_info.append(helper.make_tensor_value_info(name, elem_type, None))
