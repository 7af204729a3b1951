"""Engine outputs -> the messages the node publishes, and back for consumers and replay checks.

Boxes stay in the LiDAR frame and carry the point cloud's header, so a consumer transforms them
with TF at the time the points were taken. `vision_msgs` has no velocity field; velocities are not
published. Box convention (pinned project-wide): (x, y, z_centre, w, l, h, yaw), the box's local x
axis is its heading, so BoundingBox3D.size is (l, w, h).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fuller.config import BEVGrid

from .types import DETECTION3D_ARRAY, MARKER_ARRAY, OCCUPANCY_GRID, MessageError, msg_class

# matplotlib's tab10, the class colours of fuller.viz, without importing matplotlib at runtime.
CLASS_COLOURS = np.array([
    (0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e), (0x2c, 0xa0, 0x2c), (0xd6, 0x27, 0x28), (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b), (0xe3, 0x77, 0xc2), (0x7f, 0x7f, 0x7f), (0xbc, 0xbd, 0x22), (0x17, 0xbe, 0xcf),
]) / 255.0
BOX_ALPHA = 0.5
TEXT_HEIGHT = 0.8  # metres; TEXT_VIEW_FACING uses scale.z only
TEXT_GAP = 0.3  # metres between the box top and the label's centre


def _point(x: float, y: float, z: float):
    return msg_class("geometry_msgs/msg/Point")(x=float(x), y=float(y), z=float(z))


def _vector3(x: float, y: float, z: float):
    return msg_class("geometry_msgs/msg/Vector3")(x=float(x), y=float(y), z=float(z))


def _yaw_quaternion(yaw: float):
    return msg_class("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=float(np.sin(yaw / 2)), w=float(np.cos(yaw / 2)))


def box_pose(box: np.ndarray):
    """Pose of a box (>=7 values x, y, z, w, l, h, yaw): its centre, and the yaw about +z."""
    return msg_class("geometry_msgs/msg/Pose")(position=_point(box[0], box[1], box[2]),
                                               orientation=_yaw_quaternion(box[6]))


def _check_boxes(boxes, labels, classes, scores=None) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"boxes: expected shape (K, >=7) x, y, z, w, l, h, yaw, ..., got {boxes.shape}")
    if labels.shape != (len(boxes),):
        raise ValueError(f"labels: expected shape ({len(boxes)},), got {labels.shape}")
    if scores is not None and np.shape(scores) != (len(boxes),):
        raise ValueError(f"scores: expected shape ({len(boxes)},), got {np.shape(scores)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels: expected indices into {len(classes)} classes, got {labels.min()}..{labels.max()}")
    return boxes, labels


def detections_message(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str], header):
    """A Detection3DArray, one Detection3D per box with one hypothesis (class name, score)."""
    boxes, labels = _check_boxes(boxes, labels, classes, scores)
    hypothesis_class = msg_class("vision_msgs/msg/ObjectHypothesis")
    with_pose_class = msg_class("vision_msgs/msg/ObjectHypothesisWithPose")
    covariance_class = msg_class("geometry_msgs/msg/PoseWithCovariance")
    bbox_class = msg_class("vision_msgs/msg/BoundingBox3D")
    detection_class = msg_class("vision_msgs/msg/Detection3D")
    detections = []
    for box, score, label in zip(boxes, np.asarray(scores, dtype=np.float64), labels):
        pose = box_pose(box)
        result = with_pose_class(hypothesis=hypothesis_class(class_id=classes[label], score=float(score)),
                                 pose=covariance_class(pose=pose, covariance=np.zeros(36)))
        bbox = bbox_class(center=pose, size=_vector3(box[4], box[3], box[5]))
        detections.append(detection_class(header=header, results=[result], bbox=bbox, id=""))
    return msg_class(DETECTION3D_ARRAY)(header=header, detections=detections)


def _yaw(q) -> float:
    """Heading of a quaternion: the angle of its rotated x axis in the xy plane."""
    return float(np.arctan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z)))


def detections_from_message(msg, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (K, 7) float64 x, y, z, w, l, h, yaw; scores (K,); labels (K,) int64) of a
    Detection3DArray; of several hypotheses per detection the highest-scoring one is taken."""
    index = {name: i for i, name in enumerate(classes)}
    boxes = np.zeros((len(msg.detections), 7))
    scores = np.zeros(len(msg.detections))
    labels = np.zeros(len(msg.detections), dtype=np.int64)
    for i, detection in enumerate(msg.detections):
        if not detection.results:
            raise MessageError(f"Detection3DArray.detections[{i}].results: expected a hypothesis, got none")
        best = max(detection.results, key=lambda result: result.hypothesis.score).hypothesis
        if best.class_id not in index:
            raise MessageError(f"Detection3DArray.detections[{i}] class_id: expected one of {', '.join(classes)}, "
                               f"got {best.class_id!r}")
        centre, size = detection.bbox.center, detection.bbox.size
        boxes[i] = (centre.position.x, centre.position.y, centre.position.z, size.y, size.x, size.z,
                    _yaw(centre.orientation))
        scores[i] = best.score
        labels[i] = index[best.class_id]
    return boxes, scores, labels


