"""The ROS 2 message types the node speaks, their CDR serialisation, and header/time helpers.

Types come from `rosbags` (the ROS 2 Humble definitions, no ROS install needed) plus
`vision_msgs`, which is not in rosbags' stores and is registered from its .msg definitions in
``msg/vision_msgs`` (vision_msgs 4.x, the ROS 2 Humble/Iron/Jazzy layout). Every message the
node receives or sends goes through `serialize`/`deserialize`, on a vehicle and in a replay alike.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fuller.engine.frame import FrameError

MSG_DIR = Path(__file__).parent / "msg"

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
DETECTION3D_ARRAY = "vision_msgs/msg/Detection3DArray"
OCCUPANCY_GRID = "nav_msgs/msg/OccupancyGrid"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
FLOAT64 = "std_msgs/msg/Float64"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"


class MessageError(FrameError):
    """A message the node cannot use (bad layout, encoding, size); the frame is dropped and counted."""


@lru_cache(maxsize=1)
def typestore():
    """rosbags' ROS 2 Humble type store with vision_msgs registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types: dict = {}
    for path in sorted(MSG_DIR.glob("*/*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{path.parent.name}/msg/{path.stem}"))
    store.register(types)
    return store


def msg_class(typename: str):
    """The message dataclass of a type, e.g. ``msg_class(POINTCLOUD2)(header=..., ...)``."""
    try:
        return typestore().types[typename]
    except KeyError:
        raise KeyError(f"{typename}: not a known ROS 2 message type") from None


def serialize(msg, typename: str | None = None) -> bytes:
    """CDR bytes (little-endian, with the encapsulation header), as on the wire and in a bag."""
    return bytes(typestore().serialize_cdr(msg, typename or msg.__msgtype__))


def deserialize(data: bytes, typename: str):
    return typestore().deserialize_cdr(memoryview(data), typename)


def msgdef(typename: str) -> str:
    """The ``ros2msg`` schema text of a type and its dependencies, as rosbag2 writes into MCAP."""
    return typestore().generate_msgdef(typename)[0]


def stamp_ns(header) -> int:
    """A header's stamp as integer nanoseconds (exact; float seconds lose microseconds)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def make_time(ns: int):
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return msg_class("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def make_header(ns: int, frame_id: str):
    return msg_class("std_msgs/msg/Header")(stamp=make_time(ns), frame_id=frame_id)
