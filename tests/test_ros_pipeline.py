"""The node's processing without ROS: TF, synchronisation, multi-sweep clouds, nusc2bag -> replay.

References: closed-form poses for TF, hand-worked stamp sequences for the synchroniser, the
devkit's ``LidarPointCloud.from_file_multisweep`` for the sweeps, and the engine called directly on
the dataset's samples for the replay.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags is not installed (pip install fuller[ros])")
pytest.importorskip("mcap", reason="mcap is not installed (pip install fuller[ros])")

from scipy.spatial.transform import Rotation  # noqa: E402

from fuller.ros2_node.transforms import TransformError, TransformTree, matrix  # noqa: E402

SCENE = "scene-0103"  # in mini_val
S = 1_000_000_000


def _pose(yaw_deg: float, translation) -> tuple:
    return translation, Rotation.from_euler("z", yaw_deg, degrees=True).as_quat()


def _rigid(rng) -> np.ndarray:
    return matrix(rng.normal(size=3), Rotation.random(random_state=rng).as_quat())


# -- TF --------------------------------------------------------------------------------------------

def test_tf_interpolates_linearly_and_by_slerp_between_samples():
    tree = TransformTree()
    tree.set("map", "base_link", 0, *_pose(0, (0.0, 0.0, 0.0)), static=False)
    tree.set("map", "base_link", S, *_pose(90, (2.0, 0.0, 0.0)), static=False)
    got = tree.lookup("map", "base_link", S // 4)
    want = matrix((0.5, 0.0, 0.0), Rotation.from_euler("z", 22.5, degrees=True).as_quat())
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("base_link", "map", S), np.linalg.inv(tree.lookup("map", "base_link", S)))
    with pytest.raises(TransformError, match="extrapolate"):
        tree.lookup("map", "base_link", 2 * S)


def test_tf_chains_static_and_dynamic_frames_like_explicit_products():
    rng = np.random.default_rng(0)
    base_lidar, base_cam, pose0, pose1 = (_rigid(rng) for _ in range(4))
    tree = TransformTree()
    for child, m in (("lidar_top", base_lidar), ("cam_front", base_cam)):
        tree.set("base_link", child, 0, m[:3, 3], Rotation.from_matrix(m[:3, :3]).as_quat(), static=True)
    for ns, m in ((0, pose0), (S, pose1)):
        tree.set("map", "base_link", ns, m[:3, 3], Rotation.from_matrix(m[:3, :3]).as_quat(), static=False)

    np.testing.assert_allclose(tree.lookup("lidar_top", "cam_front", S // 2),
                               np.linalg.inv(base_lidar) @ base_cam, atol=1e-12)
    # The camera at t=1 s seen from the LiDAR at t=0: through the map frame, the ego motion included.
    np.testing.assert_allclose(tree.lookup_full("lidar_top", 0, "cam_front", S, "map"),
                               np.linalg.inv(pose0 @ base_lidar) @ pose1 @ base_cam, atol=1e-12)
    with pytest.raises(TransformError, match="has not been published"):
        tree.lookup("lidar_top", "cam_back", 0)
    tree.set("odom", "imu", 0, (0, 0, 0), (0, 0, 0, 1), static=True)
    with pytest.raises(TransformError, match="not connected"):
        tree.lookup("imu", "lidar_top", 0)


# -- synchronisation ------------------------------------------------------------------------------

def _sync(**kw):
    from fuller.ros2_node.sync import FrameSynchronizer

    return FrameSynchronizer(["A", "B"], slop_ns=50_000_000, queue_size=5, max_wait_ns=300_000_000, **kw)


MS = 1_000_000


def test_sync_pairs_jittered_stamps_in_any_arrival_order():
    sync = _sync()
    assert sync.add_image("A", 10 * MS, "a0") == [] and sync.add_cloud(0, "c0") == []
    (frame,) = sync.add_image("B", 30 * MS, "b0")
    assert (frame.stamp_ns, frame.cloud, frame.missing) == (0, "c0", ())
    assert frame.images == {"A": (10 * MS, "a0"), "B": (30 * MS, "b0")}
    # Images 60 ms apart are no ApproximateTime set, and a nearer image may still come ...
    assert sync.add_cloud(500 * MS, "c1") == [] and sync.add_image("A", 480 * MS, "a1") == []
    assert sync.add_image("B", 540 * MS, "b1") == [] and sync.add_image("A", 1000 * MS, "a2") == []
    # ... until both cameras have moved past 500 ms + slop: each image is within slop of the cloud.
    (frame,) = sync.add_image("B", 1000 * MS, "b2")
    assert frame.cloud == "c1" and frame.missing == () and frame.images == {"A": (480 * MS, "a1"),
                                                                             "B": (540 * MS, "b1")}


def test_sync_resolves_a_frame_whose_camera_dropped_out_and_counts_bare_sweeps():
    sync = _sync()
    frames = []
    for t, who in [(0, "c"), (0, "A"), (0, "B"),          # complete
                   (166, "c"),                             # a sweep between camera frames
                   (500, "c"), (505, "A"),                 # B never sends this one
                   (1000, "c"), (1002, "A"), (1003, "B")]:  # B moves past 500 ms + slop: 500 is settled
        frames += sync.add_cloud(t * MS, f"c{t}") if who == "c" else sync.add_image(who, t * MS, f"{who}{t}")
    assert [(f.stamp_ns // MS, f.missing) for f in frames] == [(0, ()), (500, ("B",)), (1000, ())]
    assert frames[1].images == {"A": (505 * MS, "A505")}
    assert sync.clouds_without_cameras == 1


def test_sync_gives_up_on_a_silent_camera_after_max_wait_and_flushes_at_the_end():
    sync = _sync()
    assert sync.add_cloud(0, "c0") == [] and sync.add_image("A", 0, "a0") == []
    (frame,) = sync.add_cloud(400 * MS, "c400")  # B silent for longer than max_wait
    assert frame.stamp_ns == 0 and frame.missing == ("B",)
    assert sync.add_image("A", 400 * MS, "a400") == []
    (last,) = sync.flush()
    assert last.stamp_ns == 400 * MS and last.missing == ("B",)


# -- nusc2bag, sweeps and replay --------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene_bag(tmp_path_factory, nusc):
    from fuller.ros2_node.nusc2bag import scene_to_bag

    path = tmp_path_factory.mktemp("bags") / f"{SCENE}.mcap"
    counts = scene_to_bag(nusc, SCENE, path, progress=False)
    return path, counts


def _keyframes(nusc, scene=SCENE) -> list[dict]:
    rec = next(s for s in nusc.scene if s["name"] == scene)
    samples, token = [], rec["first_sample_token"]
    while token:
        samples.append(nusc.get("sample", token))
        token = samples[-1]["next"]
    return samples


def test_nusc2bag_writes_every_sensor_message_of_the_scene(scene_bag, nusc):
    from fuller.ros2_node.bag import topics
    from fuller.ros2_node.types import CAMERA_INFO, COMPRESSED_IMAGE, POINTCLOUD2

    path, counts = scene_bag
    keyframes = _keyframes(nusc)
    lidar = [sd for sd in nusc.sample_data if sd["sample_token"] in {s["token"] for s in keyframes}
             and "LIDAR_TOP" in sd["filename"]]
    present = topics(path)
    assert present["/lidar_top/points"] == (POINTCLOUD2, len(lidar))
    assert present["/cam_back/image/compressed"] == (COMPRESSED_IMAGE, len(keyframes))
    assert present["/cam_back/camera_info"] == (CAMERA_INFO, len(keyframes))
    assert present["/gt/markers"][1] == len(keyframes) and present["/tf_static"][1] == 1
    assert {t: n for t, (_, n) in present.items()} == counts


def test_a_rosbag2_folder_reads_like_the_mcap_file(scene_bag, tmp_path):
    """``ros2 bag record`` writes a folder (sqlite3 here); replay reads it message for message."""
    from rosbags.rosbag2 import Writer

    from fuller.ros2_node.bag import read_bag, topics
    from fuller.ros2_node.types import typestore

    messages = list(read_bag(scene_bag[0]))
    folder = tmp_path / "recorded"
    with Writer(folder, version=9) as writer:
        connections = {}
        for m in messages:
            if m.topic not in connections:
                connections[m.topic] = writer.add_connection(m.topic, m.typename, typestore=typestore())
            writer.write(connections[m.topic], m.log_time_ns, m.data)
    assert list(read_bag(folder)) == messages
    assert topics(folder) == topics(scene_bag[0])


def _feed_tf_and_sweeps(bag_path, sweeps: int):
    from fuller.ros2_node.bag import read_bag
    from fuller.ros2_node.pointcloud import points_from_cloud
    from fuller.ros2_node.sweeps import Sweep, SweepAccumulator
    from fuller.ros2_node.types import POINTCLOUD2, TF_MESSAGE, deserialize, stamp_ns

    tree, acc = TransformTree(), SweepAccumulator(sweeps)
    for m in read_bag(bag_path):
        if m.typename == TF_MESSAGE:
            tree.add(deserialize(m.data, m.typename), static=m.topic == "/tf_static")
        elif m.typename == POINTCLOUD2:
            msg = deserialize(m.data, m.typename)
            acc.add(Sweep(stamp_ns(msg.header), msg.header.frame_id, points_from_cloud(msg)[0]))
    return tree, acc


@pytest.mark.parametrize("sweeps", [2, 3])
def test_multisweep_cloud_from_tf_equals_the_devkit(scene_bag, nusc, sweeps):
    from nuscenes.utils.data_classes import LidarPointCloud

    tree, acc = _feed_tf_and_sweeps(scene_bag[0], sweeps)
    for sample in _keyframes(nusc):
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=sweeps)
        got = acc.aggregate(lidar["timestamp"] * 1000, tree, "map")
        assert got.shape == (pc.points.shape[1], 5)
        np.testing.assert_allclose(got[:, :4], pc.points.T, atol=1e-4)
        np.testing.assert_allclose(got[:, 4], times[0], atol=1e-6)


def _params(model, **overrides):
    from fuller.ros2_node.params import NodeParams

    return NodeParams.from_mapping({"model": str(model), "device": "cpu", **overrides})


def _replay(bag, model, out, **overrides):
    from fuller.engine import Engine
    from fuller.ros2_node.replay import replay

    params = _params(model, **overrides)
    engine = Engine.load(model, score_threshold=params.score_threshold, map_threshold=params.map_threshold)
    warnings: list[str] = []
    report = replay(bag, engine, params, out, progress=False, log=warnings.append)
    return report, warnings


def _outputs(path, topic, typename):
    from fuller.ros2_node.bag import read_bag
    from fuller.ros2_node.types import deserialize, stamp_ns

    msgs = [deserialize(m.data, typename) for m in read_bag(path) if m.topic == topic]
    return {stamp_ns(msg.header): msg for msg in msgs}


@pytest.mark.slow
def test_replay_of_a_converted_scene_equals_the_engine_on_the_dataset(scene_bag, nusc, synth_root, small_onnx,
                                                                      small_cfg, tmp_path):
    """nusc2bag -> replay gives, frame for frame, what the engine gives on the dataset's own samples."""
    from fuller.engine import Calibration, Engine
    from fuller.ros2_node.outputs import detections_from_message, probabilities_from_grid
    from fuller.ros2_node.types import DETECTION3D_ARRAY, OCCUPANCY_GRID
    from fuller.data import NuScenesDataset

    out = tmp_path / "replayed.mcap"
    report, warnings = _replay(scene_bag[0], small_onnx, out, score_threshold=0.1)
    keyframes = _keyframes(nusc)
    assert report.frames == len(keyframes) and not warnings, warnings
    detections = _outputs(out, "/fuller/detections", DETECTION3D_ARRAY)
    grids = _outputs(out, "/fuller/map/drivable_area", OCCUPANCY_GRID)
    assert len(detections) == len(grids) == len(keyframes)

    engine = Engine.load(small_onnx, score_threshold=0.1)
    dataset = NuScenesDataset(small_cfg, synth_root, "mini_val", nusc=nusc)
    classes = list(small_cfg.geometry.classes)
    for sample_rec in keyframes:
        sample = dataset.load(sample_rec["token"])
        engine.update_calibration(Calibration(sample.intrinsics, sample.camera2lidar, sample.images.shape[1:3]))
        want = engine.infer(sample.images, sample.points)
        stamp = sample.timestamp * 1000
        boxes, scores, labels = detections_from_message(detections[stamp], classes)
        assert len(scores) == len(want.detections) > 0
        np.testing.assert_array_equal(labels, want.detections.labels)
        np.testing.assert_allclose(scores, want.detections.scores, atol=1e-5)
        np.testing.assert_allclose(boxes[:, :6], want.detections.boxes[:, :6], atol=1e-3)
        dyaw = np.angle(np.exp(1j * (boxes[:, 6] - want.detections.boxes[:, 6])))
        np.testing.assert_allclose(dyaw, 0.0, atol=1e-3)
        np.testing.assert_allclose(probabilities_from_grid(grids[stamp]), want.bev_map.probabilities[0],
                                   atol=0.005 + 1e-4)


