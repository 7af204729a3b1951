"""`fuller ablate`: the paper-style ablation as a multi-seed study with paired comparisons.

Variants follow FULLER's ablation: single-task detection and map, naive multi-task (plain sum),
inter-task calibration only, intra-modality calibration only, and both (FULLER). Each variant is a
set of config overrides (`VARIANTS`, the one table to edit). For every seed s, every variant trains
with ``train.seed = s``, so the runs of a seed share their initialisation and data order and a
variant is compared with naive seed by seed (paired differences, `study_stats`).

Layout of OUT:

    OUT/<variant>/seed<s>/checkpoint.pt ...       a training run (`fuller train`'s files)
    OUT/<variant>/seed<s>/eval_<set>/metrics.json  its evaluation on a set (val, test)
    OUT/<variant>/seed<s>/eval_<set>_lidar_only/   ... with the camera BEV zeroed (modality ablation)
    OUT/<variant>/seed<s>/eval_<set>_camera_only/  ... with the LiDAR BEV zeroed
    OUT/ablation.json                              every run's metrics per set
    OUT/ablation.md                                the tables

A finished run (checkpoint at the requested step) is reused and an interrupted one resumes; an
evaluation whose metrics.json is there, made of the same checkpoint step on the same data, is
reused, so rerunning the command (with more seeds, say) only does what is missing.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fuller.config import FullerConfig, config_hash, config_to_dict, updated_config
from fuller.data import NuScenesDataset, open_nuscenes
from fuller.errors import UserInputError

from .checkpoint import load_checkpoint
from .dataset import TrainingSet
from .predict import evaluate_model, model_from_checkpoint
from .study_stats import Interval, mean_interval, paired_interval
from .trainer import CHECKPOINT, default_device, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    name: str  # folder name and --only key
    label: str  # row label of the tables
    overrides: dict[str, object]  # dotted config keys applied with `updated_config`


BOTH = ["det", "map"]

# The ablation, in the paper's row order. Each row's overrides are applied to the base config.
VARIANTS = (
    Variant("det_only", "Detection only", {"model.tasks": ["det"], "train.inter": "sum", "train.intra": False}),
    Variant("map_only", "Map only", {"model.tasks": ["map"], "train.inter": "sum", "train.intra": False}),
    Variant("naive", "Multi-task, naive sum", {"model.tasks": BOTH, "train.inter": "sum", "train.intra": False}),
    Variant("inter", "+ inter-task calibration", {"model.tasks": BOTH, "train.inter": "imtl", "train.intra": False}),
    Variant("intra", "+ intra-modality calibration", {"model.tasks": BOTH, "train.inter": "sum", "train.intra": True}),
    Variant("fuller", "FULLER (inter + intra)", {"model.tasks": BOTH, "train.inter": "imtl", "train.intra": True}),
)
BASELINE = "naive"  # what the deltas are taken against
PAIRED = ("train.seed", "model.backbone_weights")  # what every variant of a seed shares: a reused run must too

# Modality ablation: result key, the modality zeroed at the fuser input, the table's column name.
MODALITY_ABLATIONS = (("lidar_only", "camera", "LiDAR only"), ("camera_only", "lidar", "camera only"))
METRICS = ("mAP", "NDS", "mIoU")
EVALUATED = "evaluated.json"  # beside an evaluation's metrics.json: what it was made of


@dataclass(frozen=True)
class EvalSet:
    """A split of a dataset root: the training split, or a held-out evaluation set whose ``name``
    (val, test) is the folder suffix and the table's title."""

    name: str
    root: Path
    split: str
    version: str


def variant_config(base: FullerConfig, variant: Variant, steps: int, seed: int = 0) -> FullerConfig:
    return updated_config(base, {**variant.overrides, "train.steps": steps, "train.seed": seed})


def run_dir(out: str | Path, variant: Variant, seed: int) -> Path:
    return Path(out) / variant.name / f"seed{seed}"


def eval_dir(run: Path, set_name: str, ablation: str | None = None) -> Path:
    return run / (f"eval_{set_name}" if ablation is None else f"eval_{set_name}_{ablation}")


