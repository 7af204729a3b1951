"""`fuller bench train`: what calibration costs per training step, measured side by side.

Every method trains from the same initial weights on the same fixed batch, interleaved round by
round so machine noise hits them alike; the table gives median and p90 step times and the ratio
of medians to plain summed losses. Data loading is excluded: it is the same for every method.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass

import torch

from fuller.config import FullerConfig, updated_config

from .batching import Batch, Collator
from .trainer import Trainer, default_device


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    overrides: dict
    parameter_pcgrad: bool = False


_PLAIN = {"train.inter": "sum", "train.intra": False, "train.task_diagnostics": False}
METHODS = (
    Method("sum", "sum of losses (baseline)", _PLAIN),
    Method("fuller", "FULLER: IMTL-G at z + intra norms", {**_PLAIN, "train.inter": "imtl", "train.intra": True}),
    Method("fuller_per_task", "FULLER: IMTL-G + per-task intra", {**_PLAIN, "train.inter": "imtl",
                                                                   "train.intra": True, "train.intra_mode": "per_task"}),
    Method("param_pcgrad", "parameter-level PCGrad (reference)", _PLAIN, parameter_pcgrad=True),
)


def _time_step(trainer: Trainer, batch: Batch) -> float:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train_step(batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_train(cfg: FullerConfig, samples: list, rounds: int = 10, warmup: int = 2,
                methods: tuple[Method, ...] = METHODS, device: torch.device | None = None) -> list[dict]:
    """Median/p90 step seconds per method over ``rounds`` interleaved rounds after ``warmup``."""
    device = device or default_device()
    batch = Collator(cfg)(samples)
    trainers = {}
    for m in methods:
        mcfg = updated_config(cfg, {**m.overrides, "train.steps": warmup + rounds})
        trainers[m.name] = Trainer.create(mcfg, device, parameter_pcgrad=m.parameter_pcgrad)
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    for r in range(warmup + rounds):
        for m in methods:
            t = _time_step(trainers[m.name], batch)
            if r >= warmup:
                times[m.name].append(t)
    base = statistics.median(times[methods[0].name])
    rows = []
    for m in methods:
        ts = sorted(times[m.name])
        median = statistics.median(ts)
        rows.append({"method": m.name, "label": m.label, "median_s": median,
                     "p90_s": ts[min(len(ts) - 1, int(0.9 * len(ts)))], "ratio": median / base})
    return rows


def format_bench(rows: list[dict], cfg: FullerConfig, batch_size: int, device: torch.device) -> str:
    threads = torch.get_num_threads()
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {threads} threads"
    lines = [f"training step, config {cfg.name}, batch {batch_size}, {device.type} ({hw}), torch {torch.__version__}",
             f"{'method':<40} {'median s':>9} {'p90 s':>9} {'x sum':>7}"]
    for r in rows:
        lines.append(f"{r['label']:<40} {r['median_s']:>9.3f} {r['p90_s']:>9.3f} {r['ratio']:>7.2f}")
    return "\n".join(lines)
