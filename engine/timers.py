"""Per-stage wall-clock timers, built into the engine (as CUDA-BEVFusion's runtime has them)."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np


class StageTimers:
    """``with timers("stage"):`` records the seconds of each call; `summary` gives median and p95."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.samples[stage].append(time.perf_counter() - start)

    def last(self) -> dict[str, float]:
        """Milliseconds of the latest call of each stage."""
        return {stage: values[-1] * 1e3 for stage, values in self.samples.items() if values}

    def summary(self, skip: int = 0) -> dict[str, dict[str, float]]:
        """Per stage: median and p95 in milliseconds and the count, ignoring the first ``skip`` calls."""
        out = {}
        for stage, values in self.samples.items():
            kept = np.asarray(values[skip:]) * 1e3
            if kept.size:
                out[stage] = {"median_ms": float(np.median(kept)), "p95_ms": float(np.percentile(kept, 95)),
                              "count": int(kept.size)}
        return out

    def reset(self) -> None:
        self.samples.clear()
