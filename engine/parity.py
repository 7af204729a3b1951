"""Comparing two backends' outputs on the same inputs (Polygraphy's comparator idea, for this
graph's outputs): per output max/mean absolute difference and cosine similarity, and boxes matched
by centre within the same class, since near-equal scores may order the top-K differently."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Parity thresholds: fp32 backends must agree this closely.
MAP_MAX_ABS = 1e-4
BOX_TOLERANCE_M = 1e-3
METRIC_POINTS = 0.1  # mAP / NDS / mIoU, in percentage points
SCORE_TIE = 1e-5  # scores this close to the top-K cut may be kept by either backend


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
    """Every reference box above the score threshold must have a box of the same class within the
    tolerance in the other output. Boxes tied with the other side's last kept score are exempt
    (counted in ``tied``): top-K may keep either of two boxes whose scores agree to rounding."""

    distances: list[float] = field(default_factory=list)  # per checked box: nearest same-class box (m)
    tied: int = 0  # reference boxes at the other side's top-K cut, not checked

    def add(self, ref: dict[str, np.ndarray], other: dict[str, np.ndarray], score_threshold: float,
            score_tie: float) -> None:
        cut = float(other["scores"][0].min(initial=np.inf))
        keep = ref["scores"][0] >= score_threshold
        tied = keep & (ref["scores"][0] <= cut + score_tie)
        self.tied += int(tied.sum())
        for box, label in zip(ref["boxes"][0][keep & ~tied], ref["labels"][0][keep & ~tied]):
            same = other["labels"][0] == label
            self.distances.append(float(np.linalg.norm(other["boxes"][0][same][:, :3] - box[:3], axis=1).min())
                                  if same.any() else float("inf"))

    @property
    def reference(self) -> int:
        return len(self.distances)

    def matched(self, tolerance: float) -> int:
        return int(np.sum(np.asarray(self.distances) <= tolerance))

    @property
    def max_distance(self) -> float:
        return max(self.distances, default=0.0)

    def record(self, tolerance: float) -> dict:
        return {"checked": self.reference, "matched": self.matched(tolerance), "tolerance_m": tolerance,
                "tied_at_cut": self.tied, "max_distance_m": self.max_distance}


class Comparison:
    """Accumulates the per-frame comparison of a reference backend and another one."""

    def __init__(self, score_threshold: float = 0.1, score_tie: float = SCORE_TIE) -> None:
        self.outputs: dict[str, OutputDiff] = {}
        self.boxes = BoxMatch()
        self.score_threshold, self.score_tie = score_threshold, score_tie

    def add(self, ref: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:
        for name in ref:
            if name not in ("boxes", "labels"):  # ranked lists: compared by matching below
                self.outputs.setdefault(name, OutputDiff()).add(ref[name], other[name])
        if "boxes" in ref:
            self.boxes.add(ref, other, self.score_threshold, self.score_tie)

    def failures(self, map_max_abs: float = MAP_MAX_ABS, box_tolerance: float = BOX_TOLERANCE_M) -> list[str]:
        out = []
        if "map_probs" in self.outputs and self.outputs["map_probs"].max_abs > map_max_abs:
            out.append(f"map_probs: max abs diff {self.outputs['map_probs'].max_abs:.3g} > {map_max_abs:g}")
        b = self.boxes
        if b.matched(box_tolerance) < b.reference:
            out.append(f"boxes: {b.reference - b.matched(box_tolerance)} of {b.reference} boxes have no same-class "
                       f"box within {box_tolerance:g} m (worst {b.max_distance:.3g} m)")
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
                  frames: int, box_tolerance: float = BOX_TOLERANCE_M) -> str:
    lines = [f"parity: {other_name} vs {ref_name} over {frames} frames", "",
             "| output | max abs diff | mean abs diff | min cosine |", "|---|---:|---:|---:|"]
    for name, d in comparison.outputs.items():
        lines.append(f"| {name} | {d.max_abs:.3g} | {d.mean_abs:.3g} | {d.cosine:.8f} |")
    b = comparison.boxes
    if b.reference:
        lines += ["", f"boxes (score >= {comparison.score_threshold:g}): {b.matched(box_tolerance)}/{b.reference} "
                      f"matched within {box_tolerance:g} m, same class; worst centre distance {b.max_distance:.3g} m; "
                      f"{b.tied} tied at the top-K cut, not checked"]
    if deltas:
        lines += ["", "| metric | delta (points) |", "|---|---:|"]
        lines += [f"| {name} | {value:+.3f} |" for name, value in deltas.items()]
    return "\n".join(lines)
