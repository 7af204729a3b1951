"""Pictures people would rather look at than read: a BEV view beside the six cameras.

Takes plain arrays (no torch, no devkit), so training, evaluation and the runtime draw the same
way. The BEV panel is in the LiDAR frame with x to the right and y up the page (forward).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .geometry import EDGES, box_corners, project  # noqa: E402

MAP_COLOURS = {"drivable_area": "#a6cee3", "ped_crossing": "#fb9a99", "walkway": "#e31a1c",
               "stop_line": "#fdbf6f", "carpark_area": "#ff7f00", "divider": "#6a3d9a"}
CLASS_COLOURS = plt.get_cmap("tab10")


def draw_bev(ax, points: np.ndarray | None, boxes: np.ndarray, labels: np.ndarray, classes: Sequence[str],
             map_masks: np.ndarray | None, map_classes: Sequence[str], map_extent: Sequence[float],
             view_range: float, boxes_style: str = "-") -> None:
    """Map layers (C, X, Y) as colour, points by height, boxes (M, >=7) as footprints with heading."""
    ax.set_facecolor("white")
    if map_masks is not None:
        for mask, name in zip(map_masks, map_classes):
            rgba = np.zeros((*mask.T.shape, 4))
            rgba[mask.T] = matplotlib.colors.to_rgba(MAP_COLOURS.get(name, "#999999"), 0.55)
            ax.imshow(rgba, origin="lower", extent=map_extent, interpolation="nearest")
    if points is not None and len(points):
        step = max(1, len(points) // 40000)
        p = points[::step]
        ax.scatter(p[:, 0], p[:, 1], s=0.3, c=np.clip(p[:, 2], -2.5, 1.5), cmap="viridis", linewidths=0)
    for box, label in zip(box_corners(boxes) if len(boxes) else [], labels):
        colour = CLASS_COLOURS(int(label) % 10)
        foot = box[[0, 1, 5, 4, 0], :2]
        ax.plot(foot[:, 0], foot[:, 1], boxes_style, color=colour, lw=1.2)
        front = box[[0, 1], :2].mean(0)
        centre = box[:, :2].mean(0)
        ax.plot([centre[0], front[0]], [centre[1], front[1]], boxes_style, color=colour, lw=1.2)
    ax.plot([0], [0], marker="^", color="black", ms=6)
    ax.set_xlim(-view_range, view_range)
    ax.set_ylim(-view_range, view_range)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, LiDAR frame)")
    ax.set_ylabel("y (m, forward)")
    handles = [matplotlib.patches.Patch(color=MAP_COLOURS.get(n, "#999999"), label=n) for n in map_classes]
    handles += [matplotlib.lines.Line2D([], [], color=CLASS_COLOURS(i), label=c) for i, c in enumerate(classes)]
    ax.legend(handles=handles, loc="upper left", fontsize=6, ncol=2, framealpha=0.8)


def draw_camera(ax, image: np.ndarray, lidar2image: np.ndarray, img_aug: np.ndarray, boxes: np.ndarray,
                labels: np.ndarray, title: str) -> None:
    """An image with the boxes' wireframes projected (see fuller.geometry.project)."""
    ax.imshow(image)
    h, w = image.shape[:2]
    for corners, label in zip(box_corners(boxes) if len(boxes) else [], labels):
        uv, depth = project(corners, lidar2image, img_aug)
        if np.any(depth < 0.5):
            continue  # wholly or partly behind the camera
        if uv[:, 0].max() < 0 or uv[:, 0].min() >= w or uv[:, 1].max() < 0 or uv[:, 1].min() >= h:
            continue
        for a, b in EDGES:
            ax.plot(uv[[a, b], 0], uv[[a, b], 1], color=CLASS_COLOURS(int(label) % 10), lw=0.8)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def sample_figure(out: str | Path, *, images, cameras, lidar2image, img_aug, points, boxes, labels, classes,
                  map_masks, map_classes, map_extent, view_range: float, title: str) -> Path:
    """BEV panel on the left, the cameras in a 2 x 3 grid on the right; written as PNG."""
    fig = plt.figure(figsize=(18, 7.5), dpi=110)
    grid = fig.add_gridspec(2, 5, width_ratios=[2.2, 0.05, 1, 1, 1])
    draw_bev(fig.add_subplot(grid[:, 0]), points, boxes, labels, classes, map_masks, map_classes, map_extent,
             view_range)
    for i, (image, cam) in enumerate(zip(images, cameras)):
        draw_camera(fig.add_subplot(grid[i // 3, 2 + i % 3]), image, lidar2image[i], img_aug[i], boxes, labels,
                    cam)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the path."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
