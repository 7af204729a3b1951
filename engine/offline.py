"""The engine over a nuScenes split, offline: `fuller infer`, `fuller parity` and the demo.

Samples are read raw (original images, calibration, points) with the core's torch-free reader and
go through the engine's own preprocessing, exactly as on a vehicle; predictions are scored with the
core's evaluation, the same code `fuller eval` uses.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from fuller.data import NuScenesDataset, Sample
from fuller.evaluation import Prediction, evaluate_split

from .engine import Engine
from .frame import Calibration
from .parity import BoxTolerance, Comparison, format_parity, metric_deltas


def frames(dataset: NuScenesDataset, progress: bool = True, desc: str = "infer",
           tokens: list[str] | None = None) -> Iterator[tuple[str, Calibration, Sample]]:
    """(token, calibration, raw sample) for each sample of the split (or each of ``tokens``), in order."""
    for token in tqdm(dataset.samples if tokens is None else tokens, desc=desc, unit="frame", disable=not progress,
                      dynamic_ncols=True):
        sample = dataset.load(token)
        yield token, Calibration(sample.intrinsics, sample.camera2lidar, tuple(sample.images.shape[1:3])), sample


def run_split(engines: list[Engine], dataset: NuScenesDataset, progress: bool = True,
              on_frame: Callable[[str, list[dict]], None] | None = None) -> list[dict[str, Prediction]]:
    """Predictions per engine, keyed by token. All engines get the inputs the first one prepared,
    so a comparison sees the networks and not two preprocessing runs."""
    predictions: list[dict[str, Prediction]] = [{} for _ in engines]
    lead = engines[0]
    for token, calibration, sample in frames(dataset, progress):
        for engine in engines:
            engine.update_calibration(calibration)
        feeds = lead.feeds(sample.images, sample.points)
        outputs = [engine.run(feeds) for engine in engines]
        for store, out in zip(predictions, outputs):
            store[token] = Prediction.from_outputs(out)
        if on_frame is not None:
            on_frame(token, outputs)
    return predictions


def infer_split(engine: Engine, data_root: str | Path, split: str, out: str | Path, pictures: int = 4,
                progress: bool = True, nusc=None) -> dict:
    """The engine over a split, scored: results JSON, metrics.json and pictures in ``out``; returns the metrics."""
    dataset = NuScenesDataset(engine.config, data_root, split, nusc=nusc)
    predictions = run_split([engine], dataset, progress)[0]
    return evaluate_split(dataset, predictions, engine.config, out, pictures)


@dataclass
class ParityReport:
    comparison: Comparison
    deltas: dict[str, float]  # other minus reference, in points
    metrics: tuple[dict, dict]  # reference's, other's
    frames: int
    failures: list[str]  # the thresholds exceeded; empty when parity holds
    table: str


def run_parity(reference: Engine, other: Engine, data_root: str | Path, split: str, out: str | Path,
               map_max_abs: float, box_tolerance: BoxTolerance, metric_points: float, progress: bool = True,
               pictures: int = 2, nusc=None, *, metric_reference: Engine | None = None, gate_boxes: bool = True,
               mean_abs: dict[str, float] | None = None) -> ParityReport:
    """Both engines over the split on the same inputs: the output comparison, both evaluations (each
    backend's results JSON, metrics and pictures in ``out/<backend name>``) and the thresholds'
    verdict, also written to ``out/parity.json``. ``box_tolerance`` bounds each matched box's
    centre, size, yaw, velocity and score errors (``gate_boxes`` False: reported, not failed;
    ``mean_abs`` bounds outputs' mean errors). The metric deltas are ``other`` minus
    ``metric_reference`` when one is given (an INT8 graph against its float graph; it runs on
    the same inputs too), else minus ``reference``."""
    comparison = Comparison(reference.score_threshold)
    dataset = NuScenesDataset(reference.config, data_root, split, nusc=nusc)
    engines = [reference, other] + ([metric_reference] if metric_reference is not None else [])
    predictions = run_split(engines, dataset, progress, on_frame=lambda token, outputs: comparison.add(*outputs[:2]))
    metrics = tuple(evaluate_split(dataset, p, e.config, Path(out) / e.backend.name, pictures)
                    for e, p in zip(engines, predictions))
    deltas = metric_deltas(metrics[-1] if metric_reference is not None else metrics[0], metrics[1])
    failures = comparison.failures(map_max_abs, box_tolerance, gate_boxes, mean_abs)
    failures += [f"{name}: delta {value:+.3f} points exceeds {metric_points:g}"
                 for name, value in deltas.items() if abs(value) > metric_points]
    frames = len(dataset.samples)
    metric_ref_name = metric_reference.backend.name if metric_reference is not None else None
    table = format_parity(comparison, deltas, reference.backend.name, other.backend.name, frames, box_tolerance,
                          metric_ref_name)
    record = {"frames": frames, "outputs": {k: vars(v) for k, v in comparison.outputs.items()},
              "boxes": comparison.boxes.record(box_tolerance), "boxes_gated": gate_boxes,
              "metric_deltas_points": deltas, "metric_reference": metric_ref_name or reference.backend.name,
              "failures": failures}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "parity.json").write_text(json.dumps(record, indent=2))
    return ParityReport(comparison, deltas, metrics[:2], frames, failures, table)