def _damaged_bag(source, out):
    """The scene with: keyframe 1's cloud all NaN, keyframe 2 without CAM_BACK, the sweep before
    keyframe 3 empty, and garbage bytes instead of keyframe 3's CAM_FRONT CameraInfo."""
    from fuller.ros2_node.bag import BagWriter, read_bag
    from fuller.ros2_node.types import POINTCLOUD2, deserialize

    messages = list(read_bag(source))
    cloud_stamps = sorted({m.log_time_ns for m in messages if m.topic == "/lidar_top/points"})

    def keyframes(topic: str) -> list[int]:
        return sorted({m.log_time_ns for m in messages if m.topic == topic})[:3]

    # Cameras fire tens of ms before their keyframe's cloud: a keyframe's cloud is the first one after
    # its CAM_BACK image; CAM_FRONT's CameraInfo has CAM_FRONT's own stamps.
    k1, k2, k3 = (min(s for s in cloud_stamps if s >= t) for t in keyframes("/cam_back/image/compressed"))
    k2_back = keyframes("/cam_back/image/compressed")[1]
    k3_front = keyframes("/cam_front/camera_info")[2]
    sweep3 = max(s for s in cloud_stamps if s < k3)
    with BagWriter(out) as bag:
        for m in messages:
            data = m.data
            if m.topic == "/lidar_top/points" and m.log_time_ns in (k1, sweep3):
                msg = deserialize(m.data, POINTCLOUD2)
                if m.log_time_ns == k1:
                    raw = np.frombuffer(msg.data, np.uint8).copy().reshape(-1, msg.point_step)
                    raw[:, :4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)  # x = NaN in every row
                    msg.data = raw.reshape(-1)
                else:
                    msg.data, msg.width, msg.row_step = np.zeros(0, np.uint8), 0, 0
                data = msg
            elif m.topic == "/cam_back/image/compressed" and m.log_time_ns == k2_back:
                continue
            elif m.topic == "/cam_front/camera_info" and m.log_time_ns == k3_front:
                data = b"\x00\x01garbage"
            bag.write(m.topic, m.typename, data, m.log_time_ns)
    return k1, k2, k3


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "blank"])
def test_replay_of_a_damaged_bag_runs_to_the_end_with_warnings_and_counts(scene_bag, small_onnx, tmp_path, policy):
    from fuller.ros2_node.types import DETECTION3D_ARRAY

    damaged = tmp_path / "damaged.mcap"
    k1, k2, k3 = _damaged_bag(scene_bag[0], damaged)
    out = tmp_path / "out.mcap"
    report, warnings = _replay(damaged, small_onnx, out, missing_camera=policy)

    assert report.counters["dropped_empty_cloud"] == 2  # the NaN-filled cloud and the empty one
    assert report.counters["dropped_malformed_message"] == 1
    assert report.counters["dropped_missing_camera"] == (1 if policy == "skip" else 0)
    assert report.counters["blanked_cameras"] == (0 if policy == "skip" else 1)
    stamps = sorted(_outputs(out, "/fuller/detections", DETECTION3D_ARRAY))
    assert stamps == ([k3] if policy == "skip" else [k2, k3]) and report.frames == len(stamps)
    text = "\n".join(warnings)
    assert "no finite points" in text and "cam_front/camera_info" in text and "CAM_BACK" in text