def occupancy_grid(probabilities: np.ndarray, grid: BEVGrid, header):
    """One map class as an OccupancyGrid: cells 0..100 (probability in percent), -1 where the
    probability is not finite; ROS stores rows along y, so data[iy * nx + ix] = p[ix, iy]."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != tuple(grid.shape):
        raise ValueError(f"probabilities: expected shape {tuple(grid.shape)} (nx, ny of the grid), "
                         f"got {probabilities.shape}")
    nx, ny = grid.shape
    percent = np.rint(100 * np.clip(np.nan_to_num(probabilities, nan=0.0), 0.0, 1.0)).astype(np.int8)
    percent[~np.isfinite(probabilities)] = -1
    origin = msg_class("geometry_msgs/msg/Pose")(position=_point(grid.x_range[0], grid.y_range[0], 0.0),
                                                 orientation=_yaw_quaternion(0.0))
    info = msg_class("nav_msgs/msg/MapMetaData")(map_load_time=header.stamp, resolution=float(grid.resolution),
                                                 width=nx, height=ny, origin=origin)
    return msg_class(OCCUPANCY_GRID)(header=header, info=info, data=np.ascontiguousarray(percent.T).reshape(-1))


def probabilities_from_grid(msg) -> np.ndarray:
    """(X, Y) float32 probabilities in [0, 1] of an OccupancyGrid written by `occupancy_grid`;
    unknown cells (-1) are NaN."""
    width, height = int(msg.info.width), int(msg.info.height)
    data = np.asarray(msg.data).astype(np.int16).reshape(-1)
    if data.size != width * height:
        raise MessageError(f"OccupancyGrid.data: expected width * height = {width * height} cells, got {data.size}")
    if data.size and (data.min() < -1 or data.max() > 100):
        raise MessageError(f"OccupancyGrid.data: expected values -1..100, got {data.min()}..{data.max()}")
    probabilities = np.where(data < 0, np.nan, data / 100.0).astype(np.float32)
    return probabilities.reshape(height, width).T.copy()


def _colour(rgb: np.ndarray, alpha: float):
    return msg_class("std_msgs/msg/ColorRGBA")(r=float(rgb[0]), g=float(rgb[1]), b=float(rgb[2]), a=float(alpha))


def _marker(header, namespace: str, marker_id: int, kind: int, action: int, pose, scale, colour, text: str = ""):
    """A Marker with every field rviz ignores for boxes and labels set empty."""
    uint8_empty = np.zeros(0, dtype=np.uint8)
    texture = msg_class("sensor_msgs/msg/CompressedImage")(header=header, format="", data=uint8_empty)
    mesh = msg_class("visualization_msgs/msg/MeshFile")(filename="", data=uint8_empty)
    return msg_class("visualization_msgs/msg/Marker")(
        header=header, ns=namespace, id=marker_id, type=kind, action=action, pose=pose, scale=scale, color=colour,
        lifetime=msg_class("builtin_interfaces/msg/Duration")(sec=0, nanosec=0), frame_locked=False, points=[],
        colors=[], texture_resource="", texture=texture, uv_coordinates=[], text=text, mesh_resource="",
        mesh_file=mesh, mesh_use_embedded_materials=False)


def box_markers(boxes: np.ndarray, labels: np.ndarray, classes: Sequence[str], header, namespace: str,
                scores: np.ndarray | None = None):
    """A MarkerArray for rviz: DELETEALL in `namespace` first (the previous frame's boxes vanish even
    when fewer are detected now), then per box a translucent CUBE (id 2k + 1) and a label above it
    (id 2k + 2), coloured by class as fuller.viz draws them."""
    boxes, labels = _check_boxes(boxes, labels, classes, scores)
    marker = msg_class("visualization_msgs/msg/Marker")
    identity = box_pose(np.zeros(7))
    markers = [_marker(header, namespace, 0, marker.CUBE, marker.DELETEALL, identity, _vector3(0, 0, 0),
                       _colour(np.zeros(3), 0.0))]
    for k, (box, label) in enumerate(zip(boxes, labels)):
        rgb = CLASS_COLOURS[label % len(CLASS_COLOURS)]
        markers.append(_marker(header, namespace, 2 * k + 1, marker.CUBE, marker.ADD, box_pose(box),
                               _vector3(box[4], box[3], box[5]), _colour(rgb, BOX_ALPHA)))
        text = classes[label] if scores is None else f"{classes[label]} {float(scores[k]):.2f}"
        above = msg_class("geometry_msgs/msg/Pose")(position=_point(box[0], box[1], box[2] + box[5] / 2 + TEXT_GAP),
                                                    orientation=_yaw_quaternion(0.0))
        markers.append(_marker(header, namespace, 2 * k + 2, marker.TEXT_VIEW_FACING, marker.ADD, above,
                               _vector3(0, 0, TEXT_HEIGHT), _colour(rgb, 1.0), text))
    return msg_class(MARKER_ARRAY)(markers=markers)
