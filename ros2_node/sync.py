"""Pairing one point cloud with one image per camera: message_filters' ApproximateTime policy, plus
a decision for clouds whose camera set never completes.

Complete sets follow ``message_filters.ApproximateTimeSynchronizer`` exactly (per-topic queues of
``queue_size`` keyed by stamp; when a message arrives, the other queues' stamps within ``slop`` of
it are tried nearest first and the first combination whose spread is under ``slop`` is emitted and
removed). It lives here, not in message_filters, so the live node and the offline replay run the
same code on raw messages.

ApproximateTime alone waits forever for a camera that has dropped out. So a pending cloud is also
resolved once no better set can come: every camera has sent an image stamped past the cloud's stamp
+ ``slop`` (stamps per topic increase), or a cloud ``max_wait`` newer has arrived (a silent camera).
It then takes, per camera, the image nearest to it within ``slop``. If every camera has one, that
is its frame (each image within slop of the cloud, though their spread was too wide for
ApproximateTime); if some have, the frame is emitted with the rest listed as missing and the node's
missing-camera policy decides; if none has, it was a sweep between camera frames (LiDARs spin faster
than cameras fire) and is only counted.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

LIDAR = "lidar"


@dataclass
class SyncedFrame:
    stamp_ns: int  # the cloud's stamp
    cloud: Any
    images: dict[str, tuple[int, Any]]  # camera -> (stamp_ns, image) for the cameras present
    missing: tuple[str, ...] = ()


@dataclass
class FrameSynchronizer:
    cameras: Sequence[str]
    slop_ns: int
    queue_size: int = 10
    max_wait_ns: int = 300_000_000
    clouds_without_cameras: int = 0
    images_unmatched: int = 0
    _queues: dict[str, dict[int, Any]] = field(default_factory=dict)
    _newest: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._queues = {name: {} for name in (LIDAR, *self.cameras)}

    def add_cloud(self, stamp_ns: int, cloud) -> list[SyncedFrame]:
        return self._add(LIDAR, stamp_ns, cloud)

    def add_image(self, camera: str, stamp_ns: int, image) -> list[SyncedFrame]:
        if camera not in self._queues or camera == LIDAR:
            raise KeyError(f"camera {camera!r}: not one of the synchronised cameras {list(self.cameras)}")
        return self._add(camera, stamp_ns, image)

    def flush(self) -> list[SyncedFrame]:
        """End of the stream: resolve every pending cloud with what has arrived."""
        return [f for stamp in sorted(self._queues[LIDAR]) if (f := self._resolve(stamp)) is not None]

    def _add(self, topic: str, stamp: int, msg) -> list[SyncedFrame]:
        queue = self._queues[topic]
        frames: list[SyncedFrame] = []
        queue[stamp] = msg
        self._newest[topic] = max(stamp, self._newest.get(topic, stamp))
        while len(queue) > self.queue_size:
            oldest = min(queue)
            if topic == LIDAR:
                if (f := self._resolve(oldest)) is not None:
                    frames.append(f)
            else:
                del queue[oldest]
                self.images_unmatched += 1
        if (f := self._match(topic, stamp)) is not None:
            frames.append(f)
        frames += [f for s in sorted(self._queues[LIDAR]) if self._settled(s) and (f := self._resolve(s)) is not None]
        return frames

    def _match(self, topic: str, stamp: int) -> SyncedFrame | None:
        """message_filters' ApproximateTimeSynchronizer.add, on stamps."""
        others = [name for name in self._queues if name != topic]
        candidates = []
        for name in others:
            near = sorted((abs(s - stamp), s) for s in self._queues[name] if abs(s - stamp) <= self.slop_ns)
            if not near:
                return None
            candidates.append([s for _, s in near])
        for combo in itertools.product(*candidates):
            stamps = dict(zip(others, combo), **{topic: stamp})
            if max(stamps.values()) - min(stamps.values()) < self.slop_ns:
                return self._emit(stamps, ())
        return None

    def _settled(self, cloud_stamp: int) -> bool:
        """No better set can form for this cloud any more."""
        if self._newest.get(LIDAR, cloud_stamp) - cloud_stamp > self.max_wait_ns:
            return True
        return all(self._newest.get(c, -1) > cloud_stamp + self.slop_ns for c in self.cameras)

    def _nearest(self, camera: str, stamp: int) -> int | None:
        near = [(abs(s - stamp), s) for s in self._queues[camera] if abs(s - stamp) <= self.slop_ns]
        return min(near)[1] if near else None

    def _resolve(self, cloud_stamp: int) -> SyncedFrame | None:
        stamps = {LIDAR: cloud_stamp}
        stamps.update({c: s for c in self.cameras if (s := self._nearest(c, cloud_stamp)) is not None})
        if len(stamps) == 1 and self.cameras:
            del self._queues[LIDAR][cloud_stamp]
            self.clouds_without_cameras += 1
            return None
        return self._emit(stamps, tuple(c for c in self.cameras if c not in stamps))

    def _emit(self, stamps: dict[str, int], missing: tuple[str, ...]) -> SyncedFrame:
        msgs = {name: self._queues[name].pop(s) for name, s in stamps.items()}
        images = {c: (stamps[c], msgs[c]) for c in self.cameras if c in stamps}
        return SyncedFrame(stamps[LIDAR], msgs[LIDAR], images, missing)
