"""ROS 2 message conversions against independent references: hand-packed bytes (struct), Pillow's
decoder, the nuScenes devkit's box corners, the ROS OccupancyGrid indexing rule, matplotlib's tab10."""
from __future__ import annotations

import array
import io
import struct
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from fuller.config import BEVGrid
from fuller.ros2_node import types
from fuller.ros2_node.camera_info import camera_info_message, camera_model
from fuller.ros2_node.images import compressed_message, compressed_to_rgb, encode_jpeg, image_message, image_to_rgb
from fuller.ros2_node.outputs import (box_markers, detections_from_message, detections_message, occupancy_grid,
                                      probabilities_from_grid)
from fuller.ros2_node.pointcloud import cloud_from_array, cloud_from_points, cloud_to_array, points_from_cloud
from fuller.ros2_node.types import MessageError

STAMP = 1_700_000_000_123_456_789
CLASSES = ("car", "truck", "pedestrian")


def header(frame_id: str = "lidar_top"):
    return types.make_header(STAMP, frame_id)


def cdr_round_trip(msg):
    return types.deserialize(types.serialize(msg), msg.__msgtype__)


def with_data(msg, data):
    """The message as rclpy would hand it over: same attributes, `data` in another container."""
    fields = {name: getattr(msg, name) for name in msg.__dataclass_fields__}
    return SimpleNamespace(**{**fields, "data": data})


def field(name, offset, datatype, count=1):
    return types.msg_class("sensor_msgs/msg/PointField")(name=name, offset=offset, datatype=datatype, count=count)


# ---------------------------------------------------------------------------------------------- clouds

def _cloud_array(rng, layout: str) -> tuple[np.ndarray, dict]:
    n = 12
    if layout == "extra_fields":
        dtype = np.dtype({"names": ["x", "y", "z", "ring", "time", "intensity", "flags"],
                          "formats": ["<f4", "<f4", "<f4", "<u2", "<f8", "<f4", ("u1", (3,))],
                          "offsets": [0, 4, 8, 14, 16, 24, 29], "itemsize": 32})
    else:
        dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    points = np.zeros(n, dtype=dtype)
    for name in ("x", "y", "z"):
        points[name] = rng.uniform(-50, 50, n)
    points["intensity"] = rng.uniform(0, 255, n)
    if layout == "extra_fields":
        points["ring"] = rng.integers(0, 65535, n)
        points["time"] = rng.uniform(-0.1, 0.0, n)
        points["flags"] = rng.integers(0, 255, (n, 3))
    if layout == "organised":
        points["y"][[3, 7]] = np.nan
        points["intensity"][10] = np.inf
    options = {"little": {}, "big": {"big_endian": True}, "padded": {"point_step": 16 + 12},
               "extra_fields": {"big_endian": True, "point_step": 40}, "organised": {"height": 3}}[layout]
    return points, options


def _pad_rows(msg, extra: int):
    """Insert `extra` garbage bytes (0xFF: NaN if misread as float) after each row."""
    data = bytes(msg.data)
    rows = [data[r * msg.row_step:(r + 1) * msg.row_step] + b"\xff" * extra for r in range(msg.height)]
    msg.data = np.frombuffer(b"".join(rows), dtype=np.uint8)
    msg.row_step += extra
    return msg


def _reference_points(points: np.ndarray) -> tuple[np.ndarray, int]:
    rows = [tuple(float(p[name]) for name in ("x", "y", "z", "intensity")) for p in points]
    kept = [r for r in rows if all(np.isfinite(v) for v in r)]
    return np.array(kept, dtype=np.float32).reshape(-1, 4), len(rows) - len(kept)


@pytest.mark.parametrize("layout", ["little", "big", "padded", "extra_fields", "organised"])
@pytest.mark.parametrize("container", ["ndarray", "array", "bytes"])
def test_cloud_layouts_round_trip(layout, container):
    points, options = _cloud_array(np.random.default_rng(0), layout)
    msg = cloud_from_array(points, header(), **options)
    if layout == "organised":
        msg = _pad_rows(msg, 8)
        assert msg.height == 3 and msg.width == 4 and not msg.is_dense
    msg = cdr_round_trip(msg)
    assert msg.is_bigendian == bool(options.get("big_endian")) and types.stamp_ns(msg.header) == STAMP
    convert = {"ndarray": np.asarray, "array": lambda d: array.array("B", bytes(d)), "bytes": bytes}[container]
    msg = with_data(msg, convert(msg.data))

    decoded = cloud_to_array(msg)
    assert decoded.shape == (len(points),) and decoded.dtype.names == points.dtype.names
    for name in points.dtype.names:
        assert decoded.dtype[name].base.isnative
        np.testing.assert_array_equal(decoded[name], points[name])
    got, dropped = points_from_cloud(msg)
    want, want_dropped = _reference_points(points)
    assert got.dtype == np.float32 and dropped == want_dropped
    np.testing.assert_array_equal(got, want)


