"""The `fuller_perception` ROS 2 node: rclpy around `PerceptionPipeline`, nothing more.

Run it with ``python3 -m fuller.ros2_node.node --ros-args -p model:=/path/model.onnx`` (or the launch
file ``ros2_node/launch/fuller_perception.launch.py``) in a shell where ROS 2 Humble or newer is
sourced. Subscriptions are raw: rclpy hands over each message's CDR bytes, the pipeline decodes
them with the same `fuller.ros2_node.types` code a bag replay uses, and outputs go back out as CDR
bytes, so the node and a replay run the same conversions. The outputs use vision_msgs, which must
be installed on the vehicle: ``sudo apt install ros-$ROS_DISTRO-vision-msgs``.

Parameters are those of `NodeParams`; all but the thresholds are read-only, since they shape the
subscriptions, publishers and loaded model. The thresholds may change while running
(``ros2 param set /fuller_perception score_threshold 0.5``) and apply from the next frame.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, fields
from functools import partial

try:
    import rclpy
    from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from rosidl_runtime_py.utilities import get_message
except ImportError as exc:
    raise ImportError(
        f"fuller.ros2_node.node needs rclpy ({exc}). rclpy comes with a ROS 2 install (Humble or newer), "
        "not from PyPI: source /opt/ros/<distro>/setup.bash in this shell, then run the node with the "
        "Python that ROS 2 uses") from exc

from fuller.engine.engine import Engine
from fuller.errors import UserInputError

from . import types
from .params import DEFAULTS, DESCRIPTIONS, RUNTIME_PARAMETERS, NodeParams, ParameterError, model_artifact
from .pipeline import PerceptionPipeline

NODE_NAME = "fuller_perception"
DIAGNOSTICS_PERIOD_S = 1.0
TF_DEPTH = 100  # tf2_ros' listener depth for /tf and /tf_static
_FIELDS = frozenset(f.name for f in fields(NodeParams))


def message_class(typename: str):
    """The rclpy message class of ``pkg/msg/Name``; a missing package is a one-line install hint."""
    try:
        return get_message(typename)
    except (ModuleNotFoundError, AttributeError) as exc:
        package = typename.split("/")[0]
        raise UserInputError(f"{typename}: the ROS 2 message package {package} is not installed; install it with "
                             f"sudo apt install ros-$ROS_DISTRO-{package.replace('_', '-')}") from exc


def input_qos(topic: str, typename: str, queue_size: int) -> QoSProfile:
    """tf2_ros' listener QoS for /tf and /tf_static (reliable, depth 100; /tf_static transient-local
    so the static transforms published before the node started arrive); sensor-data QoS for
    sensors (best effort, volatile: a late frame is worth less than the next one), which also
    matches reliable publishers."""
    if typename == types.TF_MESSAGE:
        durability = (QoSDurabilityPolicy.TRANSIENT_LOCAL if topic == "/tf_static" else QoSDurabilityPolicy.VOLATILE)
        return QoSProfile(depth=TF_DEPTH, reliability=QoSReliabilityPolicy.RELIABLE, durability=durability)
    return QoSProfile(depth=queue_size, reliability=QoSReliabilityPolicy.BEST_EFFORT,
                      durability=QoSDurabilityPolicy.VOLATILE)


class FullerPerceptionNode(Node):
    """Declares the parameters, loads the engine, and connects the pipeline's topics to rclpy.
    ``kwargs`` go to `rclpy.node.Node` (context, parameter_overrides, cli_args, ...)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        values = self._declare_parameters()
        try:
            self.params = NodeParams.from_mapping(values)
            self.engine = self._load_engine()
            self.pipeline = PerceptionPipeline(self.engine, self.params, log=self.get_logger().warning)
            self._output_publishers = self._create_publishers()
            self._create_subscriptions()
        except UserInputError as exc:
            self.get_logger().fatal(str(exc))
            raise
        self._diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _declare_parameters(self) -> dict:
        """One ROS parameter per `NodeParams` field. Float and list parameters are dynamically
        typed so that ``-p score_threshold:=1`` (an integer) and an empty default list (which rclpy
        would type as a byte array) work; `NodeParams.from_mapping` checks every type instead."""
        values = {}
        for f in fields(NodeParams):
            default = DEFAULTS.get(f.name, "")  # model has no default: "" is reported as missing
            descriptor = ParameterDescriptor(description=DESCRIPTIONS[f.name],
                                             read_only=f.name not in RUNTIME_PARAMETERS,
                                             dynamic_typing=isinstance(default, (float, list)))
            values[f.name] = self.declare_parameter(f.name, default, descriptor).value
        return values

    def _load_engine(self) -> Engine:
        log = self.get_logger().info
        path = model_artifact(self.params, log)
        engine = Engine.load(path, score_threshold=self.params.score_threshold,
                             map_threshold=self.params.map_threshold)
        log(f"model {path}: {engine.describe()}")
        return engine

    def _create_publishers(self) -> dict:
        qos = QoSProfile(depth=self.params.queue_size)  # reliable, volatile
        return {topic: self.create_publisher(message_class(typename), topic, qos)
                for topic, typename in self.pipeline.publications.items()}

    def _create_subscriptions(self) -> None:
        for topic, typename in self.pipeline.subscriptions.items():
            self.create_subscription(message_class(typename), topic, partial(self._on_message, topic),
                                     input_qos(topic, typename, self.params.queue_size), raw=True)
            self.get_logger().info(f"subscribed to {topic} ({typename})")

    def _on_message(self, topic: str, data: bytes) -> None:
        for out in self.pipeline.handle(topic, data):
            self._publish(out)

    def _publish_diagnostics(self) -> None:
        self._publish(self.pipeline.diagnostics(self.get_clock().now().nanoseconds))

    def _publish(self, out) -> None:
        publisher = self._output_publishers.get(out.topic)
        if publisher is None:
            raise RuntimeError(f"the pipeline produced a message on {out.topic}, which is not one of its "
                               f"publications {sorted(self._output_publishers)}")
        publisher.publish(types.serialize(out.msg, out.typename))

    def _on_set_parameters(self, changed: list) -> SetParametersResult:
        """Validate a runtime change as a whole `NodeParams` (rclpy has already refused the
        read-only ones) and hand the new thresholds to the engine, which applies them; ``changed``
        may hold rclpy's own parameters (use_sim_time), which are not ours to check."""
        updates = {p.name: p.value for p in changed if p.name in _FIELDS}
        if not updates:
            return SetParametersResult(successful=True)
        try:
            params = NodeParams.from_mapping({**asdict(self.params), **updates})
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.params = self.pipeline.params = params
        self.engine.score_threshold, self.engine.map_threshold = params.score_threshold, params.map_threshold
        return SetParametersResult(successful=True)


def main(argv: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or a ROS shutdown; 1 when it cannot start (the reason is logged)."""
    rclpy.init(args=argv)
    try:
        try:
            node = FullerPerceptionNode()
        except UserInputError:
            return 1
        try:
            rclpy.spin(node)
        finally:
            node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
