"""Predictions in the LiDAR frame -> the nuScenes results format the devkit scores.

The network predicts in the sample's (possibly augmented) LiDAR frame; the devkit scores boxes in
the global frame, with quaternion rotations, 2-D velocities and one attribute per box. Conversion
undoes `sample.lidar_aug`, then applies `lidar2ego` and `ego2global`: the same chain the dataset
used to bring the annotations into the LiDAR frame, so ground truth converts back exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
from pyquaternion import Quaternion

from fuller.errors import UserInputError

if TYPE_CHECKING:
    from fuller.data import Sample

# The devkit's cap on boxes per sample (DetectionConfig.max_boxes_per_sample for the official config).
MAX_BOXES_PER_SAMPLE = 500
# Above this speed (m/s) a box counts as moving when its attribute is guessed (as mmdet3d does).
MOVING_SPEED = 0.2
VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")
CYCLES = ("bicycle", "motorcycle")
# mmdet3d's DefaultAttribute: what a box of each class most often is when nothing better is known.
DEFAULT_ATTRIBUTE = {"car": "vehicle.parked", "truck": "vehicle.parked", "construction_vehicle": "vehicle.parked",
                     "trailer": "vehicle.parked", "bus": "vehicle.moving", "bicycle": "cycle.without_rider",
                     "motorcycle": "cycle.without_rider", "pedestrian": "pedestrian.moving", "barrier": "",
                     "traffic_cone": ""}
META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")


class EvaluationError(UserInputError, ValueError):
    """Input the evaluation cannot use; the message names the argument, what was expected and got."""


@dataclass
class Prediction:
    """One sample's network output, in the sample's (augmented) LiDAR frame."""

    boxes: np.ndarray  # (K, 9) x, y, z, w, l, h, yaw, vx, vy
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,) int, index into cfg.geometry.classes
    map_probs: np.ndarray | None = None  # (C, Xm, Ym) probabilities on cfg.geometry.map_grid, or None

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, np.ndarray], index: int = 0) -> "Prediction":
        """Sample ``index`` of a batch of network outputs as NumPy (``boxes``, ``scores``, ``labels``,
        ``map_probs``: the model's and the exported graph's names); no boxes without a detection head."""
        if "boxes" in outputs:
            boxes, scores = outputs["boxes"][index], outputs["scores"][index]
            labels = np.asarray(outputs["labels"][index]).astype(np.int64)
        else:
            boxes, scores, labels = np.zeros((0, 9), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        return cls(boxes, scores, labels, outputs["map_probs"][index] if "map_probs" in outputs else None)


def check_prediction(pred: Prediction, num_classes: int, name: str = "pred") -> None:
    """Shapes, finiteness and label range, so a bad prediction fails here and not deep in the devkit."""
    boxes, scores, labels = (np.asarray(a) for a in (pred.boxes, pred.scores, pred.labels))
    if boxes.ndim != 2 or boxes.shape[1] != 9:
        raise EvaluationError(f"{name}.boxes: expected shape (K, 9), got {boxes.shape}")
    k = len(boxes)
    if scores.shape != (k,) or labels.shape != (k,):
        raise EvaluationError(f"{name}.scores / {name}.labels: expected shape ({k},) each, "
                              f"got {scores.shape} and {labels.shape}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise EvaluationError(f"{name}.boxes / {name}.scores: expected finite values, got NaN or inf")
    if k and not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationError(f"{name}.labels: expected integers, got dtype {labels.dtype}")
    if k and (labels.min() < 0 or labels.max() >= num_classes):
        raise EvaluationError(f"{name}.labels: expected values in [0, {num_classes}), "
                              f"got [{labels.min()}, {labels.max()}]")
    if k and (boxes[:, 3:6] <= 0).any():
        raise EvaluationError(f"{name}.boxes: expected positive sizes w, l, h, got min {boxes[:, 3:6].min():g}")


def _undo_augmentation(lidar_aug: np.ndarray) -> tuple[np.ndarray, float]:
    """The inverse of `lidar_aug` and the inverse's scale factor. Augmentations are similarities (rotation about z,
    uniform scale, flips, translation): anything else would distort boxes and is refused."""
    inverse = np.linalg.inv(np.asarray(lidar_aug, dtype=np.float64))
    a = inverse[:3, :3]
    scale = float(np.abs(np.linalg.det(a)) ** (1.0 / 3.0))
    similar = np.allclose(a.T @ a, scale**2 * np.eye(3), atol=1e-6 * max(scale**2, 1.0))
    if not similar or not (np.allclose(a[2, :2], 0.0, atol=1e-6) and np.allclose(a[:2, 2], 0.0, atol=1e-6)):
        raise EvaluationError(f"sample.lidar_aug: expected a similarity keeping the z axis vertical, got\n{lidar_aug}")
    return inverse, scale


def attribute_names(names: Sequence[str], speeds: np.ndarray) -> list[str]:
    """mmdet3d's attribute guess: the class default, with moving/parked vehicles, ridden/unridden
    cycles, moving/standing pedestrians and moving/stopped buses told apart by speed."""
    out = []
    for name, speed in zip(names, speeds):
        if speed > MOVING_SPEED:
            attr = ("vehicle.moving" if name in VEHICLES else "cycle.with_rider" if name in CYCLES
                    else DEFAULT_ATTRIBUTE[name])
        else:
            attr = ("pedestrian.standing" if name == "pedestrian" else "vehicle.stopped" if name == "bus"
                    else DEFAULT_ATTRIBUTE[name])
        out.append(attr)
    return out


def to_devkit_boxes(sample: "Sample", pred: Prediction, classes: Sequence[str], score_threshold: float = 0.0,
                    max_boxes: int = MAX_BOXES_PER_SAMPLE) -> list[dict]:
    """The sample's predicted boxes as devkit result dicts in the global frame, best score first,
    at most `max_boxes` of them with score >= `score_threshold`, all numbers Python floats."""
    check_prediction(pred, len(classes))
    if not 1 <= max_boxes <= MAX_BOXES_PER_SAMPLE:
        raise EvaluationError(f"max_boxes: expected 1..{MAX_BOXES_PER_SAMPLE}, got {max_boxes}")
    boxes = np.asarray(pred.boxes, dtype=np.float64)
    scores = np.asarray(pred.scores, dtype=np.float64)
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_boxes]
    boxes, scores, labels = boxes[keep], scores[keep], np.asarray(pred.labels)[keep]
    if not len(boxes):
        return []

    inverse, scale = _undo_augmentation(sample.lidar_aug)
    lidar2global = np.asarray(sample.ego2global, dtype=np.float64) @ np.asarray(sample.lidar2ego, dtype=np.float64)
    to_global = lidar2global @ inverse  # augmented LiDAR frame -> global
    centres = boxes[:, :3] @ to_global[:3, :3].T + to_global[:3, 3]
    sizes = boxes[:, 3:6] * scale
    zeros = np.zeros(len(boxes))
    velocity = np.stack([boxes[:, 7], boxes[:, 8], zeros], 1) @ to_global[:3, :3].T
    # Heading in the original LiDAR frame, then composed with the LiDAR's pose as a quaternion.
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), zeros], 1) @ inverse[:3, :3].T
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    pose = Quaternion(matrix=lidar2global[:3, :3], rtol=1e-6, atol=1e-6).normalised
    rotations = _compose_with_yaw(np.asarray(pose.elements), yaw)

    names = [classes[int(i)] for i in labels]
    attrs = attribute_names(names, np.hypot(velocity[:, 0], velocity[:, 1]))
    return [{"sample_token": sample.token, "translation": c.tolist(), "size": s.tolist(), "rotation": q.tolist(),
             "velocity": v[:2].tolist(), "detection_name": n, "detection_score": float(p), "attribute_name": a}
            for c, s, q, v, n, p, a in zip(centres, sizes, rotations, velocity, names, scores, attrs)]


def _compose_with_yaw(q: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(K, 4) Hamilton products q * q_z(yaw), (w, x, y, z): a rotation by yaw about the LiDAR z axis
    seen from the frame whose orientation is q."""
    c, s = np.cos(yaw / 2), np.sin(yaw / 2)
    w, x, y, z = q
    return np.stack([w * c - z * s, x * c + y * s, y * c - x * s, z * c + w * s], 1)


