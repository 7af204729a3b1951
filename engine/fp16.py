"""Float16 cast of the exported ONNX graph, for a strongly-typed TensorRT build.

TensorRT 11 dropped the weakly-typed ``--fp16`` builder flag: a strongly-typed network computes in
the types the graph states. So ``build_engine.py --fp16`` builds from a graph whose float32
initializers and activations are float16, while its inputs and outputs keep their types (Casts at
the boundary), so the runtime feeds and reads the same tensors for either precision. The work is
onnxconverter-common's ``convert_float_to_float16``; this module prepares the graph for it and
checks the result:

* every node gets a unique name (the converter names its Casts after the nodes they serve);
* the outputs of the ``fuller`` custom nodes get declared types (float for BevPool's features,
  int32 for the sparse index ops' sites, counts and rulebooks): ONNX shape inference knows nothing
  of custom ops, and without these types the converter cannot see the float tensors downstream of
  them;
* ``Cast(to=FLOAT)`` nodes of the graph (not inside the blocked ops) now cast to FLOAT16, and
  ``Constant`` nodes given by ``value_float(s)`` become tensors: the converter rewrites neither, and
  either would put a float32 tensor where the graph now says float16;
* graph outputs keep their types even when a blocked op produces them (the converter would make
  such an output float16);
* the result must pass ``onnx.checker``'s full check (types included).

Integer tensors (voxel coordinates and counts, sparse rulebooks, BEV-pool ranks and intervals)
are untouched; BevPool takes float16 (its schema allows T = float | float16; its kernel accumulates
in float32), and the sparse convolutions' Gather and MatMul are TensorRT's own float16 layers.

Ops kept in float32 (:data:`FP32_OPS`; the converter wraps them in Casts): ``Resize`` and
``Upsample`` (their ``roi``/``scales`` inputs are float32 by the ONNX schema), ``NonMaxSuppression``
(likewise float32 boxes and scores), ``Range`` and ``CumSum`` (sequences and running sums lose
integer exactness in float16 beyond 2048). Not blocked: ``Softmax`` over the depth bins (TensorRT
reduces in float32 internally and float16 resolves probabilities down to 6e-8) and ``TopK`` over the
heatmap scores (its input is already computed in float16, so a float32 cast before it would not
restore precision). Nodes that need float32 for accuracy, such as a box decoder whose coordinates
exceed float16's 0.03 m resolution beyond 32 m, can be listed by name in ``node_block_list``.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

from .onnx_graph import declare_custom_outputs, name_nodes

FP32_OPS = ("Resize", "Upsample", "NonMaxSuppression", "Range", "CumSum")
# Largest finite float16: initializer values beyond it are clipped to it (not to the converter's
# default 1e4, which would alter representable constants).
FP16_MAX = 65504.0


def _retype_float_producers(graph, op_block_list: set[str], node_block_list: set[str]) -> None:
    from onnx import TensorProto, helper, numpy_helper

    for node in graph.node:
        if node.op_type in op_block_list or node.name in node_block_list:
            continue
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        elif node.op_type == "Constant":
            for attr in list(node.attribute):
                if attr.name in ("value_float", "value_floats"):
                    values = [attr.f] if attr.name == "value_float" else list(attr.floats)
                    tensor = numpy_helper.from_array(_float32_array(values, scalar=attr.name == "value_float"))
                    node.attribute.remove(attr)
                    node.attribute.append(helper.make_attribute("value", tensor))


def _float32_array(values: list[float], scalar: bool):
    import numpy as np

    array = np.asarray(values, dtype=np.float32)
    return array.reshape(()) if scalar else array


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]


def _restore_output_types(graph, types: dict[str, int]) -> None:
    """Give every graph output its original element type back. The converter turns an output of a
    blocked op into float16 (a Cast to float16 after the op): that Cast is dropped so the output
    comes straight from the op, in full precision. Any other changed output gets a Cast back."""
    from onnx import helper

    value_types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    for output in graph.output:
        want, have = types[output.name], output.type.tensor_type.elem_type
        if want == have:
            continue
        output.type.tensor_type.elem_type = want
        producer = next(node for node in graph.node if output.name in node.output)
        consumed = any(output.name in node.input for node in graph.node)
        if producer.op_type == "Cast" and not consumed and value_types.get(producer.input[0]) == want:
            source = producer.input[0]
            graph.node.remove(producer)
            _rename(graph, source, output.name)
            for info in [v for v in graph.value_info if v.name == source]:
                graph.value_info.remove(info)
            continue
        inner = output.name + "_fp16"
        while inner in taken:
            inner += "_"
        taken.add(inner)
        _rename(graph, output.name, inner)
        graph.node.append(helper.make_node("Cast", [inner], [output.name], to=want, name=inner + "_cast"))
        graph.value_info.append(helper.make_tensor_value_info(inner, have, None))


def cast_to_fp16(model, node_block_list: Iterable[str] = (), op_block_list: Iterable[str] = FP32_OPS):
    """A float16 copy of ``model`` (an ``onnx.ModelProto`` in float32) for a strongly-typed
    TensorRT build: float initializers and activations float16 except in ``op_block_list`` ops and
    ``node_block_list`` nodes, graph inputs and outputs of their original types. Raises ValueError
    if the model is already float16 or if the result fails ``onnx.checker``'s full check."""
    import onnx
    from onnxconverter_common import float16

    if float16.check_if_fp16_ready(model.graph):
        raise ValueError("cast_to_fp16: model: expected a float32 graph, got one that already holds float16 "
                         "tensors or Casts to float16")
    op_block_list, node_block_list = set(op_block_list), set(node_block_list)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    name_nodes(prepared.graph)
    declare_custom_outputs(prepared.graph)
    _retype_float_producers(prepared.graph, op_block_list, node_block_list)
    with warnings.catch_warnings():
        # one warning per weight below float16's smallest normal (trained filters have thousands);
        # the converter rounds them to +-1e-7 either way
        warnings.filterwarnings("ignore", message="the float32 number .* will be truncated")
        cast = float16.convert_float_to_float16(prepared, max_finite_val=FP16_MAX, keep_io_types=True,
                                                check_fp16_ready=False, op_block_list=sorted(op_block_list),
                                                node_block_list=sorted(node_block_list))
    _restore_output_types(cast.graph, {v.name: v.type.tensor_type.elem_type for v in model.graph.output})
    try:
        onnx.checker.check_model(cast, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ValueError(f"cast_to_fp16: the float16 graph fails onnx.checker's full check: {exc}") from exc
    return cast
