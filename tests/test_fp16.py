"""export/fp16.py: the float16 cast of an exported graph for a strongly-typed TensorRT build.

Checked on small hand-built graphs: the cast graph passes onnx.checker's full check, every float
tensor but the graph's inputs and outputs (and the blocked ops' own tensors) is float16, integer
inputs are untouched, the fuller::BevPool node takes float16, and ONNX Runtime gives the float32
graph's numbers to float16 accuracy.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fuller.engine.contract import GEOMETRY_INPUTS
from fuller.engine.fp16 import FP32_OPS, cast_to_fp16
from fuller.plugins import register_onnx_schemas

FLOAT, HALF, INT32 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32
IR_VERSION = 8  # opset 17's; one every ONNX Runtime release that runs opset 17 reads


def initializer(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def camera_graph(named: bool = True) -> onnx.ModelProto:
    """images -> Conv (depth) / Conv + Transpose (channels-last context) -> fuller::BevPool ->
    Relu -> Resize (blocked) -> output; plus an integer path Cast(int32 -> float) and a Constant
    given by value_float, the two producers the converter would leave in float32."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["images", "w_depth", "b_depth"], ["depth_logits"], pads=[1, 1, 1, 1]),
        helper.make_node("Softmax", ["depth_logits"], ["depth"], axis=1),
        helper.make_node("Conv", ["images", "w_feat"], ["feat_nchw"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat_nchw"], ["feat_relu"]),
        helper.make_node("Transpose", ["feat_relu"], ["feat"], perm=[0, 2, 3, 1]),
        helper.make_node("BevPool", ["depth", "feat", *GEOMETRY_INPUTS], ["bev"], domain="fuller", batch_size=1,
                         grid_x=5, grid_y=5),
        helper.make_node("Relu", ["bev"], ["bev_relu"]),
        helper.make_node("Resize", ["bev_relu", "", "scales"], ["bev_up"], mode="nearest"),
        helper.make_node("Cast", ["interval_lengths"], ["lengths_f"], to=FLOAT),
        helper.make_node("ReduceSum", ["lengths_f"], ["points_f"], keepdims=0),
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Mul", ["points_f", "half"], ["points_half"]),
    ]
    for i, node in enumerate(nodes):
        node.name = f"n{i}_{node.op_type}" if named else ""
    inputs = [helper.make_tensor_value_info("images", FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(name, INT32, ["points" if "ranks" in name else "intervals"])
               for name in GEOMETRY_INPUTS]
    outputs = [helper.make_tensor_value_info("bev_up", FLOAT, [1, 6, 10, 10]),
               helper.make_tensor_value_info("points_half", FLOAT, [])]
    inits = [initializer("w_depth", rng.standard_normal((4, 3, 3, 3))), initializer("b_depth", rng.standard_normal(4)),
             initializer("w_feat", rng.standard_normal((6, 3, 3, 3))), initializer("scales", [1, 1, 2, 2])]
    graph = helper.make_graph(nodes, "camera", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("fuller", 1)],
                             ir_version=IR_VERSION)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inferred value_info, inputs, outputs, initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


@pytest.fixture(scope="module", autouse=True)
def schemas():
    register_onnx_schemas()


def test_cast_graph_passes_full_check_and_is_float16_inside():
    model = camera_graph()
    cast = cast_to_fp16(model)
    onnx.checker.check_model(cast, full_check=True)
    io = {v.name: v.type.tensor_type.elem_type for v in (*cast.graph.input, *cast.graph.output)}
    assert io == {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    resize = next(n for n in cast.graph.node if n.op_type == "Resize")
    kept_fp32 = set(io) | {name for name in (*resize.input, *resize.output) if name}
    types = tensor_types(cast)
    floats = {name: t for name, t in types.items() if t in (FLOAT, HALF)}
    assert {name for name, t in floats.items() if t == FLOAT} == {n for n in kept_fp32 if types.get(n) == FLOAT}
    assert all(floats[name] == HALF for name in floats if name not in kept_fp32)
    assert types["scales"] == FLOAT  # Resize's scales are float32 by the ONNX schema
    assert list(resize.output) == ["bev_up"]  # the blocked op's float32 result is the output, not a float16 copy
    for name in ("w_depth", "b_depth", "w_feat", "depth", "feat", "bev", "lengths_f", "half"):
        assert types[name] == HALF, name


def test_custom_node_takes_float16_and_integer_inputs_are_untouched():
    cast = cast_to_fp16(camera_graph())
    types = tensor_types(cast)
    pool = next(n for n in cast.graph.node if n.op_type == "BevPool")
    assert pool.domain == "fuller" and [types[name] for name in pool.input[:2]] == [HALF, HALF]
    assert list(pool.input[2:]) == list(GEOMETRY_INPUTS)  # the int32 graph inputs themselves, no Cast
    assert all(types[name] == INT32 for name in GEOMETRY_INPUTS)


def test_unnamed_nodes_and_block_lists():
    cast = cast_to_fp16(camera_graph(named=False), node_block_list=())
    onnx.checker.check_model(cast, full_check=True)
    names = [n.name for n in cast.graph.node]
    assert all(names) and len(set(names)) == len(names)
    kept = cast_to_fp16(camera_graph(), node_block_list=["n6_Relu"])
    relu = next(n for n in kept.graph.node if n.name == "n6_Relu")
    assert {tensor_types(kept)[name] for name in (*relu.input, *relu.output)} == {FLOAT}
    assert "Resize" in FP32_OPS


def test_output_of_blocked_op_that_is_also_consumed_keeps_its_type():
    model = camera_graph()
    model.graph.node.append(helper.make_node("Relu", ["bev_up"], ["bev_up_relu"], name="extra_relu"))
    model.graph.output.append(helper.make_tensor_value_info("bev_up_relu", FLOAT, [1, 6, 10, 10]))
    cast = cast_to_fp16(model)
    onnx.checker.check_model(cast, full_check=True)
    types = tensor_types(cast)
    assert types["bev_up"] == FLOAT and types["bev_up_relu"] == FLOAT
    relu = next(n for n in cast.graph.node if n.name == "extra_relu")
    assert types[relu.input[0]] == HALF


def test_already_float16_is_refused():
    with pytest.raises(ValueError, match="float16"):
        cast_to_fp16(cast_to_fp16(camera_graph()))


def standard_graph() -> onnx.ModelProto:
    """The same shape of graph with standard ops only, so ONNX Runtime can run both precisions."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Softmax", ["conv"], ["prob"], axis=1, name="softmax"),
        helper.make_node("Resize", ["prob", "", "scales"], ["up"], mode="linear", name="resize"),
        helper.make_node("Cast", ["counts"], ["counts_f"], to=FLOAT, name="cast"),
        helper.make_node("Constant", [], ["third"], value_floats=[1 / 3], name="third"),
        helper.make_node("Mul", ["counts_f", "third"], ["scaled"], name="mul"),
    ]
    inputs = [helper.make_tensor_value_info("images", FLOAT, [1, 3, 8, 8]),
              helper.make_tensor_value_info("counts", INT32, [4])]
    outputs = [helper.make_tensor_value_info("up", FLOAT, [1, 5, 16, 16]),
               helper.make_tensor_value_info("scaled", FLOAT, [4])]
    inits = [initializer("w", rng.standard_normal((5, 3, 3, 3)) * 0.5), initializer("b", rng.standard_normal(5)),
             initializer("scales", [1, 1, 2, 2])]
    graph = helper.make_graph(nodes, "standard", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def test_onnxruntime_float16_matches_float32():
    ort = pytest.importorskip("onnxruntime")
    model = standard_graph()
    feeds = {"images": np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32),
             "counts": np.array([0, 3, 100, 2047], np.int32)}

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    (up32, scaled32), (up16, scaled16) = run(model), run(cast_to_fp16(model))
    assert up16.dtype == np.float32 and scaled16.dtype == np.float32  # outputs keep their types
    np.testing.assert_allclose(up16, up32, atol=2e-3)  # probabilities in [0, 1]: float16 resolution 5e-4
    np.testing.assert_allclose(scaled16, scaled32, rtol=1e-3)