def evaluation_sets(base: FullerConfig, data_root: str | Path, test_data: str | Path | None = None,
                    test_split: str = "all", test_version: str | None = None) -> list[EvalSet]:
    """val (the config's val split of the training data) and, with ``test_data``, test."""
    sets = [EvalSet("val", Path(data_root), base.data.val_split, base.data.version)]
    if test_data is not None:
        sets.append(EvalSet("test", Path(test_data), test_split, test_version or base.data.version))
    return sets


def run_ablation(base: FullerConfig, data_root: str | Path, out: str | Path, steps: int,
                 variants: Sequence[Variant] = VARIANTS, seeds: Sequence[int] = (0,), *,
                 test_data: str | Path | None = None, test_split: str = "all", test_version: str | None = None,
                 modality_ablation: bool = False, progress: bool = True) -> list[dict]:
    """Train every variant with every seed, evaluate each run on every set; returns one record per
    (variant, seed, set), also written to out/ablation.json, and writes out/ablation.md."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserInputError(f"seeds: expected distinct non-negative integers, got {seeds}")
    out = Path(out)
    device = default_device()
    sets = evaluation_sets(base, data_root, test_data, test_split, test_version)
    ablation_set = sets[-1].name if modality_ablation else None
    nusc_cache: dict[tuple[str, str], object] = {}
    readers: dict[tuple[str, str, str, str], TrainingSet] = {}

    def reader_of(eval_set: EvalSet, cfg: FullerConfig) -> TrainingSet:
        """The set's samples, read once for the whole ablation (kept in memory for small splits):
        every run trains on the same training split and is scored on the same held-out sets."""
        key = (str(eval_set.root), eval_set.version, eval_set.split, config_hash(cfg.geometry))
        if key not in readers:
            nusc_key = (str(eval_set.root), eval_set.version)
            if nusc_key not in nusc_cache:
                nusc_cache[nusc_key] = open_nuscenes(eval_set.root, eval_set.version)
            readers[key] = TrainingSet(NuScenesDataset(cfg, eval_set.root, eval_set.split, nusc=nusc_cache[nusc_key]))
        return readers[key]

    records = []
    total, i = len(seeds) * len(variants), 0
    for seed in seeds:  # seed by seed: after each, every variant has one more paired sample
        for variant in variants:
            i += 1
            cfg = variant_config(base, variant, steps, seed)
            run = run_dir(out, variant, seed)
            ckpt = run / CHECKPOINT
            action, run_cfg, payload = "training", None, None
            if ckpt.is_file():  # checked before it is resumed or reused
                run_cfg, payload = load_checkpoint(ckpt, map_location=device)
                check_run(run, run_cfg, cfg, variant)
                action = "reused" if payload["step"] >= steps else "resuming"  # run_finished's test
            print(f"[{i}/{total}] {variant.label}, seed {seed}: {describe(variant.overrides)} ({action}, {run})",
                  flush=True)
            if action != "reused":
                payload = None
                training = EvalSet("train", Path(data_root), cfg.data.train_split, cfg.data.version)
                train(cfg, data_root, run, resume=ckpt.is_file(), progress=progress, dataset=reader_of(training, cfg))
                run_cfg, payload = load_checkpoint(ckpt, map_location=device)
            model = None
            results = []
            for eval_set in sets:
                wanted = [(None, None)]
                if eval_set.name == ablation_set and _ablates_modalities(run_cfg):
                    wanted += [(key, zeroed) for key, zeroed, _ in MODALITY_ABLATIONS]
                record = {"variant": variant.name, "label": variant.label, "seed": seed, "set": eval_set.name,
                          "data": str(eval_set.root), "split": eval_set.split, "version": eval_set.version,
                          "steps": payload["step"]}
                for key, zeroed in wanted:
                    folder = eval_dir(run, eval_set.name, key)
                    request = {"data": str(eval_set.root.resolve()), "split": eval_set.split,
                               "version": eval_set.version, "checkpoint_step": payload["step"],
                               "zeroed_modality": zeroed}
                    metrics = _reusable_metrics(folder, request)
                    if metrics is None:
                        if model is None:
                            model = model_from_checkpoint(run_cfg, payload, device)
                        eval_cfg = (run_cfg if eval_set.version == run_cfg.data.version
                                    else updated_config(run_cfg, {"data.version": eval_set.version}))
                        metrics = evaluate_model(model, eval_cfg, eval_set.root, eval_set.split, folder, device,
                                                 pictures=0, progress=progress, zeroed_modality=zeroed,
                                                 dataset=reader_of(eval_set, eval_cfg))
                        (folder / EVALUATED).write_text(json.dumps(request, indent=2) + "\n")
                    if key is None:
                        record.update(headline(metrics), num_samples=metrics.get("num_samples"))
                    else:
                        record[key] = headline(metrics)
                records.append(record)
                results.append(f"{eval_set.name} mAP {_number(record['mAP'])} mIoU {_number(record['mIoU'])}")
            print(f"    {'; '.join(results)}", flush=True)
            del model, payload

    order = {v.name: k for k, v in enumerate(variants)}
    set_order = {s.name: k for k, s in enumerate(sets)}
    records.sort(key=lambda r: (order[r["variant"]], r["seed"], set_order[r["set"]]))
    add_deltas(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown_report(records, variants, sets, ablation_set))
    return records


def describe(overrides: dict[str, object]) -> str:
    def value(v: object) -> str:
        return f"[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in overrides.items())


def _ablates_modalities(cfg: FullerConfig) -> bool:
    """Modality ablation applies to multi-task models that fuse both sensors."""
    return len(cfg.model.tasks) > 1 and set(cfg.model.modalities) == {"camera", "lidar"}


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def check_run(run: Path, run_cfg: FullerConfig, wanted: FullerConfig, variant: Variant) -> None:
    """A reused or resumed run must have been trained as the variant, seed and initial weights say; other config
    differences (logging, workers) are reported, not refused."""
    have, want = _flat(config_to_dict(run_cfg)), _flat(config_to_dict(wanted))
    differ = sorted(k for k in want if k != "train.steps" and have.get(k) != want[k])
    essential = [k for k in differ if k in variant.overrides or k in PAIRED]
    if essential:
        raise UserInputError(
            f"{run}: holds a run trained with {', '.join(f'{k}={have.get(k)!r}' for k in essential)}, but variant "
            f"{variant.name!r} asks for {', '.join(f'{k}={want[k]!r}' for k in essential)}; remove the run or "
            f"choose another --out")
    if differ:
        log.warning("%s: reused run's config differs from the requested one in %s", run, ", ".join(differ))


def _reusable_metrics(folder: Path, request: dict) -> dict | None:
    metrics, made_of = folder / "metrics.json", folder / EVALUATED
    if not (metrics.is_file() and made_of.is_file()):
        return None
    try:
        if json.loads(made_of.read_text()) != request:
            return None
        return json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def headline(metrics: dict) -> dict:
    """mAP, NDS (None without detection) and mIoU (None without the map task) of a metrics dict."""
    det, seg = metrics.get("detection"), metrics.get("map")
    return {"mAP": det["mAP"] if det else None, "NDS": det["NDS"] if det else None,
            "mIoU": seg["mean_iou_max"] if seg else None}


def add_deltas(records: list[dict]) -> None:
    """delta_<metric>: the record's metric minus naive's for the same seed and set (None if either lacks it)."""
    baseline = {(r["seed"], r["set"]): r for r in records if r["variant"] == BASELINE}
    for r in records:
        b = baseline.get((r["seed"], r["set"]))
        for key in METRICS:
            r[f"delta_{key}"] = (None if b is None or r.get(key) is None or b.get(key) is None
                                 else r[key] - b[key])


# --- tables ---------------------------------------------------------------------------------------

def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}"


def _values(records: list[dict], key: str, sub: str | None = None) -> dict[int, float]:
    """seed -> value of ``key`` (of ``record[sub]`` when given), where present."""
    values = {}
    for r in records:
        source = r.get(sub) if sub else r
        if source is not None and source.get(key) is not None:
            values[r["seed"]] = source[key]
    return values


def _mean_cell(values: dict[int, float]) -> str:
    if not values:
        return "-"
    iv = mean_interval(list(values.values()))
    spread = "-" if iv.half_width is None else f"{iv.half_width * 100:.1f}"
    return f"{_number(iv.mean)} ± {spread}"


def _delta_cell(values: dict[int, float], baseline: dict[int, float]) -> str:
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return "-"
    iv: Interval = paired_interval([values[s] for s in seeds], [baseline[s] for s in seeds])
    if iv.low is None:
        return f"{_number(iv.mean, True)} [-]"
    cell = f"{_number(iv.mean, True)} [{_number(iv.low, True)}, {_number(iv.high, True)}]"
    return f"**{cell}**" if iv.excludes(0.0) else cell


def _set_line(eval_set: EvalSet, records: list[dict]) -> str:
    samples = sorted({r["num_samples"] for r in records if r.get("num_samples") is not None})
    count = "/".join(map(str, samples)) or "?"
    return f"split `{eval_set.split}` of `{eval_set.root}` ({eval_set.version}), {count} samples"


def markdown_report(records: list[dict], variants: Sequence[Variant], sets: Sequence[EvalSet],
                    ablation_set: str | None = None) -> str:
    seeds = sorted({r["seed"] for r in records})
    steps = sorted({r["steps"] for r in records})
    lines = ["# Ablation", "",
             f"Seeds {', '.join(map(str, seeds))} (n = {len(seeds)}; paired: for each seed every variant starts "
             f"from the same initialisation and reads the same data order); "
             f"{'/'.join(map(str, steps))} training steps per run. Numbers in %. mAP, mIoU: mean over seeds "
             f"± half-width of its 95 % confidence interval (Student t, n - 1 dof). Δ: mean over seeds of the "
             f"paired difference against the naive sum [its 95 % confidence interval], in bold where the "
             f"interval excludes 0. With one seed there is no interval (-).", ""]
    for eval_set in sets:
        in_set = [r for r in records if r["set"] == eval_set.name]
        base = [r for r in in_set if r["variant"] == BASELINE]
        lines += [f"## {eval_set.name}: {_set_line(eval_set, in_set)}", "",
                  "| variant | mAP | mIoU | ΔmAP vs naive [95 % CI] | ΔmIoU vs naive [95 % CI] |",
                  "|---|---:|---:|---:|---:|"]
        for v in variants:
            rows = [r for r in in_set if r["variant"] == v.name]
            cells = [_mean_cell(_values(rows, "mAP")), _mean_cell(_values(rows, "mIoU"))]
            if v.name == BASELINE:
                cells += ["(reference)" if _values(rows, k) else "-" for k in ("mAP", "mIoU")]
            else:
                cells += [_delta_cell(_values(rows, k), _values(base, k)) for k in ("mAP", "mIoU")]
            lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
        lines.append("")
    if ablation_set is not None:
        eval_set = next(s for s in sets if s.name == ablation_set)
        in_set = [r for r in records if r["set"] == ablation_set and MODALITY_ABLATIONS[0][0] in r]
        names = [name for _, _, name in MODALITY_ABLATIONS]
        lines += [f"## Modality ablation, {ablation_set}: {_set_line(eval_set, in_set)}", "",
                  "Multi-task variants evaluated with one sensor's BEV zeroed at the fuser input (trained with "
                  f"both): {names[0]} has the camera zeroed, {names[1]} the LiDAR. Mean over seeds ± half-width "
                  "of the 95 % confidence interval, in %.", "",
                  "| variant | mAP full | " + " | ".join(f"mAP {n}" for n in names) + " | mIoU full | "
                  + " | ".join(f"mIoU {n}" for n in names) + " |",
                  "|---|" + "---:|" * (2 + 2 * len(names))]
        for v in variants:
            rows = [r for r in in_set if r["variant"] == v.name]
            if not rows:
                continue
            cells = []
            for metric in ("mAP", "mIoU"):
                cells.append(_mean_cell(_values(rows, metric)))
                cells += [_mean_cell(_values(rows, metric, key)) for key, _, _ in MODALITY_ABLATIONS]
            lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
        if not in_set:
            lines.append("| (no multi-task variant with both sensors in this ablation) |" + " |" * 6)
        lines.append("")
    return "\n".join(lines)
