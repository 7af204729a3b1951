"""BEV map segmentation IoU, BEVFusion's protocol.

Each class is thresholded at several probabilities; true/false positives and false negatives are
summed over the whole dataset and the IoU is taken from those sums (not averaged per sample, so
a sample with a few pixels of a class weighs as little as its pixels). BEVFusion reports, per
class, the best IoU over the thresholds; the IoU at the fixed threshold 0.5 is reported beside it
because it is what a deployed model, with one threshold, achieves.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .results import EvaluationError

BEVFUSION_THRESHOLDS = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65)
FIXED_THRESHOLD = 0.5


class MapIoU:
    """Dataset-level IoU accumulator: `update` per batch, `compute` once at the end.

    A pixel is predicted positive at threshold t when its probability is >= t. Counting works on
    histograms: each pixel falls in the bin of the number of thresholds it reaches, so one
    `bincount` per update gives the counts at every threshold at once.
    """

    def __init__(self, classes: Sequence[str], thresholds: Sequence[float] = BEVFUSION_THRESHOLDS) -> None:
        if not len(classes):
            raise EvaluationError("classes: expected at least one map class, got none")
        t = np.asarray(thresholds, dtype=np.float64)
        if t.ndim != 1 or not len(t) or np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] >= 1:
            raise EvaluationError(f"thresholds: expected strictly increasing values in (0, 1), got {list(thresholds)}")
        self.classes = list(classes)
        self.thresholds = [float(v) for v in t]
        # The fixed threshold is counted alongside, whether or not it is one of the reported ones.
        self._levels = np.union1d(t, [FIXED_THRESHOLD])
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated (start a new evaluation)."""
        # Per class, per level: [pixels not in the ground truth, pixels in it] by bin.
        self._hist = np.zeros((len(self.classes), 2, len(self._levels) + 1), dtype=np.int64)

    def update(self, probs: np.ndarray, gt: np.ndarray) -> None:
        """Add a sample (C, X, Y) or a batch (B, C, X, Y) of probabilities and boolean ground truth."""
        probs, gt = np.asarray(probs), np.asarray(gt)
        c = len(self.classes)
        if probs.ndim == 3:
            probs = probs[None]
            gt = gt[None] if gt.ndim == 3 else gt
        if probs.ndim != 4 or probs.shape[1] != c:
            raise EvaluationError(f"probs: expected shape (C, X, Y) or (B, C, X, Y) with C = {c}, got {probs.shape}")
        if gt.shape != probs.shape:
            raise EvaluationError(f"gt: expected the shape of probs {probs.shape}, got {gt.shape}")
        if gt.dtype != bool:
            raise EvaluationError(f"gt: expected a boolean mask, got dtype {gt.dtype}")
        if np.isnan(probs).any():
            raise EvaluationError("probs: expected probabilities, got NaN")
        # bin = number of levels <= p (compared in float64), so "positive at level k" is "bin > k".
        bins = np.searchsorted(self._levels, probs.astype(np.float64, copy=False), side="right")
        n = len(self._levels) + 1
        key = (np.arange(c)[None, :, None, None] * 2 + gt) * n + bins
        self._hist += np.bincount(key.ravel(), minlength=c * 2 * n).reshape(c, 2, n)

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tp, fp, fn), each (C, L) int64 over the levels (the thresholds plus 0.5, sorted)."""
        above = np.cumsum(self._hist[..., ::-1], axis=-1)[..., ::-1]  # above[..., j] = pixels in bins >= j
        positive = above[..., 1:]  # predicted positive at level k: bin > k
        tp, fp = positive[:, 1], positive[:, 0]
        fn = self._hist[:, 1].sum(-1, keepdims=True) - tp
        return tp, fp, fn

    def compute(self) -> dict:
        """Per class: IoU at each threshold, the best over them (BEVFusion), the IoU at 0.5 and
        the ground-truth pixel count; and the means over classes of the best and the 0.5 IoU.

        An IoU with an empty union (the class neither present nor predicted) is None, and means
        skip it: a class absent from the data says nothing about the model.
        """
        tp, fp, fn = self.counts()
        union = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        reported = np.searchsorted(self._levels, self.thresholds)
        fixed = int(np.searchsorted(self._levels, FIXED_THRESHOLD))
        by_threshold = iou[:, reported]
        defined = ~np.isnan(by_threshold)
        best = np.where(defined.any(1), np.max(np.where(defined, by_threshold, -np.inf), axis=1), np.nan)
        at_fixed = iou[:, fixed]

        def value(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        def mean(values: np.ndarray) -> float | None:
            values = values[~np.isnan(values)]
            return float(values.mean()) if len(values) else None

        return {
            "thresholds": list(self.thresholds),
            "iou": {name: [value(v) for v in row] for name, row in zip(self.classes, by_threshold)},
            "iou_max": {name: value(v) for name, v in zip(self.classes, best)},
            "iou_at_0.5": {name: value(v) for name, v in zip(self.classes, at_fixed)},
            "gt_pixels": {name: int(n) for name, n in zip(self.classes, self._hist[:, 1].sum(-1))},
            "mean_iou_max": mean(best),
            "mean_iou_at_0.5": mean(at_fixed),
        }
