"""`Engine`: one interface for every backend, CUDA-BEVFusion's split of ``update(calibration)``
from ``forward(images, points)``, with per-stage timers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuller.config import FullerConfig

from .backends import Backend, load_backend
from .frame import Calibration, FrameError
from .postprocess import BEVMap, Detections, bev_map, detections
from .preprocess import Preprocessor
from .timers import StageTimers

STAGES = ("images", "voxelize", "inference", "postprocess", "total")


@dataclass
class Result:
    detections: Detections | None  # None when the model has no det head
    bev_map: BEVMap | None  # None when the model has no map head
    outputs: dict[str, np.ndarray]  # the raw graph outputs (parity compares these)
    timings_ms: dict[str, float]


class Engine:
    """``Engine.load(path)`` (or ``Engine(backend)``) then ``update_calibration(...)`` once per rig
    change and ``infer(images, points)`` per frame. A bad frame raises `FrameError` before any work; the engine stays usable."""

    def __init__(self, backend: Backend, score_threshold: float = 0.1, map_threshold: float = 0.5) -> None:
        self.backend = backend
        self.config: FullerConfig = backend.config
        self.modalities = tuple(self.config.model.modalities)
        self.preprocessor = Preprocessor(self.config)
        self.score_threshold, self.map_threshold = score_threshold, map_threshold
        self.timers = StageTimers()

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> "Engine":
        """An engine over a runtime artefact (``.engine`` or ``.onnx``)."""
        return cls(load_backend(path), **kwargs)

    def update_calibration(self, calibration: Calibration) -> bool:
        """Recompute the BEV-pool geometry if the calibration changed; returns whether it did."""
        if "camera" not in self.modalities:
            return False
        return self.preprocessor.calibrate(calibration)

    def feeds(self, images: np.ndarray | None, points: np.ndarray | None) -> dict[str, np.ndarray]:
        """The graph inputs of one frame (validated; timed as the images and voxelize stages)."""
        feeds: dict[str, np.ndarray] = {}
        if "camera" in self.modalities:
            if images is None:
                raise FrameError("images: this model uses cameras, got none")
            with self.timers("images"):
                feeds.update(self.preprocessor.images(images))
                feeds.update(self.preprocessor.geometry_feeds)
        if "lidar" in self.modalities:
            if points is None:
                raise FrameError("points: this model uses the LiDAR, got none")
            with self.timers("voxelize"):
                feeds.update(self.preprocessor.voxels(points))
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend's outputs for ``feeds``, as arrays the caller owns. A backend may hand back
        buffers it overwrites on its next run (TensorRT's pinned output buffers), so this is the one
        place they are copied, and every caller that keeps outputs across frames goes through it."""
        return {name: np.array(value) for name, value in self.backend.run(feeds).items()}

    def infer(self, images: np.ndarray | None, points: np.ndarray | None) -> Result:
        with self.timers("total"):
            feeds = self.feeds(images, points)
            with self.timers("inference"):
                outputs = self.run(feeds)
            with self.timers("postprocess"):
                dets = detections(outputs, self.config, self.score_threshold)
                bev = bev_map(outputs, self.config, self.map_threshold)
        return Result(dets, bev, outputs, self.timers.last())

    def describe(self) -> str:
        return self.backend.describe()
