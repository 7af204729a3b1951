"""The engine over a nuScenes split, offline: `fuller infer`, `fuller parity` and the demo.

Samples are read raw (original images, calibration, points) and go through the engine's own
preprocessing, exactly as on a vehicle. Reading nuScenes needs the training package's dataset
reader (and with it torch); the runtime path itself does not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from .engine import Engine
from .frame import Calibration


def open_split(cfg, data_root: str | Path, split: str, nusc=None):
    from fuller.train.data.nuscenes_dataset import NuScenesDataset, open_nuscenes

    nusc = nusc or open_nuscenes(data_root, cfg.data.version)
    return NuScenesDataset(cfg, data_root, split, nusc=nusc)


def frames(dataset, progress: bool = True, desc: str = "infer") -> Iterator[tuple[str, Calibration, object]]:
    """(token, calibration, raw sample) for each sample of the split, in order."""
    for token in tqdm(dataset.samples, desc=desc, unit="frame", disable=not progress, dynamic_ncols=True):
        sample = dataset.load(token)
        yield token, Calibration(sample.intrinsics, sample.camera2lidar, tuple(sample.images.shape[1:3])), sample


def to_prediction(outputs: dict[str, np.ndarray]):
    from fuller.train.evaluation import Prediction

    if "boxes" in outputs:
        boxes, scores, labels = outputs["boxes"][0], outputs["scores"][0], outputs["labels"][0].astype(np.int64)
    else:
        boxes, scores, labels = np.zeros((0, 9), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return Prediction(boxes, scores, labels, outputs["map_probs"][0] if "map_probs" in outputs else None)


def run_split(engines: list[Engine], dataset, progress: bool = True,
              on_frame: Callable[[str, list[dict]], None] | None = None) -> list[dict[str, object]]:
    """Predictions per engine, keyed by token. All engines get the inputs the first one prepared,
    so a comparison sees the networks and not two preprocessing runs."""
    predictions: list[dict[str, object]] = [{} for _ in engines]
    lead = engines[0]
    for token, calibration, sample in frames(dataset, progress):
        for engine in engines:
            engine.update_calibration(calibration)
        feeds = lead.feeds(sample.images, sample.points)
        outputs = [engine.backend.run(feeds) for engine in engines]
        for store, out in zip(predictions, outputs):
            store[token] = to_prediction(out)
        if on_frame is not None:
            on_frame(token, outputs)
    return predictions


def evaluate_predictions(cfg, dataset, predictions: dict, split: str, out: str | Path, pictures: int = 4) -> dict:
    """Devkit results JSON, map IoU, metrics.json and BEV pictures in ``out``; returns the metrics."""
    from fuller.train.evaluation import evaluate

    step = max(1, len(dataset.samples) // max(pictures, 1))
    tokens = dataset.samples[::step][:pictures] if pictures else []
    return evaluate(dataset.nusc, dataset, predictions, cfg, out, eval_set=split, picture_tokens=tokens)


def run_parity(reference: Engine, other: Engine, data_root: str | Path, split: str, out: str | Path,
               progress: bool = True, pictures: int = 2, nusc=None):
    """Both engines over the split on the same inputs: the output comparison and both evaluations.

    Returns (comparison, metric deltas in points, reference metrics, other metrics); each backend's
    results JSON, metrics and pictures go to ``out/<backend name>``.
    """
    from .parity import Comparison, metric_deltas

    comparison = Comparison(reference.score_threshold)
    dataset = open_split(reference.config, data_root, split, nusc)
    predictions = run_split([reference, other], dataset, progress,
                            on_frame=lambda token, outputs: comparison.add(*outputs))
    metrics = [evaluate_predictions(e.config, dataset, p, split, Path(out) / e.backend.name, pictures)
               for e, p in zip((reference, other), predictions)]
    return comparison, metric_deltas(*metrics), metrics[0], metrics[1]