@pytest.mark.slow
def test_cli_nusc2bag_then_replay(synth_root, small_onnx, tmp_path, capsys):
    from fuller.cli import main
    from fuller.ros2_node.bag import topics
    from fuller.ros2_node.types import DETECTION3D_ARRAY, DIAGNOSTIC_ARRAY

    bag, out = tmp_path / "scene.mcap", tmp_path / "replayed.mcap"
    assert main(["nusc2bag", "--data", synth_root, "--scene", "scene-0916", "--out", str(bag)]) == 0
    assert main(["replay", "--bag", str(bag), "--model", str(small_onnx), "--out", str(out),
                 "--param", "score_threshold=0.2", "--param", "missing_camera=blank"]) == 0
    printed = capsys.readouterr().out
    assert "frames: 3 in" in printed and "inference" in printed
    written = topics(out)
    assert written["/fuller/detections"] == (DETECTION3D_ARRAY, 3)
    assert written["/diagnostics"] == (DIAGNOSTIC_ARRAY, 1)
    assert {t: v for t, v in written.items() if t in topics(bag)} == topics(bag)  # inputs kept as they were
    assert main(["replay", "--bag", str(bag), "--model", str(small_onnx), "--out", str(out),
                 "--param", "missing_camera=maybe"]) == 2
    assert "parameter missing_camera: expected one of ['skip', 'blank']" in capsys.readouterr().err
    assert main(["nusc2bag", "--data", synth_root, "--scene", "scene-9999", "--out", str(bag)]) == 2
    assert "scene 'scene-9999': not in" in capsys.readouterr().err
