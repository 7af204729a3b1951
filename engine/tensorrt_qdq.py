"""TensorRT's rules for a graph with QuantizeLinear/DequantizeLinear pairs (explicit
quantisation), checked before a build: what ``fuller quantize`` must write and what
``build_engine --int8`` must be given. They hold for TensorRT 10 and 11 and are what its ONNX
parser refuses otherwise."""
from __future__ import annotations


def qdq_violations(model) -> list[str]:
    """What in ``model``'s QuantizeLinear/DequantizeLinear pairs TensorRT's explicit quantisation
    does not take, one line per problem (empty: none). TensorRT quantises symmetrically to INT8:
    scales constant, finite and positive; zero points given, INT8 and zero; a DequantizeLinear
    reads INT8 only (an INT32 bias, as ONNX Runtime's quantiser writes by default, fails the
    parser: "only activation types allowed as input to this layer"); INT8 weights lie in
    [-127, 127], with one scale per channel along the DequantizeLinear's axis."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    constants.update({node.output[0]: node.attribute[0].t for node in model.graph.node
                      if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        scale = constants.get(node.input[1])
        if scale is None:
            problems.append(f"{where}: scale {node.input[1]!r} is not a constant")
            continue
        scale = numpy_helper.to_array(scale)
        if scale.dtype != np.float32 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            problems.append(f"{where}: scale must be finite positive float32, got {scale.dtype} {scale.ravel()[:4]}")
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            problems.append(f"{where}: no constant INT8 zero point (absent means UINT8)")
        elif zero.data_type != TensorProto.INT8 or numpy_helper.to_array(zero).any():
            problems.append(f"{where}: zero point must be INT8 zeros, got "
                            f"{TensorProto.DataType.Name(zero.data_type)} {numpy_helper.to_array(zero).ravel()[:4]}")
        if node.op_type == "DequantizeLinear" and node.input[0] in constants:
            weight = numpy_helper.to_array(constants[node.input[0]])
            if weight.dtype != np.int8:
                problems.append(f"{where}: reads a {weight.dtype} constant; TensorRT dequantizes INT8 only")
                continue
            if weight.min(initial=0) < -127:
                problems.append(f"{where}: INT8 weights must lie in [-127, 127], got {int(weight.min())}")
            if scale.size > 1:
                axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
                if weight.ndim <= axis or weight.shape[axis] != scale.size:
                    problems.append(f"{where}: {scale.size} scales for axis {axis} of weights {list(weight.shape)}")
    return problems
