"""Comparing two backends' outputs on the same inputs (Polygraphy's comparator idea, for this
graph's outputs): per output max/mean absolute difference and cosine similarity, and boxes matched
within the same class by nearest centre, since near-equal scores may order the top-K differently;
each matched pair is then held to a bound per attribute (centre, size, yaw, velocity, score), so a
backend that gets, say, only the yaw wrong cannot pass on its centres."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Parity thresholds: fp32 backends must agree this closely. Both sides compute in float32, whose
# rounding leaves errors below 1e-6 on these outputs (ONNX Runtime against PyTorch: under 5e-7 on
# every box attribute); the bounds sit far above that and far below any error that would change a
# detection.
MAP_MAX_ABS = 1e-4
CENTRE_TOLERANCE_M = 1e-3
SIZE_TOLERANCE_M = 1e-3
YAW_TOLERANCE_RAD = 1e-3
VELOCITY_TOLERANCE_M_S = 1e-3
SCORE_TOLERANCE = 1e-4
METRIC_POINTS = 0.1  # mAP / NDS / mIoU, in percentage points
SCORE_TIE = 1e-5  # scores this close to the top-K cut may be kept by either backend

# A float16 TensorRT engine against PyTorch: the network runs in float16 (resolution 1e-3 relative)
# and decodes boxes in float16, whose steps are 0.03 m beyond 32 m (centres), 8 mm up to 16 m
# (sizes, velocities), 2e-3 rad near pi (yaw) and 5e-4 below 1 (scores); the box bounds
# (FP16_BOX_TOLERANCE) leave room for the network's own float16 error on top of those steps.
FP16_MAP_MAX_ABS = 1e-2
FP16_SCORE_TIE = 1e-2

# An INT8 graph (fuller quantize) moves individual boxes. A low-score box may change class or leave
# the top-K: on the tiny model, ~10 % of the boxes with score >= 0.1 move by more than 0.5 m. So its
# gate is accuracy against the float graph on the same frames: |delta| of mAP, NDS and mIoU within
# INT8_METRIC_POINTS. The dense outputs' mean error is also bounded; the tiny model measures 0.0065
# on map_probs and 0.0033 on scores. The per-box table is still reported, against
# INT8_BOX_TOLERANCE, but it does not fail.
INT8_METRIC_POINTS = 1.0
INT8_MEAN_ABS = {"map_probs": 0.02, "scores": 0.02}
INT8_MAP_MAX_ABS = 1.0  # probabilities: the mean bound above is the one that applies


@dataclass(frozen=True)
class BoxTolerance:
    """The largest error a matched box may have, per attribute: centre distance and size (m), yaw
    difference wrapped to [-pi, pi] (rad), velocity (m/s) and score; labels must be equal."""

    centre_m: float = CENTRE_TOLERANCE_M
    size_m: float = SIZE_TOLERANCE_M
    yaw_rad: float = YAW_TOLERANCE_RAD
    velocity_m_s: float = VELOCITY_TOLERANCE_M_S
    score: float = SCORE_TOLERANCE


FP16_BOX_TOLERANCE = BoxTolerance(centre_m=0.1, size_m=0.1, yaw_rad=0.05, velocity_m_s=0.1, score=1e-2)
INT8_BOX_TOLERANCE = BoxTolerance(centre_m=0.5, size_m=0.2, yaw_rad=0.2, velocity_m_s=0.2, score=0.05)

# The compared attributes: BoxTolerance field (also the key in parity.json) and the table's name.
BOX_ATTRIBUTES = {
    "centre_m": "centre distance (m)",
    "size_m": "size w, l, h (m)",
    "yaw_rad": "yaw, modulo 2π (rad)",
    "velocity_m_s": "velocity vx, vy (m/s)",
    "score": "score",
}


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


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles to [-pi, pi): yaw and yaw + 2 pi are the same heading."""
    return np.mod(a + np.pi, 2 * np.pi) - np.pi