def modality_meta(modality: Mapping[str, bool]) -> dict[str, bool]:
    """The devkit's "meta" block: the given flags ("use_camera" or just "camera", ...), everything
    not given False."""
    flags = {key if key.startswith("use_") else f"use_{key}": bool(value) for key, value in modality.items()}
    unknown = sorted(set(flags) - set(META_KEYS))
    if unknown:
        raise EvaluationError(f"modality: expected keys among {list(META_KEYS)} (or without 'use_'), "
                              f"got unknown {unknown}")
    return {key: flags.get(key, False) for key in META_KEYS}


def write_results_json(path: str | Path, boxes_by_token: Mapping[str, list[dict]], sample_tokens: Iterable[str],
                       modality: Mapping[str, bool]) -> Path:
    """Write a devkit results file holding every token of `sample_tokens` (no boxes: an empty list).

    The devkit refuses a file whose samples differ from the split's, so tokens outside
    `sample_tokens` are an error here, where the message can say which.
    """
    tokens = list(sample_tokens)
    extra = set(boxes_by_token) - set(tokens)
    if extra:
        raise EvaluationError(f"boxes_by_token: expected tokens of the split only, got {len(extra)} others "
                              f"(e.g. {sorted(extra)[0]})")
    results = {}
    for token in tokens:
        boxes = list(boxes_by_token.get(token, []))
        if len(boxes) > MAX_BOXES_PER_SAMPLE:
            raise EvaluationError(f"boxes_by_token[{token!r}]: expected at most {MAX_BOXES_PER_SAMPLE} boxes, "
                                  f"got {len(boxes)}")
        results[token] = boxes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": modality_meta(modality), "results": results}, allow_nan=False))
    return path