def test_hand_packed_cloud():
    """Big-endian, an organised 2 x 2 cloud: x, y, z float32, uint16 ring between z and intensity,
    a 2-byte gap, uint8 intensity, 3 bytes of point padding, 8 bytes of row padding, one NaN row."""
    rows = [[(1.5, -2.25, 0.5, 7, 200), (3.0, 4.0, -1.0, 8, 17)],
            [(float("nan"), 1.0, 1.0, 9, 5), (-10.5, 20.25, 2.0, 10, 255)]]
    point = ">fffH2xB3x"
    assert struct.calcsize(point) == 20
    data = b"".join(b"".join(struct.pack(point, *p) for p in row) + b"\xab" * 8 for row in rows)
    fields = [field("x", 0, 7), field("y", 4, 7), field("z", 8, 7), field("ring", 12, 4), field("intensity", 16, 2)]
    msg = types.msg_class(types.POINTCLOUD2)(header=header(), height=2, width=2, fields=fields, is_bigendian=True,
                                             point_step=20, row_step=48, data=np.frombuffer(data, np.uint8),
                                             is_dense=False)
    got, dropped = points_from_cloud(cdr_round_trip(msg))
    assert dropped == 1
    np.testing.assert_array_equal(got, np.array([[1.5, -2.25, 0.5, 200], [3.0, 4.0, -1.0, 17],
                                                 [-10.5, 20.25, 2.0, 255]], dtype=np.float32))
    assert cloud_to_array(msg)["ring"].tolist() == [7, 8, 9, 10]

    # The writer lays out the same bytes as struct (zeroed padding, no row padding).
    flat = [p for row in rows for p in row]
    dtype = np.dtype({"names": ["x", "y", "z", "ring", "intensity"], "formats": ["f4", "f4", "f4", "u2", "u1"],
                      "offsets": [0, 4, 8, 12, 16], "itemsize": 17})
    written = cloud_from_array(np.array(flat, dtype=dtype), header(), big_endian=True, point_step=20)
    assert bytes(written.data) == b"".join(struct.pack(point, *p) for p in flat)
    assert [(f.name, f.offset, f.datatype, f.count) for f in written.fields] == \
        [(f.name, f.offset, f.datatype, f.count) for f in fields]
    assert not written.is_dense


def test_cloud_from_points_is_float32_xyzi():
    pts = np.random.default_rng(1).normal(size=(9, 4)).astype(np.float32)
    msg = cdr_round_trip(cloud_from_points(pts, header()))
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7),
                                                                     ("intensity", 12, 7)]
    assert msg.point_step == 16 and msg.row_step == 16 * 9 and msg.is_dense
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), "<f4").reshape(9, 4), pts)
    got, dropped = points_from_cloud(msg)
    np.testing.assert_array_equal(got, pts)
    assert dropped == 0


def test_empty_cloud():
    msg = cdr_round_trip(cloud_from_points(np.zeros((0, 4)), header()))
    got, dropped = points_from_cloud(msg)
    assert got.shape == (0, 4) and dropped == 0


def _xyz_cloud(**change):
    data = np.zeros(2 * 16, dtype=np.uint8)
    values = {"header": header(), "height": 1, "width": 2, "is_bigendian": False, "point_step": 16,
              "row_step": 32, "data": data, "is_dense": True,
              "fields": [field("x", 0, 7), field("y", 4, 7), field("z", 8, 7), field("intensity", 12, 7)]}
    values.update(change)
    return types.msg_class(types.POINTCLOUD2)(**values)


