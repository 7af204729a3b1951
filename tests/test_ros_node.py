"""The fuller_perception node: its parameters (defaults, validation, topic derivation, camera set),
which model file it loads, the launch file, and, where ROS 2 is installed, the rclpy node itself
(parameters, subscriptions and publishers, and a PointCloud2 + images in, a Detection3DArray out)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import math
import os
import sys
import time
import types as pytypes
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import fuller.ros2_node
from fuller.engine.nvidia import TENSORRT_MISSING
from fuller.ros2_node import types
from fuller.ros2_node.params import (DEFAULTS, DESCRIPTIONS, RUNTIME_PARAMETERS, NodeParams, ParameterError,
                                     model_artifact)

LAUNCH_FILE = Path(fuller.ros2_node.__file__).parent / "launch" / "fuller_perception.launch.py"
NO_RCLPY = ("rclpy is not installed: it comes with a ROS 2 install (source /opt/ros/<distro>/setup.bash), "
            "not from PyPI")
NO_VISION_MSGS = "vision_msgs is not installed (sudo apt install ros-$ROS_DISTRO-vision-msgs)"
# Markers, not fixtures, so that the session fixture small_onnx is not built for a skipped test.
needs_rclpy = pytest.mark.skipif(importlib.util.find_spec("rclpy") is None, reason=NO_RCLPY)
needs_vision_msgs = pytest.mark.skipif(importlib.util.find_spec("vision_msgs") is None, reason=NO_VISION_MSGS)

# The documented defaults, written out independently of the dataclass.
DOCUMENTED = {
    "device": "cuda", "lidar_topic": "/lidar_top/points", "cameras": [],
    "camera_topic_format": "/{camera}/image/compressed", "camera_info_topic_format": "/{camera}/camera_info",
    "image_transport": "compressed", "fixed_frame": "map", "output_prefix": "/fuller", "score_threshold": 0.3,
    "map_threshold": 0.5, "missing_camera": "skip", "slop_s": 0.08, "queue_size": 10, "max_camera_wait_s": 0.3,
    "compensate_ego_motion": True, "build_engine": True,
}


@pytest.fixture
def model_file(tmp_path) -> str:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Parameters


def test_defaults_are_the_documented_ones_and_valid(model_file):
    params = NodeParams.from_mapping({"model": model_file})
    assert params == NodeParams(model=model_file)
    assert {name: getattr(params, name) for name in DOCUMENTED} == DOCUMENTED
    assert type(params.score_threshold) is float and type(params.queue_size) is int
    assert params.image_type == "sensor_msgs/msg/CompressedImage"


def test_defaults_table_matches_the_dataclass(model_file):
    params = NodeParams(model=model_file)
    names = [f.name for f in fields(NodeParams)]
    assert DEFAULTS == {name: getattr(params, name) for name in names if name != "model"}
    assert set(DESCRIPTIONS) == set(names) and all(DESCRIPTIONS.values())
    assert set(RUNTIME_PARAMETERS) == {"score_threshold", "map_threshold"}
    # the default list is not shared between instances or with DEFAULTS
    params.cameras.append("CAM_FRONT")
    assert DEFAULTS["cameras"] == [] and NodeParams(model=model_file).cameras == []


INVALID = [
    ("device", "gpu"), ("device", ""), ("device", 0),
    ("lidar_topic", "lidar_top/points"), ("lidar_topic", "/lidar_top//points"), ("lidar_topic", "/lidar_top/"),
    ("lidar_topic", "/2d/points"),
    ("cameras", ["CAM_FRONT", "CAM_FRONT"]), ("cameras", ["CAM FRONT"]), ("cameras", "CAM_FRONT"), ("cameras", [1]),
    ("camera_topic_format", "/cam/image"), ("camera_topic_format", "/{camera}/{kind}"),
    ("camera_topic_format", "/{camera/image"), ("camera_topic_format", "{camera}/image"),
    ("camera_info_topic_format", "/camera_info"),
    ("image_transport", "theora"),
    ("fixed_frame", "/map"), ("fixed_frame", ""),
    ("output_prefix", "fuller"), ("output_prefix", "/fuller/"), ("output_prefix", ""),
    ("score_threshold", 1.5), ("score_threshold", -0.1), ("score_threshold", math.nan), ("score_threshold", "0.3"),
    ("map_threshold", 2), ("map_threshold", True),
    ("missing_camera", "wait"),
    ("slop_s", 0.0), ("slop_s", -1), ("slop_s", math.inf),
    ("queue_size", 0), ("queue_size", 2.5), ("queue_size", True),
    ("max_camera_wait_s", 0), ("max_camera_wait_s", math.nan),
    ("compensate_ego_motion", 1), ("compensate_ego_motion", "true"),
    ("build_engine", "yes"),
]


@pytest.mark.parametrize("name, value", INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_invalid_value_names_the_parameter(model_file, name, value):
    with pytest.raises(ParameterError) as info:
        NodeParams.from_mapping({"model": model_file, name: value})
    assert info.value.name.startswith(name)
    assert str(info.value).startswith(f"parameter {name}") and "expected" in str(info.value)


def test_model_must_exist_with_a_known_suffix(tmp_path, model_file):
    text = tmp_path / "model.txt"
    text.write_text("x")
    for model in ("", str(tmp_path / "absent.onnx"), str(text)):
        with pytest.raises(ParameterError) as info:
            NodeParams.from_mapping({"model": model})
        assert info.value.name == "model"
    with pytest.raises(ParameterError, match="parameter model: expected a model path"):
        NodeParams.from_mapping({"device": "cpu"})
    for suffix in (".engine", ".pt", ".pth", ".ONNX"):
        path = tmp_path / f"m{suffix}"
        path.write_bytes(b"\0")
        assert NodeParams(model=str(path)).model == str(path)


def test_unknown_parameter_lists_the_known_ones(model_file):
    with pytest.raises(ParameterError) as info:
        NodeParams.from_mapping({"model": model_file, "lidar_topc": "/points"})
    assert info.value.name == "lidar_topc"
    assert all(f.name in str(info.value) for f in fields(NodeParams))


def test_accepted_conversions_and_boundaries(model_file):
    params = NodeParams.from_mapping({"model": model_file, "slop_s": 1, "score_threshold": 0, "map_threshold": 1,
                                      "cameras": ("CAM_BACK", "CAM_FRONT")})
    assert params.slop_s == 1.0 and type(params.slop_s) is float
    assert params.score_threshold == 0.0 and params.map_threshold == 1.0
    assert params.cameras == ["CAM_BACK", "CAM_FRONT"]
    with pytest.raises(ParameterError, match="parameter slop_s"):  # direct construction checks types too
        NodeParams(model=model_file, slop_s=1)


def test_topic_derivation(model_file):
    params = NodeParams(model=model_file)
    cameras = ["CAM_FRONT", "CAM_BACK_LEFT"]
    assert params.camera_topics(cameras) == ["/cam_front/image/compressed", "/cam_back_left/image/compressed"]
    assert params.camera_info_topics(cameras) == ["/cam_front/camera_info", "/cam_back_left/camera_info"]
    raw = NodeParams(model=model_file, image_transport="raw", camera_topic_format="/sensors/{camera}/image_raw",
                     camera_info_topic_format="/sensors/{camera}/info")
    assert raw.image_type == "sensor_msgs/msg/Image"
    assert raw.camera_topics(cameras) == ["/sensors/cam_front/image_raw", "/sensors/cam_back_left/image_raw"]
    assert raw.camera_info_topics(cameras[:1]) == ["/sensors/cam_front/info"]


def test_cameras_are_checked_against_the_model(model_file, small_cfg):
    model_cameras = list(small_cfg.geometry.cameras)
    assert model_cameras == ["CAM_FRONT", "CAM_BACK"]
    assert NodeParams(model=model_file).resolved_cameras(model_cameras) == ["CAM_FRONT", "CAM_BACK"]
    reordered = NodeParams(model=model_file, cameras=["CAM_BACK", "CAM_FRONT"])
    assert reordered.resolved_cameras(model_cameras) == ["CAM_FRONT", "CAM_BACK"]  # the model's order
    for cameras in (["CAM_FRONT"], ["CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"], ["CAM_FRONT", "CAM_BACK_LEFT"]):
        with pytest.raises(ParameterError) as info:
            NodeParams(model=model_file, cameras=cameras).resolved_cameras(model_cameras)
        assert info.value.name == "cameras" and "CAM_BACK" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Which file the engine loads


class FakeBuild:
    """Stands in for the TensorRT build: records the arguments, writes an engine and its sidecar."""

    def __init__(self):
        self.calls = []

    def __call__(self, onnx_path, out, *, fp16=False, int8=False):
        self.calls.append((Path(onnx_path), Path(out), fp16) + ((int8,) if int8 else ()))
        Path(out).write_bytes(b"engine")
        Path(str(out) + ".json").write_text("{}")
        return Path(out)


@pytest.fixture
def fake_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", pytypes.ModuleType("tensorrt"))
    build = FakeBuild()
    monkeypatch.setattr("fuller.ros2_node.params.build_engine", build)
    return build


def test_onnx_runs_on_onnx_runtime_without_tensorrt(monkeypatch, model_file):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    messages = []
    assert model_artifact(NodeParams(model=model_file), messages.append) == Path(model_file)
    assert len(messages) == 1 and TENSORRT_MISSING in messages[0]


def test_onnx_engine_is_built_once_then_reused(tmp_path, model_file, fake_tensorrt):
    params = NodeParams(model=model_file)
    engine = tmp_path / "model.engine"
    assert model_artifact(params, lambda _: None) == engine
    assert fake_tensorrt.calls == [(Path(model_file), engine, True)]
    assert model_artifact(params, lambda _: None) == engine
    assert len(fake_tensorrt.calls) == 1
    os.utime(engine, (1, 1))  # older than the ONNX file: the model changed since the build
    assert model_artifact(params, lambda _: None) == engine
    assert len(fake_tensorrt.calls) == 2
    Path(str(engine) + ".json").unlink()  # no sidecar: an interrupted build
    model_artifact(params, lambda _: None)
    assert len(fake_tensorrt.calls) == 3


def test_an_int8_graph_is_built_with_its_int8_not_fp16(tmp_path, fake_tensorrt):
    import onnx
    from onnx import TensorProto, helper

    from fuller.engine import contract

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    model.metadata_props.add(key=contract.META_PRECISION, value="int8")
    path = tmp_path / "fuller.int8.onnx"
    onnx.save(model, path)
    messages = []
    assert model_artifact(NodeParams(model=str(path)), messages.append) == tmp_path / "fuller.int8.engine"
    assert fake_tensorrt.calls == [(path, tmp_path / "fuller.int8.engine", False, True)]
    assert "with int8" in messages[-1]


def test_other_models_load_as_given(tmp_path, model_file, fake_tensorrt):
    assert model_artifact(NodeParams(model=model_file, build_engine=False), print) == Path(model_file)
    for name in ("model.engine", "model.pt"):
        path = tmp_path / name
        path.write_bytes(b"\0")
        assert model_artifact(NodeParams(model=str(path)), print) == path
    assert fake_tensorrt.calls == []


# ---------------------------------------------------------------------------------------------
# Launch file


def _callee(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _callee(n) == name]


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _reads(value: ast.AST, helpers: dict[str, ast.FunctionDef]) -> set[str]:
    """The launch configurations a parameter value reads: ``LaunchConfiguration("x")`` itself, or a
    call ``helper("x")`` of a function in the launch file that passes its argument to one."""
    reads = set()
    for call in (c for c in ast.walk(value) if isinstance(c, ast.Call)):
        if _callee(call) == "LaunchConfiguration":
            reads.add(ast.literal_eval(call.args[0]))
        elif _callee(call) in helpers:
            helper = helpers[_callee(call)]
            argument = helper.args.args[0].arg
            if any(isinstance(c.args[0], ast.Name) and c.args[0].id == argument
                   for c in _calls(helper, "LaunchConfiguration")):
                reads.add(ast.literal_eval(call.args[0]))
    return reads


def test_launch_file_declares_every_parameter_it_forwards():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    declared = {call.args[0].value: call for call in _calls(tree, "DeclareLaunchArgument")}
    (node,) = _calls(tree, "Node")
    assert [ast.literal_eval(a) for a in _keyword(node, "arguments").elts] == ["-m", "fuller.ros2_node.node"]
    assert ast.literal_eval(_keyword(node, "name")) == "fuller_perception"
    (parameters,) = _keyword(node, "parameters").elts
    helpers = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    forwarded = {key.value: _reads(value, helpers) for key, value in zip(parameters.keys, parameters.values)}
    field_names = {f.name for f in fields(NodeParams)}
    assert {"model", "device", "fixed_frame", "image_transport", "missing_camera", "score_threshold"} <= set(forwarded)
    for name, reads in forwarded.items():
        assert name in field_names, f"{name} is not a node parameter"
        assert name in declared, f"{name} is forwarded but no launch argument declares it"
        assert reads == {name}, f"{name} is given the launch configurations {reads}"
    assert set(declared) == set(forwarded), "a launch argument is declared but not forwarded"
    assert _keyword(declared["model"], "default_value") is None  # required
    for name, call in declared.items():
        default = _keyword(call, "default_value")
        if name != "model":  # defaults come from DEFAULTS, not restated
            assert ast.unparse(default) == f"str(DEFAULTS[{name!r}])"


# ---------------------------------------------------------------------------------------------
# The rclpy node


@pytest.mark.skipif(importlib.util.find_spec("rclpy") is not None, reason="rclpy is installed here")
def test_node_import_without_rclpy_says_where_rclpy_comes_from(monkeypatch):
    monkeypatch.delitem(sys.modules, "fuller.ros2_node.node", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("fuller.ros2_node.node")
    assert "source /opt/ros/<distro>/setup.bash" in str(info.value) and "not from PyPI" in str(info.value)


@pytest.fixture
def ros_context():
    rclpy = pytest.importorskip("rclpy", reason=NO_RCLPY)
    pytest.importorskip("vision_msgs", reason=NO_VISION_MSGS)
    from rclpy.context import Context

    context = Context()
    rclpy.init(args=[], context=context)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture
def perception_node(ros_context, small_onnx):
    from rclpy.parameter import Parameter

    from fuller.ros2_node.node import FullerPerceptionNode

    overrides = [Parameter("model", value=str(small_onnx)), Parameter("device", value="cpu"),
                 Parameter("build_engine", value=False), Parameter("compensate_ego_motion", value=False),
                 Parameter("score_threshold", value=0.0)]
    node = FullerPerceptionNode(context=ros_context, parameter_overrides=overrides, use_global_arguments=False)
    yield node
    node.destroy_node()


# The small model's cameras; topics derived by hand from the documented defaults.
INPUTS = {
    "/lidar_top/points": types.POINTCLOUD2,
    "/cam_front/image/compressed": types.COMPRESSED_IMAGE, "/cam_back/image/compressed": types.COMPRESSED_IMAGE,
    "/cam_front/camera_info": types.CAMERA_INFO, "/cam_back/camera_info": types.CAMERA_INFO,
    "/tf": types.TF_MESSAGE, "/tf_static": types.TF_MESSAGE,
}


@pytest.mark.slow
@needs_vision_msgs
@needs_rclpy
def test_node_declares_parameters_and_topics(perception_node):
    from rclpy.qos import QoSDurabilityPolicy, QoSReliabilityPolicy
    from rosidl_runtime_py.utilities import get_message

    node = perception_node
    assert node.get_name() == "fuller_perception"
    for f in fields(NodeParams):
        assert node.has_parameter(f.name)
        assert node.describe_parameter(f.name).read_only == (f.name not in ("score_threshold", "map_threshold"))
        assert node.describe_parameter(f.name).description
    assert node.get_parameter("queue_size").value == 10
    assert node.get_parameter("fixed_frame").value == "map"

    subscriptions = {s.topic_name: s for s in node.subscriptions}
    for topic, typename in INPUTS.items():
        assert subscriptions[topic].msg_type is get_message(typename), topic
    static = subscriptions["/tf_static"].qos_profile
    assert static.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL and static.depth == 100
    assert subscriptions["/lidar_top/points"].qos_profile.reliability == QoSReliabilityPolicy.BEST_EFFORT

    publishers = {p.topic_name: p for p in node.publishers}
    assert publishers["/fuller/detections"].msg_type is get_message("vision_msgs/msg/Detection3DArray")
    assert publishers["/diagnostics"].msg_type is get_message("diagnostic_msgs/msg/DiagnosticArray")
    for topic, typename in node.pipeline.publications.items():
        assert topic.startswith("/fuller/") or topic == "/diagnostics"
        assert publishers[topic].msg_type is get_message(typename)

    from rclpy.parameter import Parameter

    assert not node.set_parameters([Parameter("score_threshold", value=1.5)])[0].successful
    assert node.set_parameters([Parameter("score_threshold", value=0.4)])[0].successful
    assert node.engine.score_threshold == 0.4
    assert not node.set_parameters([Parameter("lidar_topic", value="/other")])[0].successful  # read-only


def _transform(parent: str, child: str, quaternion, stamp_ns: int = 0, y: float = 0.0):
    msg = types.msg_class
    return msg("geometry_msgs/msg/TransformStamped")(
        header=types.make_header(stamp_ns, parent), child_frame_id=child,
        transform=msg("geometry_msgs/msg/Transform")(
            translation=msg("geometry_msgs/msg/Vector3")(x=0.0, y=y, z=0.0),
            rotation=msg("geometry_msgs/msg/Quaternion")(x=quaternion[0], y=quaternion[1], z=quaternion[2],
                                                          w=quaternion[3])))


def _tf(transforms):
    return types.serialize(types.msg_class(types.TF_MESSAGE)(transforms=transforms))


IDENTITY = (0.0, 0.0, 0.0, 1.0)
# Camera optical frames (z forward, x right, y down) in the LiDAR frame (x right, y forward, z up):
# CAM_FRONT looks along +y (rotation -90 degrees about x), CAM_BACK along -y (then 180 about z).
HALF = math.sqrt(0.5)
CAMERA_ROTATIONS = {"CAM_FRONT": (-HALF, 0.0, 0.0, HALF), "CAM_BACK": (0.0, -HALF, HALF, 0.0)}
RAW_SIZE = (128, 320)  # H, W; twice the small model's input


def _camera_info(camera: str):
    h, w = RAW_SIZE
    f, cx, cy = 160.0, w / 2, h / 2
    return types.msg_class(types.CAMERA_INFO)(
        header=types.make_header(0, camera.lower()), height=h, width=w, distortion_model="plumb_bob",
        d=np.zeros(5), k=np.array([f, 0, cx, 0, f, cy, 0, 0, 1.0]), r=np.eye(3).ravel(),
        p=np.array([f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0.0]), binning_x=0, binning_y=0,
        roi=types.msg_class("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0,
                                                                 do_rectify=False))


def _image(camera: str, stamp_ns: int, rng):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*RAW_SIZE, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return types.msg_class(types.COMPRESSED_IMAGE)(header=types.make_header(stamp_ns, camera.lower()),
                                                   format="jpeg", data=np.frombuffer(buffer.getvalue(), np.uint8))


def _cloud(stamp_ns: int, rng, n: int = 4000):
    field = types.msg_class("sensor_msgs/msg/PointField")
    points = np.column_stack([rng.uniform(-30, 30, (n, 2)), rng.uniform(-2, 1, n), rng.uniform(0, 1, n)])
    return types.msg_class(types.POINTCLOUD2)(
        header=types.make_header(stamp_ns, "lidar_top"), height=1, width=n,
        fields=[field(name=name, offset=4 * i, datatype=field.FLOAT32, count=1)
                for i, name in enumerate(("x", "y", "z", "intensity"))],
        is_bigendian=False, point_step=16, row_step=16 * n,
        data=np.frombuffer(points.astype(np.float32).tobytes(), np.uint8), is_dense=True)


@pytest.mark.slow
@needs_vision_msgs
@needs_rclpy
def test_cloud_and_images_end_in_detections(ros_context, perception_node):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile
    from rosidl_runtime_py.utilities import get_message

    feeder = rclpy.create_node("fuller_test_feeder", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(perception_node)
    executor.add_node(feeder)
    received = []
    feeder.create_subscription(get_message(types.DETECTION3D_ARRAY), "/fuller/detections",
                               lambda data: received.append(types.deserialize(data, types.DETECTION3D_ARRAY)),
                               10, raw=True)
    publishers = {}
    for topic, typename in INPUTS.items():
        qos = (QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL) if topic == "/tf_static"
               else QoSProfile(depth=10))
        publishers[topic] = feeder.create_publisher(get_message(typename), topic, qos)

    def spin_until(condition, timeout_s):
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        return condition()

    try:
        assert spin_until(lambda: all(p.get_subscription_count() > 0 for p in publishers.values())
                          and perception_node.count_subscribers("/fuller/detections") > 0, 20), "discovery"
        rng = np.random.default_rng(0)
        publishers["/tf_static"].publish(_tf([_transform("base_link", "lidar_top", IDENTITY)] + [
            _transform("lidar_top", c.lower(), q) for c, q in CAMERA_ROTATIONS.items()]))
        stamps = []
        for k in range(5):
            for camera in CAMERA_ROTATIONS:
                publishers[f"/{camera.lower()}/camera_info"].publish(types.serialize(_camera_info(camera)))
            stamp = feeder.get_clock().now().nanoseconds
            stamps.append(stamp)
            # the ego pose, which the second sweep of each frame is moved by (1 m/frame forward)
            publishers["/tf"].publish(_tf([_transform("map", "base_link", IDENTITY, stamp, y=float(k))]))
            for camera in CAMERA_ROTATIONS:
                publishers[f"/{camera.lower()}/image/compressed"].publish(
                    types.serialize(_image(camera, stamp, rng)))
            publishers["/lidar_top/points"].publish(types.serialize(_cloud(stamp, rng)))
            spin_until(lambda: False, 0.2)
        assert spin_until(lambda: received, 60), f"no detections; pipeline counters {perception_node.pipeline.counters}"
        message = received[0]
        assert types.stamp_ns(message.header) in stamps
        assert len(message.detections) > 0  # score_threshold 0: every decoded box is published
    finally:
        executor.shutdown()
        feeder.destroy_node()