def box_errors(ref_box: np.ndarray, other_box: np.ndarray, ref_score: float, other_score: float) -> dict[str, float]:
    """Per attribute error of one matched pair of (x, y, z, w, l, h, yaw, vx, vy) boxes."""
    a, b = ref_box.astype(np.float64), other_box.astype(np.float64)
    return {"centre_m": float(np.linalg.norm(a[:3] - b[:3])),
            "size_m": float(np.abs(a[3:6] - b[3:6]).max()),
            "yaw_rad": float(np.abs(wrap_angle(a[6] - b[6]))),
            "velocity_m_s": float(np.abs(a[7:9] - b[7:9]).max()),
            "score": abs(float(ref_score) - float(other_score))}


@dataclass
class BoxMatch:
    """Every reference box above the score threshold is matched to the nearest box of its class in
    the other output, and the pair's errors are kept per attribute. Boxes tied with the other
    side's last kept score are exempt (counted in ``tied``): top-K may keep either of two boxes whose
    scores agree to rounding. ``frames`` counts the frames that had boxes, so an empty comparison of
    a detection model is told apart from a model without detections."""

    errors: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in BOX_ATTRIBUTES})
    other_class_distances: list[float] = field(default_factory=list)  # per checked box: nearest other-class box (m)
    tied: int = 0  # reference boxes at the other side's top-K cut, not checked
    frames: int = 0

    def add(self, ref: dict[str, np.ndarray], other: dict[str, np.ndarray], score_threshold: float,
            score_tie: float) -> None:
        self.frames += 1
        other_boxes, other_scores, other_labels = other["boxes"][0], other["scores"][0], other["labels"][0]
        cut = float(other_scores.min(initial=np.inf))
        keep = ref["scores"][0] >= score_threshold
        tied = keep & (ref["scores"][0] <= cut + score_tie)
        self.tied += int(tied.sum())
        checked = keep & ~tied
        for box, score, label in zip(ref["boxes"][0][checked], ref["scores"][0][checked], ref["labels"][0][checked]):
            distances = np.linalg.norm(other_boxes[:, :3].astype(np.float64) - box[:3].astype(np.float64), axis=1)
            same = other_labels == label
            self.other_class_distances.append(float(distances[~same].min(initial=np.inf)))
            if same.any():
                nearest = int(np.flatnonzero(same)[np.argmin(distances[same])])
                errors = box_errors(box, other_boxes[nearest], score, other_scores[nearest])
            else:
                errors = dict.fromkeys(BOX_ATTRIBUTES, float("inf"))
            for name, value in errors.items():
                self.errors[name].append(value)

    @property
    def reference(self) -> int:
        """Reference boxes checked."""
        return len(self.other_class_distances)

    def matched(self, centre_tolerance: float) -> int:
        """Checked boxes with a box of their class within ``centre_tolerance``."""
        return int(np.sum(np.asarray(self.errors["centre_m"]) <= centre_tolerance))

    def label_mismatches(self, centre_tolerance: float) -> int:
        """Checked boxes with no box of their class within ``centre_tolerance`` but one of another
        class there: the other backend found the object and named it differently."""
        own = np.asarray(self.errors["centre_m"])
        return int(np.sum((own > centre_tolerance) & (np.asarray(self.other_class_distances) <= centre_tolerance)))

    def summary(self, tolerance: BoxTolerance) -> dict[str, dict]:
        """Per attribute: the largest error, the tolerance and how many boxes exceed it. A box with
        no box of its class within the centre tolerance counts against the centre only: its other
        attributes would be compared with another object's."""
        limits = asdict(tolerance)
        found = np.asarray(self.errors["centre_m"]) <= tolerance.centre_m
        out = {}
        for name in BOX_ATTRIBUTES:
            errors = np.asarray(self.errors[name], dtype=np.float64)
            errors = errors if name == "centre_m" else errors[found]
            out[name] = {"max_abs_error": float(errors.max(initial=0.0)), "tolerance": limits[name],
                         "over_tolerance": int(np.sum(errors > limits[name]))}
        return out

    def record(self, tolerance: BoxTolerance) -> dict:
        return {"checked": self.reference, "tied_at_cut": self.tied,
                "label_mismatches": self.label_mismatches(tolerance.centre_m), **self.summary(tolerance)}


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

    def failures(self, map_max_abs: float = MAP_MAX_ABS, box_tolerance: BoxTolerance = BoxTolerance(),
                 gate_boxes: bool = True, mean_abs: dict[str, float] | None = None) -> list[str]:
        """The thresholds exceeded. ``gate_boxes`` False reports the matched boxes without failing
        on them (INT8); ``mean_abs`` bounds the mean absolute difference of the named outputs."""
        out = []
        if "map_probs" in self.outputs and self.outputs["map_probs"].max_abs > map_max_abs:
            out.append(f"map_probs: max abs diff {self.outputs['map_probs'].max_abs:.3g} > {map_max_abs:g}")
        for name, limit in (mean_abs or {}).items():
            if name in self.outputs and self.outputs[name].mean_abs > limit:
                out.append(f"{name}: mean abs diff {self.outputs[name].mean_abs:.3g} > {limit:g}")
        b = self.boxes
        if b.frames and not b.reference:
            out.append(f"boxes: no boxes compared over {b.frames} frames (none with score >= {self.score_threshold:g} "
                       f"in the reference outside the top-K tie), so their parity is unchecked")
        if not gate_boxes:
            return out
        summary = b.summary(box_tolerance)
        for name, title in BOX_ATTRIBUTES.items():
            worst, limit, over = (summary[name][k] for k in ("max_abs_error", "tolerance", "over_tolerance"))
            if over and name == "centre_m":
                out.append(f"boxes {title}: {over} of {b.reference} boxes have no box of their class within "
                           f"{limit:g} m (worst {worst:.3g})")
            elif over:
                out.append(f"boxes {title}: {over} of {b.matched(box_tolerance.centre_m)} matched boxes off by "
                           f"more than {limit:g} (worst {worst:.3g})")
        mismatched = b.label_mismatches(box_tolerance.centre_m)
        if mismatched:
            out.append(f"boxes label: {mismatched} of {b.reference} boxes have a box of another class within "
                       f"{box_tolerance.centre_m:g} m and none of their own")
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
                  frames: int, box_tolerance: BoxTolerance = BoxTolerance(), metric_ref_name: str | None = None) -> str:
    lines = [f"parity: {other_name} vs {ref_name} over {frames} frames", "",
             "| output | max abs diff | mean abs diff | min cosine |", "|---|---:|---:|---:|"]
    for name, d in comparison.outputs.items():
        lines.append(f"| {name} | {d.max_abs:.3g} | {d.mean_abs:.3g} | {d.cosine:.8f} |")
    b = comparison.boxes
    if b.frames:
        summary = b.summary(box_tolerance)
        lines += ["", f"boxes (score >= {comparison.score_threshold:g}): {b.reference} checked against the nearest box "
                      f"of their class; {b.tied} tied at the top-K cut, not checked",
                  "", "| box attribute | max abs error | tolerance | boxes over |", "|---|---:|---:|---:|"]
        lines += [f"| {title} | {summary[name]['max_abs_error']:.3g} | {summary[name]['tolerance']:g} | "
                  f"{summary[name]['over_tolerance']} |" for name, title in BOX_ATTRIBUTES.items()]
        lines.append(f"| label | | equal | {b.label_mismatches(box_tolerance.centre_m)} |")
    if deltas:
        lines += ["", f"| metric | {other_name} - {metric_ref_name or ref_name} (points) |", "|---|---:|"]
        lines += [f"| {name} | {value:+.3f} |" for name, value in deltas.items()]
    return "\n".join(lines)
