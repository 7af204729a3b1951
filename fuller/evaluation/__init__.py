"""Evaluation: the official nuScenes detection score, BEV map IoU, metrics.json and pictures.

Torch-free, so training (`fuller eval`, the ablation) and the runtime's offline tools (`fuller
infer`, `fuller parity`) score with the same code: `evaluate_split` is the one call both make after
predicting a split. `evaluate` underneath converts the boxes to the
devkit's results format, runs the devkit, accumulates the map IoU against the dataset's own map
masks, writes everything under `out_dir` and returns what it wrote to metrics.json.

out_dir/
  results_nusc.json        devkit results (global frame), every sample of the split
  detection/               the devkit's metrics_summary.json and metrics_details.json
  metrics.json             detection and map sections plus run facts (strict JSON)
  pictures/<token>.png     ground truth beside prediction, for the tokens asked for
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from .detection import run_detection_eval, split_sample_tokens
from .map_metrics import BEVFUSION_THRESHOLDS, MapIoU
from .pictures import draw_prediction
from .report import format_table, metrics_record, write_metrics
from .results import (EvaluationError, Prediction, attribute_names, check_prediction, modality_meta,
                      to_devkit_boxes, write_results_json)

if TYPE_CHECKING:
    from nuscenes import NuScenes

    from fuller.config import FullerConfig
    from fuller.data import NuScenesDataset

__all__ = ["BEVFUSION_THRESHOLDS", "EvaluationError", "MapIoU", "Prediction", "attribute_names", "check_prediction",
           "draw_prediction", "evaluate", "evaluate_split", "format_table", "metrics_record", "modality_meta", "run_detection_eval",
           "split_sample_tokens", "to_devkit_boxes", "write_metrics", "write_results_json"]

RESULTS_FILE = "results_nusc.json"


def _check_predictions(tokens: list[str], predictions: Mapping[str, Prediction], picture_tokens: set[str]) -> None:
    known = set(tokens)
    for name, wanted in (("predictions", set(predictions)), ("picture_tokens", picture_tokens)):
        unknown = wanted - known
        if unknown:
            raise EvaluationError(f"{name}: expected sample tokens of the dataset, got {len(unknown)} others "
                                  f"(e.g. {sorted(unknown)[0]})")
    missing = known - set(predictions)
    if missing:
        raise EvaluationError(f"predictions: expected one per dataset sample ({len(known)}), "
                              f"got {len(predictions)}, {len(missing)} missing (e.g. {sorted(missing)[0]})")
    with_map = sum(p.map_probs is not None for p in predictions.values())
    if 0 < with_map < len(predictions):
        raise EvaluationError(f"predictions: expected map_probs on all samples or none, got {with_map} of "
                              f"{len(predictions)}")


def evaluate(nusc: "NuScenes", dataset: "NuScenesDataset", predictions: Mapping[str, Prediction],
             cfg: "FullerConfig", out_dir: str | Path, eval_set: str, modality: Mapping[str, bool] | None = None,
             picture_tokens: Iterable[str] = ()) -> dict:
    """Score `predictions` (one per `dataset` sample, keyed by sample token) and write the results.

    Detection is scored when the model has the "det" task or any prediction holds boxes; the map
    when predictions carry `map_probs`. `modality` is the devkit meta's sensor flags (default: from
    cfg.model.modalities). `dataset` must cover exactly the samples of `eval_set` and apply the
    transforms the predictions were made with: each sample is re-read from it for its poses,
    `lidar_aug` and map masks. Returns the content of metrics.json.
    """
    out_dir = Path(out_dir)
    g = cfg.geometry
    tokens = list(dataset.samples)
    pictures = set(picture_tokens)
    _check_predictions(tokens, predictions, pictures)
    if modality is None:
        modality = {"use_camera": "camera" in cfg.model.modalities, "use_lidar": "lidar" in cfg.model.modalities}
    meta = modality_meta(modality)
    score_boxes = "det" in cfg.model.tasks or any(len(p.boxes) for p in predictions.values())
    score_map = bool(predictions) and all(p.map_probs is not None for p in predictions.values())

    meter = MapIoU(g.map_classes) if score_map else None
    boxes_by_token = {}
    if score_boxes or score_map or pictures:
        for index, token in enumerate(tokens):
            sample, pred = dataset[index], predictions[token]
            if score_boxes:
                boxes_by_token[token] = to_devkit_boxes(sample, pred, g.classes)
            if meter is not None:
                if np.shape(pred.map_probs) != sample.map_masks.shape:
                    raise EvaluationError(f"predictions[{token!r}].map_probs: expected shape {sample.map_masks.shape} "
                                          f"(map classes x map grid), got {np.shape(pred.map_probs)}")
                meter.update(pred.map_probs, sample.map_masks)
            if token in pictures:
                draw_prediction(sample, pred, g.classes, g.map_classes, out_dir / "pictures" / f"{token}.png",
                                g.map_grid, title=f"{eval_set} · sample {index} · {token}")

    detection = None
    if score_boxes:
        results = write_results_json(out_dir / RESULTS_FILE, boxes_by_token, tokens, meta)
        detection = run_detection_eval(nusc, results, eval_set, out_dir / "detection")
    map_metrics = meter.compute() if meter is not None else None
    extra = {"eval_set": eval_set, "config": cfg.name, "num_samples": len(tokens), "modality": meta}
    write_metrics(out_dir, detection, map_metrics, extra)
    return metrics_record(detection, map_metrics, extra)


def evaluate_split(dataset: "NuScenesDataset", predictions: Mapping[str, Prediction], cfg: "FullerConfig",
                   out_dir: str | Path, pictures: int = 4) -> dict:
    """`evaluate` on the dataset's whole split, with ``pictures`` BEV pictures spread evenly over it."""
    step = max(1, len(dataset.samples) // max(pictures, 1))
    tokens = dataset.samples[::step][:pictures] if pictures > 0 else []
    return evaluate(dataset.nusc, dataset, predictions, cfg, out_dir, eval_set=dataset.split, picture_tokens=tokens)
