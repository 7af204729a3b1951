"""The perception node's processing, without rclpy: CDR messages in, output messages out.

`PerceptionPipeline.handle(topic, cdr_bytes)` is all the live node (`node.py`) and the offline
replay (`replay.py`) call, so a bag replayed here behaves as the vehicle would. Per message: TF and
CameraInfo update state; clouds and images are decoded and paired (`sync.py`); each paired frame
gets its calibration from CameraInfo + TF (the engine recomputes geometry only when it changed),
its multi-sweep cloud (`sweeps.py`), one `Engine.infer`, and its outputs as messages.

Nothing a sensor sends can stop the pipeline: a message that cannot be used is dropped with a
warning and counted by reason in `counters` (published in the diagnostics).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, NamedTuple

import numpy as np

from fuller.engine.engine import STAGES, Engine
from fuller.engine.frame import Calibration, FrameError
from fuller.engine.timers import StageTimers

from .camera_info import CameraModel, camera_model
from .images import compressed_to_rgb, image_to_rgb
from .outputs import box_markers, detections_message, occupancy_grid
from .params import NodeParams
from .pointcloud import points_from_cloud
from .sweeps import Sweep, SweepAccumulator
from .sync import FrameSynchronizer, SyncedFrame
from .transforms import TransformError, TransformTree
from .types import (CAMERA_INFO, COMPRESSED_IMAGE, DETECTION3D_ARRAY, DIAGNOSTIC_ARRAY, FLOAT64, MARKER_ARRAY,
                    OCCUPANCY_GRID, POINTCLOUD2, TF_MESSAGE, MessageError, deserialize, make_header, msg_class,
                    stamp_ns)

LOG = logging.getLogger("fuller.ros2_node")
TF_TOPIC, TF_STATIC_TOPIC, DIAGNOSTICS_TOPIC = "/tf", "/tf_static", "/diagnostics"
PIPELINE_STAGES = ("sweeps", "messages", "frame")  # per frame, besides the engine's STAGES; "decode" is per message


class Output(NamedTuple):
    topic: str
    typename: str
    msg: Any
    stamp_ns: int


class PerceptionPipeline:
    def __init__(self, engine: Engine, params: NodeParams, log: Callable[[str], None] = LOG.warning) -> None:
        self.engine, self.params, self.log = engine, params, log
        cfg = engine.config
        self.cameras = params.resolved_cameras(cfg.geometry.cameras) if "camera" in engine.modalities else []
        self.tf = TransformTree()
        self.sweeps = SweepAccumulator(cfg.geometry.sweeps)
        self.sync = FrameSynchronizer(self.cameras, slop_ns=int(params.slop_s * 1e9), queue_size=params.queue_size,
                                      max_wait_ns=int(params.max_camera_wait_s * 1e9))
        self.camera_models: dict[str, tuple[CameraModel, str]] = {}  # camera -> (model, optical frame id)
        self.counters: Counter = Counter()
        self.timers = StageTimers()
        self._drops_reported = 0
        # topic -> camera, for the images and the CameraInfo of each camera
        self.image_topics = dict(zip(params.camera_topics(self.cameras), self.cameras))
        self.info_topics = dict(zip(params.camera_info_topics(self.cameras), self.cameras))
        self.subscriptions: dict[str, str] = {
            params.lidar_topic: POINTCLOUD2, **{t: params.image_type for t in self.image_topics},
            **{t: CAMERA_INFO for t in self.info_topics}, TF_TOPIC: TF_MESSAGE, TF_STATIC_TOPIC: TF_MESSAGE}
        prefix = params.output_prefix.rstrip("/")
        self.detections_topic, self.markers_topic = f"{prefix}/detections", f"{prefix}/markers"
        self.map_topics = {name: f"{prefix}/map/{name}" for name in cfg.geometry.map_classes} \
            if "map" in cfg.model.tasks else {}
        self.latency_topics = {stage: f"{prefix}/latency/{stage}" for stage in (*STAGES, *PIPELINE_STAGES)}
        self.publications: dict[str, str] = {
            **({self.detections_topic: DETECTION3D_ARRAY, self.markers_topic: MARKER_ARRAY}
               if "det" in cfg.model.tasks else {}),
            **{t: OCCUPANCY_GRID for t in self.map_topics.values()},
            **{t: FLOAT64 for t in self.latency_topics.values()}, DIAGNOSTICS_TOPIC: DIAGNOSTIC_ARRAY}

    # -- messages in ---------------------------------------------------------------------------

    def handle(self, topic: str, data: bytes) -> list[Output]:
        """One serialized message; returns the output messages of every frame it completed."""
        typename = self.subscriptions.get(topic)
        if typename is None:
            return []
        self.counters["messages"] += 1
        try:
            msg = deserialize(data, typename)
        except Exception as e:  # rosbags raises several types on truncated or garbled CDR
            self._drop("malformed_message", f"{topic}: cannot deserialize as {typename} ({type(e).__name__}: {e})")
            return []
        frames = self._guarded(lambda: self._route(topic, typename, msg), topic, "malformed_message")
        return [out for frame in frames or () for out in self._process(frame)]

    def flush(self) -> list[Output]:
        """End of a stream (a replay): resolve the clouds still waiting for cameras."""
        return [out for frame in self.sync.flush() for out in self._process(frame)]

    def _route(self, topic: str, typename: str, msg) -> list[SyncedFrame]:
        if typename == TF_MESSAGE:
            self.tf.add(msg, static=topic == TF_STATIC_TOPIC)
            return []
        if topic in self.info_topics:
            camera = self.info_topics[topic]
            model = camera_model(msg)
            if model.distorted and camera not in self.camera_models:
                self.log(f"{topic}: non-zero distortion; the network expects rectified images (use image_rect)")
            self.camera_models[camera] = (model, msg.header.frame_id)
            return []
        stamp = stamp_ns(msg.header)
        if topic == self.params.lidar_topic:
            with self.timers("decode"):
                points, dropped = points_from_cloud(msg)
            self.counters["nonfinite_points"] += dropped
            if len(points) == 0:
                self._drop("empty_cloud", f"{topic}: cloud at {stamp * 1e-9:.6f} s has no finite points "
                                          f"({dropped} rows with NaN/inf)")
                return []
            sweep = Sweep(stamp, msg.header.frame_id, points)
            self.sweeps.add(sweep)
            return self.sync.add_cloud(stamp, sweep)
        camera = self.image_topics[topic]
        with self.timers("decode"):
            rgb = compressed_to_rgb(msg) if typename == COMPRESSED_IMAGE else image_to_rgb(msg)
        return self.sync.add_image(camera, stamp, (msg.header.frame_id, rgb))

    # -- one frame -----------------------------------------------------------------------------

    def _process(self, frame: SyncedFrame) -> list[Output]:
        when = f"frame at {frame.stamp_ns * 1e-9:.6f} s"
        if frame.missing:
            if self.params.missing_camera == "skip":
                self._drop("missing_camera", f"{when}: no image from {', '.join(frame.missing)} within "
                                             f"{self.params.slop_s} s; skipped (missing_camera=skip)")
                return []
            self.counters["blanked_cameras"] += len(frame.missing)
            self._warn("blanked_cameras", f"{when}: no image from {', '.join(frame.missing)}; "
                                          f"running with them black (missing_camera=blank)")
        outputs = self._guarded(lambda: self._run(frame), when, "bad_frame")
        if outputs is None:
            return []
        self.counters["frames"] += 1
        return outputs

    def _run(self, frame: SyncedFrame) -> list[Output]:
        """Calibrate, aggregate sweeps, infer: the frame's output messages and latencies."""
        with self.timers("frame"):
            images = None
            if self.cameras:
                calibration, images = self._camera_inputs(frame)
                if self.engine.update_calibration(calibration):
                    self.counters["calibration_updates"] += 1
            with self.timers("sweeps"):
                points = self.sweeps.aggregate(frame.stamp_ns, self.tf, self.params.fixed_frame)
            result = self.engine.infer(images, points)
            with self.timers("messages"):
                outputs = self._outputs(frame, result)
        latencies = {**result.timings_ms, **self.timers.last()}
        float64 = msg_class(FLOAT64)
        return outputs + [Output(topic, FLOAT64, float64(data=float(latencies[stage])), frame.stamp_ns)
                          for stage, topic in self.latency_topics.items() if stage in latencies]

    def _camera_inputs(self, frame: SyncedFrame) -> tuple[Calibration, np.ndarray]:
        """Calibration (CameraInfo intrinsics, TF extrinsics at the image times) and the images."""
        lidar_frame = frame.cloud.frame_id
        intrinsics, camera2lidar, images = [], [], []
        for camera, info_topic in zip(self.cameras, self.info_topics):
            if camera not in self.camera_models:
                raise FrameError(f"{camera}: no CameraInfo received yet on {info_topic}")
            model, info_frame = self.camera_models[camera]
            if camera in frame.images:
                stamp, (optical_frame, rgb) = frame.images[camera]
                if rgb.shape[:2] != tuple(model.image_size):
                    raise MessageError(f"{camera}: image is {rgb.shape[0]}x{rgb.shape[1]}, its CameraInfo says "
                                       f"{model.image_size[0]}x{model.image_size[1]}")
            else:
                stamp, optical_frame = frame.stamp_ns, info_frame
                rgb = np.zeros((*model.image_size, 3), np.uint8)
            if self.params.compensate_ego_motion:
                pose = self.tf.lookup_full(lidar_frame, frame.stamp_ns, optical_frame, stamp, self.params.fixed_frame)
            else:
                pose = self.tf.lookup(lidar_frame, optical_frame, frame.stamp_ns)
            intrinsics.append(model.intrinsics)
            camera2lidar.append(pose)
            images.append(rgb)
        sizes = {tuple(m.image_size) for m, _ in self.camera_models.values()}
        if len(sizes) != 1:
            raise MessageError(f"cameras have different image sizes {sorted(sizes)}; the network takes one size")
        return Calibration(np.stack(intrinsics), np.stack(camera2lidar), sizes.pop()), np.stack(images)

    # -- messages out --------------------------------------------------------------------------

    def _outputs(self, frame: SyncedFrame, result) -> list[Output]:
        t = frame.stamp_ns
        header = make_header(t, frame.cloud.frame_id)
        outputs = []
        if result.detections is not None:
            d = result.detections
            outputs.append(Output(self.detections_topic, DETECTION3D_ARRAY,
                                  detections_message(d.boxes, d.scores, d.labels, d.classes, header), t))
            outputs.append(Output(self.markers_topic, MARKER_ARRAY,
                                  box_markers(d.boxes, d.labels, d.classes, header, "fuller", d.scores), t))
        if result.bev_map is not None:
            bev = result.bev_map
            outputs += [Output(self.map_topics[name], OCCUPANCY_GRID, occupancy_grid(bev.probabilities[c], bev.grid,
                                                                                     header), t)
                        for c, name in enumerate(bev.classes)]
        return outputs

    def diagnostics(self, stamp: int) -> Output:
        """A ``diagnostic_msgs/DiagnosticArray``: WARN when frames were dropped since the last call."""
        drops = sum(v for k, v in self.counters.items() if k.startswith("dropped_"))
        level = 0 if drops == self._drops_reported else 1
        self._drops_reported = drops
        key_value, status = msg_class("diagnostic_msgs/msg/KeyValue"), msg_class("diagnostic_msgs/msg/DiagnosticStatus")
        values = [key_value(key=k, value=str(v)) for k, v in sorted(self.counters.items())]
        values.append(key_value(key="clouds_without_cameras", value=str(self.sync.clouds_without_cameras)))
        for stage, s in {**self.engine.timers.summary(), **self.timers.summary()}.items():
            values.append(key_value(key=f"{stage}_ms", value=f"median {s['median_ms']:.1f}, p95 {s['p95_ms']:.1f}"))
        message = f"{self.counters['frames']} frames, {drops} dropped"
        array = msg_class(DIAGNOSTIC_ARRAY)(header=make_header(stamp, ""), status=[status(
            level=level, name="fuller_perception: pipeline", message=message,
            hardware_id=self.engine.describe(), values=values)])
        return Output(DIAGNOSTICS_TOPIC, DIAGNOSTIC_ARRAY, array, stamp)

    # -- drops and warnings --------------------------------------------------------------------

    def _guarded(self, work: Callable[[], Any], where: str, reason: str) -> Any:
        """``work()``, or None after dropping with a warning: a transform not (yet) in TF, or any
        other `FrameError` (a malformed message or frame) counted as ``reason``."""
        try:
            return work()
        except TransformError as e:
            self._drop("bad_transform", f"{where}: {e}")
        except FrameError as e:
            self._drop(reason, f"{where}: {e}")
        return None

    def _drop(self, reason: str, text: str) -> None:
        self.counters[f"dropped_{reason}"] += 1
        self._warn(f"dropped_{reason}", f"{text}; dropped")

    def _warn(self, key: str, text: str) -> None:
        """Log the first few of each kind, then every 100th, so a dead sensor does not flood the log."""
        n = self.counters[key]
        if n <= 3 or n % 100 == 0:
            self.log(f"{text} [{key}: {n} so far]")
