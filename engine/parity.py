"""Comparing two backends' outputs on the same inputs (Polygraphy's comparator idea, for this
graph's outputs): per output max/mean absolute difference and cosine similarity, and boxes matched
by centre within the same class, since near-equal scores may order the top-K differently."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Parity thresholds (issue 4): fp32 backends must agree this closely.
MAP_MAX_ABS = 1e-4
BOX_TOLERANCE_M = 1e-3
METRIC_POINTS = 0.1  # mAP / NDS / mIoU, in percentage points


@dataclass
class OutputDiff:
    max_abs: float = 0.0
    mean_abs: float = 0.0
    cosine: float = 1.0
    count: int = 0

    def add(self, ref: np.ndarray, other: np.ndarray) -> None:
        a, b = ref.astype(np.float64).ravel(), other.astype(np.float64).ravel()
        diff = np.abs(a - b)
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        cosine = float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        mean = float(diff.mean()) if diff.size else 0.0
        self.mean_abs = (self.mean_abs * self.count + mean) / (self.count + 1)
        self.cosine = min(self.cosine, cosine)
        self.count += 1


@dataclass
class BoxMatch:
    reference: int = 0  # reference boxes above the score threshold
    matched: int = 0  # of those, with a box of the same class within the tolerance
    max_distance: float = 0.0  # over reference boxes, distance to the nearest same-class box (m)
    distances: list[float] = field(default_factory=list)

    def add(self, ref: dict[str, np.ndarray], other: dict[str, np.ndarray], score_threshold: float,
            tolerance: float = BOX_TOLERANCE_M) -> None:
        keep = ref["scores"][0] >= score_threshold
        for box, label in zip(ref["boxes"][0][keep], ref["labels"][0][keep]):
            same = other["labels"][0] == label
            if not same.any():
                distance = float("inf")
            else:
                distance = float(np.linalg.norm(other["boxes"][0][same][:, :3] - box[:3], axis=1).min())
            self.reference += 1
            self.matched += distance <= tolerance
            self.max_distance = max(self.max_distance, distance)


class Comparison:
    """Accumulates the per-frame comparison of a reference backend and another one."""

    def __init__(self, score_threshold: float = 0.1) -> None:
        self.outputs: dict[str, OutputDiff] = {}
        self.boxes = BoxMatch()
        self.score_threshold = score_threshold

    def add(self, ref: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:
        for name in ref:
            if name != "labels":
                self.outputs.setdefault(name, OutputDiff()).add(ref[name], other[name])
        if "boxes" in ref:
            self.boxes.add(ref, other, self.score_threshold)

    def failures(self, map_max_abs: float = MAP_MAX_ABS, box_tolerance: float = BOX_TOLERANCE_M) -> list[str]:
        out = []
        if "map_probs" in self.outputs and self.outputs["map_probs"].max_abs > map_max_abs:
            out.append(f"map_probs: max abs diff {self.outputs['map_probs'].max_abs:.3g} > {map_max_abs:g}")
        if self.boxes.matched < self.boxes.reference:
            out.append(f"boxes: {self.boxes.reference - self.boxes.matched} of {self.boxes.reference} boxes have no "
                       f"same-class box within {box_tolerance:g} m (worst {self.boxes.max_distance:.3g} m)")
        return out


def metric_deltas(ref: dict, other: dict) -> dict[str, float]:
    """Other minus reference, in percentage points, for the metrics both have."""
    pairs = {"mAP": ("detection", "mAP"), "NDS": ("detection", "NDS"), "mIoU": ("map", "mean_iou_max")}
    out = {}
    for name, (section, key) in pairs.items():
        if section in ref and section in other:
            out[name] = 100.0 * (other[section][key] - ref[section][key])
    return out


def format_parity(comparison: Comparison, deltas: dict[str, float], ref_name: str, other_name: str,
                  frames: int) -> str:
    lines = [f"parity: {other_name} vs {ref_name} over {frames} frames", "",
             "| output | max abs diff | mean abs diff | min cosine |", "|---|---:|---:|---:|"]
    for name, d in comparison.outputs.items():
        lines.append(f"| {name} | {d.max_abs:.3g} | {d.mean_abs:.3g} | {d.cosine:.8f} |")
    b = comparison.boxes
    if b.reference:
        lines += ["", f"boxes (score >= {comparison.score_threshold:g}): {b.matched}/{b.reference} matched within "
                      f"{BOX_TOLERANCE_M:g} m, same class; worst centre distance {b.max_distance:.3g} m"]
    if deltas:
        lines += ["", "| metric | delta (points) |", "|---|---:|"]
        lines += [f"| {name} | {value:+.3f} |" for name, value in deltas.items()]
    return "\n".join(lines)
