"""Launch the `fuller_perception` node:
``ros2 launch <path>/fuller_perception.launch.py model:=/path/model.onnx fixed_frame:=odom``.

The package is pip-installed, not an ament package, so there is no ``lib/<package>/<executable>``
for ``ros2 run`` or launch_ros' package lookup to find. launch_ros' ``Node`` is still used, without
``package``: then its ``executable`` is run as given (here ``python3 -m fuller.ros2_node.node``),
while it keeps doing what a plain ``ExecuteProcess`` would have to spell out by hand: the node
name remap, the parameters written to a parameters file (so a launch-level ``namespace`` or
``PushRosNamespace`` applies to the node too) and the node's entry in launch's bookkeeping.
``python3`` is the interpreter on PATH, so fuller must be installed for the Python that ROS 2
uses. Defaults and descriptions come from `fuller.ros2_node.params`, never restated here; the other
parameters keep their defaults (pass them with ``python3 -m fuller.ros2_node.node --ros-args -p``
or a parameters file when they need to change).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from fuller.ros2_node.params import DEFAULTS, DESCRIPTIONS


def _text(name: str) -> ParameterValue:
    """A string parameter stays a string (launch_ros would read ``model:=123`` as an integer)."""
    return ParameterValue(LaunchConfiguration(name), value_type=str)


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("model", description=DESCRIPTIONS["model"]),
        DeclareLaunchArgument("device", default_value=str(DEFAULTS["device"]), description=DESCRIPTIONS["device"]),
        DeclareLaunchArgument("fixed_frame", default_value=str(DEFAULTS["fixed_frame"]),
                              description=DESCRIPTIONS["fixed_frame"]),
        DeclareLaunchArgument("image_transport", default_value=str(DEFAULTS["image_transport"]),
                              description=DESCRIPTIONS["image_transport"]),
        DeclareLaunchArgument("missing_camera", default_value=str(DEFAULTS["missing_camera"]),
                              description=DESCRIPTIONS["missing_camera"]),
        DeclareLaunchArgument("score_threshold", default_value=str(DEFAULTS["score_threshold"]),
                              description=DESCRIPTIONS["score_threshold"]),
        Node(
            executable="python3",
            arguments=["-m", "fuller.ros2_node.node"],
            name="fuller_perception",
            exec_name="fuller_perception",
            output="screen",
            parameters=[{
                "model": _text("model"),
                "device": _text("device"),
                "fixed_frame": _text("fixed_frame"),
                "image_transport": _text("image_transport"),
                "missing_camera": _text("missing_camera"),
                "score_threshold": LaunchConfiguration("score_threshold"),
            }],
        ),
    ])
