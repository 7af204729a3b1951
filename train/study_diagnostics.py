"""The gradient diagnostics of an ablation as a table: what each reading does to the gradients.

Each run's ``metrics.jsonl`` (`train.task_diagnostics`) is read over its last ``window`` steps; a
reading's value for a run is its median there (robust to the spikes of single batches), and a
variant's is the mean of its runs' medians over seeds. A reading a variant does not log (a single
task has no cosine) is "-".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .ablation import Variant, run_dir
from .run_log import METRICS_FILE

# (metrics key, column): magnitudes and cosines at z, the last shared layer's cosine, per-element RMS
# gradients per task and sensor at the fuser input, the per-task intra scale of the map's gradient
# into the LiDAR branch, and Adam's median sqrt(v_hat) per branch.
READINGS = (
    ("grad_norm/det", "‖g_det‖ at z"), ("grad_norm/map", "‖g_map‖ at z"), ("cos/det-map", "cos at z"),
    ("cos_last/det-map", "cos, last shared layer"),
    ("grad_rms/det/camera", "det RMS camera"), ("grad_rms/det/lidar", "det RMS LiDAR"),
    ("grad_rms/map/camera", "map RMS camera"), ("grad_rms/map/lidar", "map RMS LiDAR"),
    ("intra_scale/map/lidar", "per-task intra scale, map → LiDAR"),
    ("adam_rms/camera/median", "Adam √v̂ median camera"), ("adam_rms/lidar/median", "Adam √v̂ median LiDAR"),
)


def run_readings(metrics_file: Path, window: int = 100) -> dict[str, float]:
    """Per reading, its median over the logged steps after ``last step - window`` (absent: NaN)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r]
    if not rows:
        return {key: float("nan") for key, _ in READINGS}
    last = max(r["step"] for r in rows)
    recent = [r for r in rows if r["step"] > last - window]
    out = {}
    for key, _ in READINGS:
        values = [r[key] for r in recent if r.get(key) is not None]
        out[key] = float(np.median(values)) if values else float("nan")
    return out


def diagnostics_table(out: Path, variants: Sequence[Variant], seeds: Sequence[int], window: int = 100) -> str:
    """Markdown: one row per variant with runs in ``out``, the mean over its seeds of each reading."""
    lines = ["", "## Gradient diagnostics", "",
             f"Medians over each run's last {window} steps (`metrics.jsonl`), mean over seeds; RMS: per-element "
             "RMS of a task's gradient at that sensor's BEV (fuser input).", "",
             "| variant | " + " | ".join(name for _, name in READINGS) + " |", "|---|" + "---:|" * len(READINGS)]
    for variant in variants:
        runs = [run_readings(f) for f in (run_dir(out, variant, s) / METRICS_FILE for s in seeds) if f.is_file()]
        if not runs:
            continue
        cells = []
        for key, _ in READINGS:
            values = [r[key] for r in runs if not np.isnan(r[key])]
            cells.append(f"{np.mean(values):.2g}" if values else "-")
        lines.append(f"| {variant.label} (n = {len(runs)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
