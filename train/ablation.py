"""`fuller ablate`: the paper-style table, each variant trained with the same seed and budget.

Variants follow FULLER's ablation: single-task detection and map, naive multi-task (plain sum),
inter-task calibration only, intra-modality calibration only, and both (FULLER). Each run lives
in its own folder; a finished run (checkpoint at the requested step) is reused, so an
interrupted ablation picks up where it stopped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fuller.config import FullerConfig, updated_config
from fuller.data import open_nuscenes

from .predict import evaluate_model, load_model
from .trainer import CHECKPOINT, default_device, run_finished, train


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    tasks: tuple[str, ...]
    inter: str
    intra: bool


VARIANTS = (
    Variant("det_only", "Detection only", ("det",), "sum", False),
    Variant("map_only", "Map only", ("map",), "sum", False),
    Variant("naive", "Multi-task, naive sum", ("det", "map"), "sum", False),
    Variant("inter", "+ inter-task calibration (IMTL-G)", ("det", "map"), "imtl", False),
    Variant("intra", "+ intra-modality calibration", ("det", "map"), "sum", True),
    Variant("fuller", "FULLER (inter + intra)", ("det", "map"), "imtl", True),
)


def variant_config(base: FullerConfig, variant: Variant, steps: int) -> FullerConfig:
    return updated_config(base, {"model.tasks": variant.tasks, "train.inter": variant.inter,
                                 "train.intra": variant.intra, "train.steps": steps})


def run_ablation(base: FullerConfig, data_root: str | Path, out: str | Path, steps: int,
                 variants: tuple[Variant, ...] = VARIANTS, progress: bool = True) -> list[dict]:
    """Train and evaluate every variant; returns one row per variant (also in out/ablation.json)."""
    out = Path(out)
    device = default_device()
    nusc = open_nuscenes(data_root, base.data.version)
    rows = []
    for i, variant in enumerate(variants, 1):
        run = out / variant.name
        cfg = variant_config(base, variant, steps)
        print(f"[{i}/{len(variants)}] {variant.label}: tasks {list(variant.tasks)}, inter {variant.inter}, "
              f"intra {'on' if variant.intra else 'off'}")
        if not run_finished(run, steps):
            train(cfg, data_root, run, resume=(run / CHECKPOINT).is_file(), progress=progress)
        _, model = load_model(run / CHECKPOINT, device)
        metrics = evaluate_model(model, cfg, data_root, cfg.data.val_split, run / "eval", device, pictures=1,
                                 progress=progress, nusc=nusc)
        rows.append({"variant": variant.name, "label": variant.label, **headline(metrics)})
    naive = next((r for r in rows if r["variant"] == "naive"), None)
    for row in rows:
        for key in ("mAP", "NDS", "mIoU"):
            base_value = naive.get(key) if naive else None
            row[f"delta_{key}"] = (None if row.get(key) is None or base_value is None
                                   else row[key] - base_value)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    (out / "ablation.md").write_text(markdown_table(rows, steps))
    return rows


def headline(metrics: dict) -> dict:
    """mAP, NDS (None without detection) and mIoU (None without the map task) of a metrics dict."""
    det, seg = metrics.get("detection"), metrics.get("map")
    return {"mAP": det["mAP"] if det else None, "NDS": det["NDS"] if det else None,
            "mIoU": seg["mean_iou_max"] if seg else None}


def _cell(value: float | None, delta: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.1f}" if delta else f"{value * 100:.1f}"


def markdown_table(rows: list[dict], steps: int) -> str:
    lines = [f"Ablation on mini_val, {steps} steps per variant, same seed (numbers in %; delta vs naive).", "",
             "| variant | mAP | NDS | mIoU | ΔmAP | ΔNDS | ΔmIoU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {_cell(r['mAP'])} | {_cell(r['NDS'])} | {_cell(r['mIoU'])} | "
                     f"{_cell(r['delta_mAP'], True)} | {_cell(r['delta_NDS'], True)} | {_cell(r['delta_mIoU'], True)} |")
    return "\n".join(lines) + "\n"
