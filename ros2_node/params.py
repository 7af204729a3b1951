"""The `fuller_perception` node's parameters: names, defaults, types and validation, without rclpy.

`NodeParams` is the one definition. The node declares a ROS parameter per field (defaults from
`DEFAULTS`, descriptions from `DESCRIPTIONS`), the launch file takes its defaults from `DEFAULTS`,
and everything the node does is driven by a validated `NodeParams`, so a wrong value is one clear
`ParameterError` at start-up (naming the parameter, expected vs got) instead of a silent topic that
never receives anything. `model_artifact` decides which file the engine loads, building the
TensorRT engine of an ONNX model on first use.
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, get_type_hints

from fuller.errors import UserInputError
from fuller.engine import contract
from fuller.engine.artifacts import graph_precision, read_metadata, sidecar_path
from fuller.engine.nvidia import TENSORRT_MISSING, tensorrt_available
from fuller.engine.tensorrt_build import build_engine

from .types import COMPRESSED_IMAGE, IMAGE

MODEL_SUFFIXES = (".engine", ".onnx", ".pt", ".pth")
IMAGE_TYPES = {"compressed": COMPRESSED_IMAGE, "raw": IMAGE}
MISSING_CAMERA_POLICIES = ("skip", "blank")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_TOPIC = re.compile(r"(/[A-Za-z_][A-Za-z0-9_]*)+")  # absolute ROS 2 name: no //, no trailing /
_CAMERA = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # lower-cased into topic names
_FRAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")  # tf2 frame ids have no leading /


class ParameterError(UserInputError):
    """A node parameter with a wrong type or value."""

    def __init__(self, name: str, expected: str, got: Any):
        self.name, self.expected, self.got = name, expected, got
        super().__init__(f"parameter {name}: expected {expected}, got {got}")

    def __reduce__(self):
        return type(self), (self.name, self.expected, self.got)


def _param(default: Any = MISSING, doc: str = "", runtime: bool = False):
    """A field with its ROS parameter description; ``runtime`` fields may change while running
    (the others shape subscriptions, publishers or the loaded model, so they are read-only)."""
    metadata = {"doc": doc, "runtime": runtime}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class NodeParams:
    model: str = _param(doc="model artefact: a TensorRT .engine or an exported .onnx (a training checkpoint .pt "
                            "runs in fuller replay, where the training stack is installed)")
    device: str = _param("cuda", "device of the PyTorch backend (fuller replay of a checkpoint); ONNX and TensorRT "
                                 "models choose their own")
    lidar_topic: str = _param("/lidar_top/points", "sensor_msgs/PointCloud2 input")
    cameras: list[str] = _param([], "camera names (nuScenes channels such as CAM_FRONT); empty: the model's "
                                    "cameras. Otherwise exactly the model's set, in any order")
    camera_topic_format: str = _param("/{camera}/image/compressed", "image topic of a camera; {camera} is the "
                                                                    "lower-case camera name")
    camera_info_topic_format: str = _param("/{camera}/camera_info", "sensor_msgs/CameraInfo topic of a camera; "
                                                                    "{camera} is the lower-case camera name")
    image_transport: str = _param("compressed", "compressed: sensor_msgs/CompressedImage; raw: sensor_msgs/Image")
    fixed_frame: str = _param("map", "frame in which ego motion is looked up (odom on most vehicles)")
    output_prefix: str = _param("/fuller", "namespace of the output topics")
    score_threshold: float = _param(0.3, "minimum detection score published, in [0, 1]", runtime=True)
    map_threshold: float = _param(0.5, "BEV map probability counted as occupied, in [0, 1]", runtime=True)
    missing_camera: str = _param("skip", "a frame with cameras missing: skip drops it with a warning, blank "
                                         "runs it with those images black")
    slop_s: float = _param(0.08, "largest stamp difference (s) between a cloud and its images (ApproximateTime)")
    queue_size: int = _param(10, "depth of the input and output queues (messages)")
    max_camera_wait_s: float = _param(0.3, "how long (s) a cloud waits for its images before it is resolved as "
                                           "a frame with missing cameras")
    compensate_ego_motion: bool = _param(True, "move each image's view to the cloud's stamp by the ego motion in "
                                               "fixed_frame")
    build_engine: bool = _param(True, "for an .onnx model with TensorRT installed: build <model>.engine (fp16; "
                                      "INT8 for a graph of fuller quantize) on the first run and reuse it "
                                      "afterwards")

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "NodeParams":
        """Parameters from name -> value (the node's declared parameters, a YAML dict), type-checked:
        integers are accepted for float parameters and tuples for lists; nothing else is converted."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ParameterError(", ".join(unknown), f"one of the node's parameters {known}",
                                 "an unknown name")
        if "model" not in values:
            raise ParameterError("model", "a model path (.engine, .onnx or .pt)", "nothing")
        hints = get_type_hints(cls)
        return cls(**{name: _coerce(name, value, hints[name]) for name, value in values.items()})

    def validate(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        model = Path(self.model)
        _require(self.model != "", "model", "a model path (.engine, .onnx or .pt)", "''")
        _require(model.suffix.lower() in MODEL_SUFFIXES, "model",
                 f"a file ending in one of {list(MODEL_SUFFIXES)}", repr(self.model))
        _require(model.is_file(), "model", "an existing file", f"{self.model!r}, which does not exist")
        _require(_DEVICE.fullmatch(self.device) is not None, "device", "cpu, cuda or cuda:N", repr(self.device))
        for name in ("lidar_topic", "output_prefix"):
            _check_topic(name, getattr(self, name))
        for i, camera in enumerate(self.cameras):
            _require(_CAMERA.fullmatch(camera) is not None, f"cameras[{i}]",
                     "a camera name such as CAM_FRONT (letters, digits, _)", repr(camera))
        duplicates = sorted({c for c in self.cameras if self.cameras.count(c) > 1})
        _require(not duplicates, "cameras", "unique names", f"duplicates {duplicates}")
        for name in ("camera_topic_format", "camera_info_topic_format"):
            _check_format(name, getattr(self, name))
        _require(self.image_transport in IMAGE_TYPES, "image_transport", f"one of {list(IMAGE_TYPES)}",
                 repr(self.image_transport))
        _require(_FRAME.fullmatch(self.fixed_frame) is not None, "fixed_frame",
                 "a tf2 frame id (no leading /), e.g. map or odom", repr(self.fixed_frame))
        for name in ("score_threshold", "map_threshold"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, name, "a value in [0, 1]", value)
        _require(self.missing_camera in MISSING_CAMERA_POLICIES, "missing_camera",
                 f"one of {list(MISSING_CAMERA_POLICIES)}", repr(self.missing_camera))
        for name in ("slop_s", "max_camera_wait_s"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, name, "a positive number of seconds", value)
        _require(self.queue_size >= 1, "queue_size", "an integer >= 1", self.queue_size)

    @property
    def image_type(self) -> str:
        """The ROS type of the camera image topics."""
        return IMAGE_TYPES[self.image_transport]

    def camera_topics(self, cameras: Sequence[str]) -> list[str]:
        return [camera_topic(self.camera_topic_format, camera) for camera in cameras]

    def camera_info_topics(self, cameras: Sequence[str]) -> list[str]:
        return [camera_topic(self.camera_info_topic_format, camera) for camera in cameras]

    def resolved_cameras(self, config_cameras: Sequence[str]) -> list[str]:
        """The cameras to subscribe to, in the model's order (its image tensor's order). An empty
        ``cameras`` means all of the model's; otherwise it must name exactly the model's set, since
        the network needs every camera it was trained with and has no input for any other."""
        model_cameras = list(config_cameras)
        if not self.cameras:
            return model_cameras
        missing = [c for c in model_cameras if c not in self.cameras]
        extra = [c for c in self.cameras if c not in model_cameras]
        _require(not missing and not extra, "cameras",
                 f"the model's cameras {model_cameras} (or an empty list for those)",
                 f"{self.cameras} (missing {missing}, not in the model {extra})")
        return model_cameras


def camera_topic(topic_format: str, camera: str) -> str:
    """A camera's topic: ``{camera}`` is its lower-case name (``CAM_FRONT`` -> ``/cam_front/...``)."""
    return topic_format.format(camera=camera.lower())


def _require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ParameterError(name, expected, got)


_TYPE_NAMES = {str: "a string", float: "a number", int: "an integer", bool: "true or false",
               list[str]: "a list of strings"}


def _check_type(name: str, value: Any, hint: Any) -> None:
    if hint == list[str]:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif hint is float:
        ok = isinstance(value, float)
    else:  # bool is an int subclass, so compare exactly
        ok = type(value) is hint
    _require(ok, name, _TYPE_NAMES[hint], f"{value!r} ({type(value).__name__})")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """The conversions a parameter source legitimately needs: ``1`` for a float parameter (YAML and
    ``-p name:=1`` give an integer) and a tuple or array for a list."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint == list[str] and isinstance(value, (tuple, list)):
        return list(value)
    _check_type(name, value, hint)
    return value


def _check_topic(name: str, topic: str) -> None:
    _require(_TOPIC.fullmatch(topic) is not None, name,
             "an absolute topic name such as /lidar_top/points (starts with /, tokens of letters, digits and _, "
             "not starting with a digit, no trailing /)", repr(topic))


def _check_format(name: str, fmt: str) -> None:
    try:
        fields_used = {parsed[1] for parsed in string.Formatter().parse(fmt) if parsed[1] is not None}
    except ValueError as exc:
        raise ParameterError(name, "a format string with {camera}", f"{fmt!r} ({exc})") from None
    _require(fields_used == {"camera"}, name, "a format string with {camera} and no other field",
             f"{fmt!r} (fields {sorted(fields_used)})")
    _check_topic(name, fmt.format(camera="cam_front"))


def _default(f) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


DEFAULTS: dict[str, Any] = {f.name: _default(f) for f in fields(NodeParams)
                            if f.default is not MISSING or f.default_factory is not MISSING}
DESCRIPTIONS: dict[str, str] = {f.name: f.metadata["doc"] for f in fields(NodeParams)}
RUNTIME_PARAMETERS: tuple[str, ...] = tuple(f.name for f in fields(NodeParams) if f.metadata["runtime"])


def model_artifact(params: NodeParams, log: Callable[[str], None] = print) -> Path:
    """The file the engine loads for ``model`` and ``build_engine``. An ``.onnx`` model with
    ``build_engine`` and TensorRT installed becomes ``<model stem>.engine``, built the first time
    (minutes) with fp16, or with its INT8 for a graph of ``fuller quantize``, and reused while it is
    newer than the ONNX file and has its sidecar record; without TensorRT the ONNX model runs on ONNX Runtime. Other models load as they are."""
    model = Path(params.model)
    if model.suffix.lower() != ".onnx" or not params.build_engine:
        return model
    if not tensorrt_available():
        log(f"build_engine: {TENSORRT_MISSING}; running {model} on ONNX Runtime")
        return model
    engine = model.with_suffix(".engine")
    if engine.is_file() and sidecar_path(engine).is_file() and engine.stat().st_mtime >= model.stat().st_mtime:
        log(f"build_engine: reusing {engine} (newer than {model})")
        return engine
    int8 = _file_precision(model) == contract.INT8
    precision = "int8 (its Q/DQ pairs)" if int8 else "fp16"
    log(f"build_engine: building {engine} from {model} with {precision} (once; later runs reuse it)")
    return build_engine(model, engine, fp16=not int8, int8=int8)


def _file_precision(model: Path) -> str:
    """`graph_precision` of the graph file. An unreadable file reads as ``fp32``: the engine build
    then reports what is wrong with it."""
    import onnx

    try:
        return graph_precision(read_metadata(onnx.load(str(model), load_external_data=False)))
    except Exception:  # protobuf's DecodeError and friends
        return "fp32"