@pytest.mark.parametrize("change, reader, words", [
    ({"fields": [field("x", 0, 7), field("y", 4, 7), field("z", 8, 7)]}, points_from_cloud,
     ["'intensity'", "x, y, z"]),
    ({"fields": [field("x", 0, 9)]}, cloud_to_array, ["datatype", "9"]),
    ({"data": np.zeros(31, dtype=np.uint8)}, cloud_to_array, ["data", "32", "31"]),
    ({"fields": [field("x", 0, 7), field("intensity", 14, 7)]}, cloud_to_array, ["intensity", "point_step"]),
    ({"fields": [field("x", 0, 7), field("x", 4, 7)]}, cloud_to_array, ["unique", "'x'"]),
    ({"point_step": 0, "row_step": 0}, cloud_to_array, ["point_step", "> 0"]),
    ({"row_step": 20}, cloud_to_array, ["row_step", "32"]),
    ({"fields": [field("x", 0, 7, 2), field("y", 8, 7), field("z", 8, 7), field("intensity", 12, 7)]},
     points_from_cloud, ["'x'", "count"]),
])
def test_cloud_errors_name_the_problem(change, reader, words):
    with pytest.raises(MessageError) as info:
        reader(_xyz_cloud(**change))
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------------------------------------- images

CHANNEL_ORDER = {"rgb8": "RGB", "bgr8": "BGR", "mono8": "R", "rgba8": "RGBA", "bgra8": "BGRA"}


def _naive_image_bytes(rgb: np.ndarray, encoding: str, step: int, pad: int) -> bytes:
    out = bytearray()
    for row in rgb.tolist():
        line = bytearray()
        for r, g, b in row:
            line += bytes({"R": r, "G": g, "B": b, "A": 255}[c] for c in CHANNEL_ORDER[encoding])
        out += line + bytes([pad]) * (step - len(line))
    return bytes(out)


@pytest.mark.parametrize("encoding", list(CHANNEL_ORDER))
@pytest.mark.parametrize("padding", [0, 5])
def test_image_encodings_round_trip(encoding, padding):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    if encoding == "mono8":
        rgb[...] = rgb[..., :1]
    step = 7 * len(CHANNEL_ORDER[encoding]) + padding
    written = image_message(rgb, header("cam"), encoding=encoding, step=step)
    assert bytes(written.data) == _naive_image_bytes(rgb, encoding, step, pad=0)
    hand = types.msg_class(types.IMAGE)(header=header("cam"), height=5, width=7, encoding=encoding, is_bigendian=0,
                                        step=step, data=np.frombuffer(_naive_image_bytes(rgb, encoding, step, 0xAB),
                                                                      np.uint8))
    for msg in (written, hand):
        msg = cdr_round_trip(msg)
        got = image_to_rgb(msg)
        assert got.shape == (5, 7, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, rgb)
        np.testing.assert_array_equal(image_to_rgb(with_data(msg, array.array("B", bytes(msg.data)))), rgb)
        np.testing.assert_array_equal(image_to_rgb(with_data(msg, bytes(msg.data))), rgb)


def _smooth_image(h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (h + w - 2)], -1).astype(np.uint8)


def test_jpeg_matches_pillow_and_the_original():
    rgb = _smooth_image()
    data = encode_jpeg(rgb, quality=95)
    assert data[:2] == b"\xff\xd8"
    msg = cdr_round_trip(compressed_message(data, header("cam"), format="rgb8; jpeg compressed bgr8"))
    got = compressed_to_rgb(msg)
    np.testing.assert_array_equal(got, np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB")))
    diff = np.abs(got.astype(int) - rgb.astype(int))
    assert diff.mean() < 2.0 and diff.max() < 24
    np.testing.assert_array_equal(compressed_to_rgb(with_data(msg, array.array("B", data))), got)


def test_png_is_exact():
    rgb = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="PNG")
    msg = cdr_round_trip(compressed_message(buffer.getvalue(), header("cam"), format="png"))
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)


def _image(**change):
    values = {"header": header("cam"), "height": 2, "width": 3, "encoding": "rgb8", "is_bigendian": 0, "step": 9,
              "data": np.zeros(18, dtype=np.uint8)}
    values.update(change)
    return types.msg_class(types.IMAGE)(**values)


@pytest.mark.parametrize("change, words", [
    ({"encoding": "yuv422"}, ["encoding", "'yuv422'", "rgb8", "bgr8", "mono8"]),
    ({"step": 8}, ["step", "9", "8"]),
    ({"data": np.zeros(17, dtype=np.uint8)}, ["data", "18", "17"]),
])
def test_image_errors_name_the_problem(change, words):
    with pytest.raises(MessageError) as info:
        image_to_rgb(_image(**change))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("data", [b"not an image at all", encode_jpeg(_smooth_image())[:200]])
def test_undecodable_compressed_image_names_format(data):
    with pytest.raises(MessageError) as info:
        compressed_to_rgb(compressed_message(data, header("cam"), format="jpeg"))
    assert "CompressedImage.format 'jpeg'" in str(info.value)


# ---------------------------------------------------------------------------------------------- camera info

