"""The map a model without sensors can draw, the floor that a sensor's map is measured from.

For each map cell (LiDAR frame) and class, the class's frequency there over the training split:
the prediction of an input-blind model that minimises each cell's expected cross-entropy. Scored
on held-out sets exactly as a model's probabilities are (`MapIoU`, BEVFusion's thresholds). In a
town whose layout repeats (roads on a grid, the recording car on an arterial) it is far from
zero, so what a sensor-only model shows about that sensor is its margin over this floor.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from fuller.data import NuScenesDataset
from fuller.evaluation.map_metrics import MapIoU


def split_masks(dataset: NuScenesDataset, progress: bool = False) -> Iterable[np.ndarray]:
    """Each sample's (C, X, Y) boolean map masks, from the sample as recorded (the image transforms
    do not move the LiDAR frame the masks are drawn in)."""
    for token in tqdm(dataset.samples, desc=f"map masks ({dataset.split})", unit="sample", disable=not progress):
        yield dataset.map_masks(dataset.load(token))


def class_frequency(masks: Iterable[np.ndarray]) -> np.ndarray:
    """(C, X, Y) float64: per cell, the share of the masks in which each class is present."""
    total, n = None, 0
    for mask in masks:
        total = mask.astype(np.float64) if total is None else total + mask
        n += 1
    if not n:
        raise ValueError("masks: expected at least one sample, got none")
    return total / n


def score_prior(prior: np.ndarray, masks: Iterable[np.ndarray], classes: Sequence[str]) -> dict:
    """`MapIoU.compute()` of the same prior predicted for every sample of ``masks``."""
    iou = MapIoU(classes)
    for mask in masks:
        iou.update(prior, mask)
    return iou.compute()
