"""``fuller bench infer``: per-stage latency of several backends, measured side by side.

Frames are loaded once; every round runs each engine on the same frame in turn, so machine noise
hits all backends alike and their ratios are fair. Reported per stage: median and p95 in ms, and
frames per second from the median end-to-end time.
"""
from __future__ import annotations

import os
import platform

from .engine import STAGES, Engine


def bench_engines(engines: dict[str, Engine], frames: list[tuple], rounds: int, warmup: int,
                  progress: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """``frames``: (calibration, images, points). Returns {row: StageTimers.summary()}."""
    from tqdm import tqdm

    for engine in engines.values():
        engine.timers.reset()
    for r in tqdm(range(warmup + rounds), desc="bench infer", unit="round", disable=not progress,
                  dynamic_ncols=True):
        calibration, images, points = frames[r % len(frames)]
        for engine in engines.values():
            engine.update_calibration(calibration)
            engine.infer(images, points)
    return {name: engine.timers.summary(skip=warmup) for name, engine in engines.items()}


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def format_bench(results: dict[str, dict[str, dict[str, float]]], descriptions: dict[str, str],
                 reference: str | None = None) -> str:
    stages = [s for s in STAGES if any(s in r for r in results.values())]
    head = "| backend | " + " | ".join(f"{s} median / p95 (ms)" for s in stages) + " | frames/s |"
    if reference:
        head += f" total vs {reference} |"
    lines = [head, "|---|" + "---:|" * (len(stages) + 1 + bool(reference))]
    ref_total = results.get(reference, {}).get("total", {}).get("median_ms") if reference else None
    for name, summary in results.items():
        cells = [f"{summary[s]['median_ms']:.1f} / {summary[s]['p95_ms']:.1f}" if s in summary else "-" for s in stages]
        total = summary.get("total", {}).get("median_ms", float("nan"))
        row = f"| {name} | " + " | ".join(cells) + f" | {1000.0 / total:.2f} |"
        if reference:
            row += f" {total / ref_total:.2f}x |" if ref_total else " - |"
        lines.append(row)
    lines += ["", f"hardware: {hardware()}"]
    lines += [f"{name}: {text}" for name, text in descriptions.items()]
    counts = {s.get("total", {}).get("count", 0) for s in results.values()}
    lines.append(f"timed frames per backend: {', '.join(map(str, sorted(counts)))}")
    return "\n".join(lines)

