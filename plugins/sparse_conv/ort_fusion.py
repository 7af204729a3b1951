"""ONNX Runtime's fused sparse layer: the graph's standard Gather + MatMul + Add of each sparse
convolution (SPEC.md) rewritten, in memory at session creation, into one
``fuller::SparseGatherGemm`` node whose CPU kernel (`cpu_kernels.gather_gemm`) skips the taps
with no neighbour.

Why: the standard composition multiplies every (site, tap) row, zero rows included, and on a
tiny-model LiDAR frame only 16-23 % of the (site, tap) pairs have a neighbour at full resolution
(52-61 % at the coarser levels), so 1.6-6x of its GEMM work is on zeros. The fused kernel
multiplies only the pairs with a neighbour, spconv's gather-GEMM-scatter. The exported artefact
keeps the standard ops, which TensorRT and INT8 builds read; only ONNX Runtime's CPU path takes
the fused node. An INT8 graph (``fuller quantize``) is left as it is: its Q/DQ pairs sit between
the Reshape and the MatMul, so the pattern does not match, and ONNX Runtime runs each layer as
one QLinearMatMul over every row. On the tiny model that takes 25 ms per frame with its Gathers
at 16 ms, against 53 ms for the float fused kernel (per-node profile, docs/deployment.md).

The pattern, as `fuller.export.lidar` writes it::

    flat  = Reshape(neighbours, [-1])           neighbours from fuller::SparseRulebook
    rows  = Concat(features, zeros(1, Cin))     axis 0, a constant zero row
    x     = Reshape(Gather(rows, flat), [-1, taps * Cin])
    out   = Add(MatMul(x, W), b)                W (taps * Cin, Cout), b (Cout,) initializers

becomes ``out = SparseGatherGemm(features, neighbours, W, b)``. Anything else is left as it is.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .schema import DOMAIN

FUSED = "SparseGatherGemm"


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads (repeatedly), then initializers nothing reads."""
    while True:
        needed = {o.name for o in graph.output} | {name for node in graph.node for name in node.input}
        live = [node for node in graph.node if any(out in needed for out in node.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    kept = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fuse_gather_gemm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every sparse layer's pattern fused (module docstring); returns it
    and the number of layers fused. Each layer's Add becomes the fused node; the nodes that only
    fed it are then unread and dropped."""
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    graph = fused.graph
    producer = {out: node for node in graph.node for out in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1

    def made_by(name: str, op_type: str, only_use: bool = True) -> onnx.NodeProto | None:
        node = producer.get(name)
        ok = node is not None and node.op_type == op_type and (uses.get(name) == 1 or not only_use)
        return node if ok else None

    count = 0
    for i, add in enumerate(graph.node):
        if add.op_type != "Add":
            continue
        matmul = made_by(add.input[0], "MatMul")
        reshape = matmul and made_by(matmul.input[0], "Reshape")
        gather = reshape and made_by(reshape.input[0], "Gather")
        concat = gather and made_by(gather.input[0], "Concat")
        flat = gather and made_by(gather.input[1], "Reshape", only_use=False)
        if not (concat and flat) or _attribute(gather, "axis", 0) != 0 or _attribute(concat, "axis", 0) != 0 \
                or len(concat.input) != 2 or not made_by(flat.input[0], "SparseRulebook", only_use=False):
            continue
        weight, bias = _constant(graph, matmul.input[1]), _constant(graph, add.input[1])
        zero = _constant(graph, concat.input[1])
        if weight is None or bias is None or zero is None or zero.ndim != 2 or zero.shape[0] != 1 or zero.any() \
                or weight.ndim != 2 or bias.shape != (weight.shape[1],) or weight.shape[0] % zero.shape[1]:
            continue
        graph.node[i].CopyFrom(helper.make_node(
            FUSED, [concat.input[0], flat.input[0], matmul.input[1], add.input[1]], list(add.output),
            domain=DOMAIN, name=f"{add.name or add.output[0]}/{FUSED}"))
        count += 1
    if count:
        _drop_dead(graph)
    return fused, count
