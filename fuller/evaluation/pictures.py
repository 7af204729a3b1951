"""Ground truth beside prediction, in bird's-eye view, for looking at what the metrics summarise.

Both panels use fuller.viz.draw_bev (same axes, colours and legend as the dataset pictures), with
the LiDAR points drawn in grey underneath so the boxes and map colours stand out.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fuller.config import BEVGrid  # noqa: E402
from fuller.viz import draw_bev, save_figure  # noqa: E402

from .results import EvaluationError, Prediction, check_prediction  # noqa: E402

if TYPE_CHECKING:
    from fuller.data import Sample

MAP_THRESHOLD = 0.5
MAX_POINTS_DRAWN = 40000


def _grey_points(ax, points: np.ndarray) -> None:
    if len(points):
        p = points[:: max(1, len(points) // MAX_POINTS_DRAWN)]
        ax.scatter(p[:, 0], p[:, 1], s=0.3, c="0.6", linewidths=0, zorder=1)


def draw_prediction(sample: "Sample", pred: Prediction, classes: Sequence[str], map_classes: Sequence[str],
                    out_png: str | Path, map_grid: BEVGrid, score_threshold: float = 0.3,
                    title: str | None = None) -> Path:
    """Left: ground-truth boxes and map; right: predicted boxes with score >= `score_threshold`
    and the predicted map at probability >= 0.5. Both in the sample's LiDAR frame over `map_grid`."""
    check_prediction(pred, len(classes))
    probs = pred.map_probs
    if probs is not None and np.shape(probs) != (len(map_classes), *map_grid.shape):
        raise EvaluationError(f"pred.map_probs: expected shape {(len(map_classes), *map_grid.shape)}, "
                              f"got {np.shape(probs)}")
    extent = [*map_grid.x_range, *map_grid.y_range]
    view = max(abs(v) for v in (*map_grid.x_range, *map_grid.y_range))
    keep = np.asarray(pred.scores) >= score_threshold
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 8.5), dpi=100)
    for ax in (left, right):
        _grey_points(ax, sample.points)
    draw_bev(left, None, sample.gt_boxes, sample.gt_labels, classes, sample.map_masks, map_classes, extent, view)
    draw_bev(right, None, np.asarray(pred.boxes)[keep], np.asarray(pred.labels)[keep], classes,
             None if probs is None else np.asarray(probs) >= MAP_THRESHOLD, map_classes, extent, view)
    left.set_title(f"ground truth: {len(sample.gt_boxes)} boxes", fontsize=10)
    right.set_title(f"prediction: {int(keep.sum())} boxes with score >= {score_threshold:g}"
                    + ("" if probs is None else f", map at p >= {MAP_THRESHOLD:g}"), fontsize=10)
    fig.suptitle(title or f"sample {sample.token}", fontsize=11)
    return save_figure(fig, out_png)
