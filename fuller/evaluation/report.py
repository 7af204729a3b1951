"""The evaluation's record (metrics.json) and its plain-text table for logs and terminals.

metrics.json is strict JSON (no NaN: undefined values are null), so any tool can read it; the
table prints undefined values as "-" rather than hiding the row, so a missing class stays visible.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .detection import TP_NAMES
from .results import EvaluationError

METRICS_FILE = "metrics.json"
RESERVED_KEYS = ("detection", "map")


def to_json_safe(value: Any) -> Any:
    """Nested dicts/lists with numpy values -> plain Python; NaN and inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def metrics_record(detection: dict | None, map_metrics: dict | None, extra: Mapping[str, Any]) -> dict:
    """The content of metrics.json: `extra` (run facts: eval set, step, ...) plus both sections."""
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise EvaluationError(f"extra: expected keys other than {list(RESERVED_KEYS)}, got {clash}")
    return to_json_safe({**extra, "detection": detection, "map": map_metrics})


def write_metrics(out_dir: str | Path, detection: dict | None, map_metrics: dict | None,
                  extra: Mapping[str, Any]) -> Path:
    """Write out_dir/metrics.json and return its path."""
    path = Path(out_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_record(detection, map_metrics, extra), indent=2, allow_nan=False))
    return path


def _cell(value: float | None, width: int = 7, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _detection_lines(det: dict) -> list[str]:
    tp = det["tp_errors"]
    lines = [f"Detection (nuScenes devkit, {det.get('eval_set', '?')})",
             f"  mAP {_cell(det['mAP'], 0, 4)}   NDS {_cell(det['NDS'], 0, 4)}",
             "  " + "  ".join(f"m{s} {_cell(tp['m' + s], 0, 4)}" for s in TP_NAMES.values()),
             "",
             f"  {'class':<22}{'AP':>7}" + "".join(f"{s:>7}" for s in TP_NAMES.values()) + f"{'GT':>7}"]
    for name, ap in det["class_ap"].items():
        errors = det["class_tp_errors"][name]
        lines.append(f"  {name:<22}{_cell(ap)}" + "".join(_cell(errors[s]) for s in TP_NAMES.values())
                     + f"{det.get('class_gt_boxes', {}).get(name, '-'):>7}")
    return lines


def _map_lines(seg: dict) -> list[str]:
    t = seg["thresholds"]
    lines = [f"Map segmentation IoU (dataset-level counts; max over thresholds {t[0]:.2f}..{t[-1]:.2f}, and at 0.5)",
             f"  {'class':<22}{'max':>7}{'@0.5':>7}{'GT px':>10}"]
    for name in seg["iou_max"]:
        lines.append(f"  {name:<22}{_cell(seg['iou_max'][name])}{_cell(seg['iou_at_0.5'][name])}"
                     f"{seg['gt_pixels'][name]:>10}")
    lines.append(f"  {'mean':<22}{_cell(seg['mean_iou_max'])}{_cell(seg['mean_iou_at_0.5'])}")
    return lines


def format_table(metrics: Mapping[str, Any]) -> str:
    """Plain-text table of a metrics record (what `evaluate` returns, or metrics.json read back):
    mAP, NDS, TP errors and per-class AP/errors; map IoU per class and the means."""
    blocks = []
    if metrics.get("detection") is not None:
        blocks.append("\n".join(_detection_lines(metrics["detection"])))
    if metrics.get("map") is not None:
        blocks.append("\n".join(_map_lines(metrics["map"])))
    return "\n\n".join(blocks) if blocks else "(no metrics: neither detection nor map predictions)"
