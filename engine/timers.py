"""Per-stage wall-clock timers, built into the engine (as CUDA-BEVFusion's runtime has them)."""
from __future__ import annotations

import time
from collections import defaultdict, deque
from contextlib import contextmanager

import numpy as np


class StageTimers:
    """``with timers("stage"):`` records the seconds of each call; `summary` gives median and p95.

    Only the latest ``window`` calls per stage are kept, so an engine running for days inside the
    ROS 2 node holds bounded memory; its statistics are over that recent window."""

    def __init__(self, window: int = 10_000) -> None:
        self.samples: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

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
            kept = np.asarray(values, dtype=np.float64)[skip:] * 1e3
            if kept.size:
                out[stage] = {"median_ms": float(np.median(kept)), "p95_ms": float(np.percentile(kept, 95)),
                              "count": int(kept.size)}
        return out

    def reset(self) -> None:
        self.samples.clear()