def test_camera_info_round_trip_and_distortion():
    k = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    msg = cdr_round_trip(camera_info_message(k, (900, 1600), header("cam")))
    assert (msg.height, msg.width, msg.distortion_model) == (900, 1600, "plumb_bob")
    np.testing.assert_array_equal(np.asarray(msg.p).reshape(3, 4), np.hstack([k, np.zeros((3, 1))]))
    np.testing.assert_array_equal(np.asarray(msg.r).reshape(3, 3), np.eye(3))
    model = camera_model(msg)
    np.testing.assert_array_equal(model.intrinsics, k)
    assert model.image_size == (900, 1600) and not model.distorted
    msg.d = np.array([0.0, -0.02, 0.0, 0.0, 0.0])
    assert camera_model(msg).distorted
    msg.d = np.zeros(0)
    assert not camera_model(msg).distorted


@pytest.mark.parametrize("change, words", [
    ({"width": 0}, ["width", "0"]),
    ({"k": np.zeros(9)}, ["CameraInfo.k", "uncalibrated"]),
    ({"k": np.array([1.0, 2, 3, 2, 4, 6, 0, 0, 1])}, ["CameraInfo.k", "invertible"]),
    ({"k": np.array([np.nan, 0, 1, 0, 1, 1, 0, 0, 1])}, ["CameraInfo.k", "finite"]),
    ({"binning_x": 2}, ["binning"]),
])
def test_camera_info_errors(change, words):
    msg = camera_info_message(np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]), (480, 640), header("cam"))
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(MessageError) as info:
        camera_model(msg)
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------------------------------------- detections

