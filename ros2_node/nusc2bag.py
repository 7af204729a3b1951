"""A nuScenes scene (real or synthetic) as a ROS 2 bag, laid out as a vehicle would record it.

Per scene, in timestamp order: every LiDAR sweep (keyframes and the sweeps between them) as a
``PointCloud2`` (x, y, z, intensity float32 and ring uint16, as a Velodyne driver publishes);
each camera's JPEG exactly as stored, as ``CompressedImage``, with its ``CameraInfo``; ``/tf`` with
the ego pose (fixed frame -> base_link) at every sensor time; ``/tf_static`` with base_link -> each
sensor; and the annotated boxes of each keyframe as RViz markers on ``/gt/markers``. Topic and frame
names are the node's defaults, so ``fuller replay`` (and the node) read the bag with no settings.

It reads the devkit tables only: no torch, no training code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from fuller.config import NUSCENES_DETECTION_CLASSES
from fuller.errors import UserInputError

from .bag import BagWriter
from .camera_info import camera_info_message
from .images import compressed_message
from .outputs import box_markers
from .params import DEFAULTS, camera_topic
from .pointcloud import cloud_from_array
from .types import CAMERA_INFO, COMPRESSED_IMAGE, MARKER_ARRAY, POINTCLOUD2, TF_MESSAGE, make_header, msg_class

LIDAR_CHANNEL = "LIDAR_TOP"
BASE_FRAME = "base_link"
GT_TOPIC = "/gt/markers"
CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])


def frame_id(channel: str) -> str:
    """ROS frame of a nuScenes sensor channel: ``CAM_FRONT`` -> ``cam_front``."""
    return channel.lower()


def _transform_stamped(parent: str, child: str, ns: int, translation, rotation_wxyz):
    m = msg_class
    w, x, y, z = rotation_wxyz
    return m("geometry_msgs/msg/TransformStamped")(
        header=make_header(ns, parent), child_frame_id=child,
        transform=m("geometry_msgs/msg/Transform")(
            translation=m("geometry_msgs/msg/Vector3")(x=float(translation[0]), y=float(translation[1]),
                                                      z=float(translation[2])),
            rotation=m("geometry_msgs/msg/Quaternion")(x=float(x), y=float(y), z=float(z), w=float(w))))


def _tf(transforms):
    return msg_class(TF_MESSAGE)(transforms=list(transforms))


def scene_sample_data(nusc, scene_name: str) -> list[dict]:
    """The LiDAR and camera sample_data records of a scene, by timestamp."""
    scenes = {s["name"]: s for s in nusc.scene}
    if scene_name not in scenes:
        raise UserInputError(f"scene {scene_name!r}: not in {nusc.dataroot} ({nusc.version}); "
                             f"scenes: {', '.join(sorted(scenes))}")
    samples = {s["token"] for s in nusc.sample if s["scene_token"] == scenes[scene_name]["token"]}
    records = []
    for sd in nusc.sample_data:
        if sd["sample_token"] not in samples:
            continue
        sensor = nusc.get("sensor", nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["sensor_token"])
        if sensor["modality"] == "camera" or sensor["channel"] == LIDAR_CHANNEL:
            records.append({**sd, "channel": sensor["channel"]})
    return sorted(records, key=lambda sd: (sd["timestamp"], sd["channel"] != LIDAR_CHANNEL))


def _gt_boxes(nusc, lidar_token: str, classes) -> tuple[np.ndarray, np.ndarray]:
    from nuscenes.eval.detection.utils import category_to_detection_name

    _, boxes, _ = nusc.get_sample_data(lidar_token)
    rows, labels = [], []
    for box in boxes:
        name = category_to_detection_name(box.name)
        if name in classes:
            rows.append([*box.center, *box.wlh, box.orientation.yaw_pitch_roll[0]])
            labels.append(classes.index(name))
    return np.asarray(rows, np.float64).reshape(-1, 7), np.asarray(labels, np.int64)


def scene_to_bag(nusc, scene_name: str, out: str | Path, progress: bool = True) -> dict[str, int]:
    """Write one scene to ``out`` (.mcap); returns messages written per topic."""
    records = scene_sample_data(nusc, scene_name)
    classes = list(NUSCENES_DETECTION_CLASSES)
    fixed = DEFAULTS["fixed_frame"]
    counts: dict[str, int] = {}
    root = Path(nusc.dataroot)

    with BagWriter(out) as bag:
        def write(topic, typename, msg, ns):
            bag.write(topic, typename, msg, ns)
            counts[topic] = counts.get(topic, 0) + 1

        start = records[0]["timestamp"] * 1000
        sensors = {}
        for sd in records:
            sensors.setdefault(sd["channel"], nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
        write("/tf_static", TF_MESSAGE, _tf(_transform_stamped(BASE_FRAME, frame_id(ch), start, cs["translation"],
                                                               cs["rotation"]) for ch, cs in sorted(sensors.items())),
              start)
        posed: set[int] = set()
        for sd in tqdm(records, desc=f"nusc2bag {scene_name}", unit="msg", disable=not progress, dynamic_ncols=True):
            ns = sd["timestamp"] * 1000
            if ns not in posed:
                pose = nusc.get("ego_pose", sd["ego_pose_token"])
                write("/tf", TF_MESSAGE, _tf([_transform_stamped(fixed, BASE_FRAME, ns, pose["translation"],
                                                                 pose["rotation"])]), ns)
                posed.add(ns)
            header = make_header(ns, frame_id(sd["channel"]))
            path = root / sd["filename"]
            if sd["channel"] == LIDAR_CHANNEL:
                raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)  # x, y, z, intensity, ring
                cloud = np.empty(len(raw), CLOUD_DTYPE)
                for i, name in enumerate(("x", "y", "z", "intensity")):
                    cloud[name] = raw[:, i]
                cloud["ring"] = raw[:, 4].astype(np.uint16)
                write(DEFAULTS["lidar_topic"], POINTCLOUD2, cloud_from_array(cloud, header), ns)
                if sd["is_key_frame"]:
                    boxes, labels = _gt_boxes(nusc, sd["token"], classes)
                    write(GT_TOPIC, MARKER_ARRAY, box_markers(boxes, labels, classes, header, "gt"), ns)
            else:
                cs = sensors[sd["channel"]]
                write(camera_topic(DEFAULTS["camera_info_topic_format"], sd["channel"]), CAMERA_INFO,
                      camera_info_message(np.asarray(cs["camera_intrinsic"], np.float64),
                                          (sd["height"], sd["width"]), header), ns)
                write(camera_topic(DEFAULTS["camera_topic_format"], sd["channel"]), COMPRESSED_IMAGE,
                      compressed_message(path.read_bytes(), header, "jpeg"), ns)
    return counts
