"""Outputs kept across frames (fuller infer, parity, a caller's own list of results) are each
frame's own, whatever the backend does with its buffers."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fuller.config import load_config
from fuller.engine import Engine
from fuller.engine.offline import run_split

FRAMES = 3


@pytest.fixture(scope="module")
def lidar_cfg():
    """A LiDAR-only config: frames need no calibration, so the test is about outputs alone."""
    return load_config("tiny", ["model.modalities=[lidar]", "model.det_max_boxes=4"])


class ReusingBackend:
    """What Polygraphy's ``TrtRunner.infer`` (and the TensorRT backend) does with outputs: one
    host array per output, allocated once, overwritten in place on every run and returned as
    views. Every value of run ``n``'s outputs is ``n``."""

    name = "reusing"

    def __init__(self, cfg) -> None:
        self.config = cfg
        k, g = cfg.model.det_max_boxes, cfg.geometry.map_grid
        self.buffers = {"boxes": np.zeros((1, k, 9), np.float32), "scores": np.zeros((1, k), np.float32),
                        "labels": np.zeros((1, k), np.int32),
                        "map_probs": np.zeros((1, len(cfg.geometry.map_classes), *g.shape), np.float32)}
        self.runs = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs += 1
        for buffer in self.buffers.values():
            buffer[...] = self.runs
        return {name: buffer[:] for name, buffer in self.buffers.items()}

    def describe(self) -> str:
        return "reusing"


class Split:
    """The two things `run_split` asks of a dataset: its tokens and a raw sample per token."""

    def __init__(self, frames: int) -> None:
        self.samples = [f"token{i}" for i in range(frames)]
        self.rng = np.random.default_rng(0)

    def load(self, token: str) -> SimpleNamespace:
        points = np.c_[self.rng.uniform(-20, 20, (200, 2)), self.rng.uniform(-2, 1, (200, 1)),
                       self.rng.uniform(0, 1, (200, 1)), np.zeros((200, 1))].astype(np.float32)
        return SimpleNamespace(intrinsics=np.eye(3)[None], camera2lidar=np.eye(4)[None],
                               images=np.zeros((1, 8, 8, 3), np.uint8), points=points)


def test_backend_that_reuses_its_buffers_keeps_the_contract_it_states(lidar_cfg):
    backend = ReusingBackend(lidar_cfg)
    first = backend.run({})
    backend.run({})
    assert first["scores"].base is backend.buffers["scores"] and float(first["scores"].max()) == 2.0


def test_each_frame_of_a_split_keeps_its_own_prediction(lidar_cfg):
    predictions = run_split([Engine(ReusingBackend(lidar_cfg))], Split(FRAMES), progress=False)[0]
    for run, token in enumerate(Split(FRAMES).samples, start=1):
        pred = predictions[token]
        assert np.all(pred.scores == run) and np.all(pred.boxes == run) and np.all(pred.map_probs == run), token


def test_outputs_handed_to_on_frame_are_the_frames_own(lidar_cfg):
    seen = []
    run_split([Engine(ReusingBackend(lidar_cfg))], Split(FRAMES), progress=False,
              on_frame=lambda token, outputs: seen.append(outputs[0]))
    assert [float(out["scores"].max()) for out in seen] == [1.0, 2.0, 3.0]


def test_results_of_infer_survive_the_next_frame(lidar_cfg):
    engine, split = Engine(ReusingBackend(lidar_cfg)), Split(2)
    results = [engine.infer(None, split.load(token).points) for token in split.samples]
    assert [float(r.outputs["map_probs"].max()) for r in results] == [1.0, 2.0]
    assert [float(r.bev_map.probabilities.max()) for r in results] == [1.0, 2.0]