def _random_boxes(rng, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.column_stack([rng.uniform(-40, 40, (k, 2)), rng.uniform(-2, 1, k), rng.uniform(0.5, 3, k),
                             rng.uniform(1, 12, k), rng.uniform(1, 4, k), rng.uniform(-np.pi, np.pi, k),
                             rng.normal(size=(k, 2))])
    return boxes, rng.uniform(0.1, 1.0, k), rng.integers(0, len(CLASSES), k)


def _rotation(q) -> np.ndarray:
    w, x, y, z = q.w, q.x, q.y, q.z
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_detections_match_devkit_boxes_and_round_trip():
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    boxes, scores, labels = _random_boxes(np.random.default_rng(4), 8)
    msg = cdr_round_trip(detections_message(boxes, scores, labels, CLASSES, header()))
    assert len(msg.detections) == 8 and msg.header.frame_id == "lidar_top"
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    for box, score, label, det in zip(boxes, scores, labels, msg.detections):
        pose, size = det.bbox.center, det.bbox.size
        centre = np.array([pose.position.x, pose.position.y, pose.position.z])
        rotation = _rotation(pose.orientation)
        half = np.array([size.x, size.y, size.z]) / 2
        corners = centre + (signs * half) @ rotation.T
        reference = Box(box[:3], size=box[3:6], orientation=Quaternion(axis=[0, 0, 1], angle=box[6])).corners().T
        distance = np.linalg.norm(corners[:, None] - reference[None], axis=-1)
        assert distance.min(axis=1).max() < 1e-9 and len(set(distance.argmin(axis=1))) == 8
        front = centre + rotation @ np.array([half[0], 0, 0])
        np.testing.assert_allclose(front, reference[:4].mean(0), atol=1e-9)  # devkit: first 4 corners face forward
        (result,) = det.results
        assert result.hypothesis.class_id == CLASSES[label] and result.hypothesis.score == pytest.approx(score)
        assert result.pose.pose == pose and np.count_nonzero(result.pose.covariance) == 0 and det.id == ""

    got_boxes, got_scores, got_labels = detections_from_message(msg, CLASSES)
    np.testing.assert_allclose(got_boxes[:, :6], boxes[:, :6], atol=1e-12)
    np.testing.assert_allclose(np.angle(np.exp(1j * (got_boxes[:, 6] - boxes[:, 6]))), 0, atol=1e-12)
    np.testing.assert_array_equal(got_scores, scores)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64

    msg.detections[2].results[0].hypothesis.class_id = "bicycle"
    with pytest.raises(MessageError, match="bicycle"):
        detections_from_message(msg, CLASSES)


def test_no_detections():
    msg = cdr_round_trip(detections_message(np.zeros((0, 9)), np.zeros(0), np.zeros(0), CLASSES, header()))
    boxes, scores, labels = detections_from_message(msg, CLASSES)
    assert boxes.shape == (0, 7) and scores.shape == (0,) and labels.shape == (0,)


# ---------------------------------------------------------------------------------------------- map

def test_occupancy_grid_follows_the_ros_indexing():
    grid = BEVGrid(x_range=[-12.0, 8.0], y_range=[-6.0, 10.0], resolution=0.5)
    nx, ny = grid.shape
    assert (nx, ny) == (40, 32)
    rng = np.random.default_rng(5)
    probabilities = rng.uniform(0, 1, (nx, ny)).astype(np.float32)
    msg = cdr_round_trip(occupancy_grid(probabilities, grid, header()))
    info = msg.info
    assert (info.width, info.height, info.resolution) == (nx, ny, 0.5)
    assert types.stamp_ns(SimpleNamespace(stamp=info.map_load_time)) == STAMP
    assert (info.origin.position.x, info.origin.position.y, info.origin.position.z) == (-12.0, -6.0, 0.0)
    assert info.origin.orientation.w == 1.0
    data = np.asarray(msg.data)
    assert data.size == nx * ny and data.min() >= 0 and data.max() <= 100

    x = rng.uniform(-12, 8, 500)
    y = rng.uniform(-6, 10, 500)
    col = np.floor((x - info.origin.position.x) / info.resolution).astype(int)
    row = np.floor((y - info.origin.position.y) / info.resolution).astype(int)
    ix, iy = grid.index(x, y)
    np.testing.assert_array_equal(data[row * info.width + col], np.round(100 * probabilities[ix, iy]))

    back = probabilities_from_grid(msg)
    assert back.shape == (nx, ny) and back.dtype == np.float32
    np.testing.assert_allclose(back, probabilities, atol=0.005 + 1e-6)


def test_occupancy_grid_unknown_cells():
    grid = BEVGrid(x_range=[0.0, 2.0], y_range=[0.0, 3.0], resolution=1.0)
    probabilities = np.array([[0.0, np.nan, 1.0], [0.254, 0.5, 2.0]])
    msg = occupancy_grid(probabilities, grid, header())
    assert np.asarray(msg.data).tolist() == [0, 25, -1, 50, 100, 100]
    np.testing.assert_array_equal(probabilities_from_grid(msg), np.array([[0, np.nan, 1], [0.25, 0.5, 1]], np.float32))


# ---------------------------------------------------------------------------------------------- markers

def test_box_markers():
    import matplotlib

    boxes, scores, labels = _random_boxes(np.random.default_rng(6), 5)
    marker = types.msg_class("visualization_msgs/msg/Marker")
    msg = cdr_round_trip(box_markers(boxes, labels, CLASSES, header(), "detections", scores=scores))
    first, *rest = msg.markers
    assert first.action == marker.DELETEALL and first.ns == "detections"
    cubes = [m for m in rest if m.type == marker.CUBE and m.action == marker.ADD]
    texts = [m for m in rest if m.type == marker.TEXT_VIEW_FACING and m.action == marker.ADD]
    assert len(rest) == 10 and len(cubes) == 5 and len(texts) == 5
    assert len({m.id for m in msg.markers}) == len(msg.markers)
    tab10 = matplotlib.colormaps["tab10"]
    for box, score, label, cube, text in zip(boxes, scores, labels, cubes, texts):
        assert (cube.scale.x, cube.scale.y, cube.scale.z) == pytest.approx((box[4], box[3], box[5]))
        assert (cube.pose.position.x, cube.pose.position.y, cube.pose.position.z) == pytest.approx(tuple(box[:3]))
        assert (cube.color.r, cube.color.g, cube.color.b) == pytest.approx(tab10(int(label))[:3], abs=1e-6)
        assert cube.color.a == 0.5
        assert text.text == f"{CLASSES[label]} {score:.2f}"
        assert text.pose.position.z > box[2] + box[5] / 2
        for m in (cube, text):
            assert m.ns == "detections" and m.header.frame_id == "lidar_top" and not m.frame_locked
            assert (m.lifetime.sec, m.lifetime.nanosec) == (0, 0)
    plain = box_markers(boxes[:, :7], labels, CLASSES, header(), "detections")
    assert [m.text for m in plain.markers[2::2]] == [CLASSES[i] for i in labels]


def test_runtime_modules_import_no_training_stack():
    modules = ("pointcloud", "images", "outputs", "camera_info", "params", "transforms", "sync", "sweeps", "bag",
               "pipeline", "replay", "nusc2bag")
    code = (f"import sys; import {', '.join('fuller.ros2_node.' + m for m in modules)}; "
            "bad = [m for m in ('torch', 'fuller.train', 'matplotlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
