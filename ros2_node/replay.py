"""Offline replay: a recorded bag through the node's pipeline, outputs written next to the inputs.

`replay` feeds every message of the bag, in log-time order, to the same `PerceptionPipeline` the
live node runs, and writes a new MCAP holding the input messages unchanged plus everything the node
would have published (stamped like the frame they belong to), so Foxglove shows them together.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from fuller.engine.engine import Engine

from .bag import BagError, BagWriter, read_bag, topics
from .params import NodeParams
from .pipeline import LOG, PerceptionPipeline


@dataclass
class ReplayReport:
    bag: Path
    out: Path
    messages: int
    frames: int
    seconds: float
    counters: Counter
    clouds_without_cameras: int
    stages: dict[str, dict[str, float]]  # per stage: median_ms, p95_ms, count

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def check_topics(bag: Path, pipeline: PerceptionPipeline) -> dict[str, tuple[str, int]]:
    """The bag must hold the node's input topics with the types it subscribes with."""
    present = topics(bag)
    for topic, typename in pipeline.subscriptions.items():
        if topic in present and present[topic][0] != typename:
            raise BagError(f"{bag}: topic {topic} holds {present[topic][0]}, the node subscribes to it as "
                           f"{typename} (image_transport / topic parameters)")
    needed = [pipeline.params.lidar_topic, *pipeline.image_topics]
    if missing := [t for t in needed if t not in present]:
        raise BagError(f"{bag}: no messages on {', '.join(missing)}; topics in the bag: {', '.join(sorted(present))}")
    return present


def replay(bag: str | Path, engine: Engine, params: NodeParams, out: str | Path, progress: bool = True,
           log: Callable[[str], None] = LOG.warning) -> ReplayReport:
    bag, out = Path(bag), Path(out)
    if out.resolve() == bag.resolve():
        raise BagError(f"{out}: the output would overwrite the input bag")
    pipeline = PerceptionPipeline(engine, params, log)
    total = sum(count for _, count in check_topics(bag, pipeline).values())
    messages, last = 0, 0
    start = time.perf_counter()
    with BagWriter(out) as writer:
        for m in tqdm(read_bag(bag), total=total, desc="replay", unit="msg", disable=not progress,
                      dynamic_ncols=True):
            writer.write(m.topic, m.typename, m.data, m.log_time_ns)
            messages, last = messages + 1, max(last, m.log_time_ns)
            for o in pipeline.handle(m.topic, m.data):
                writer.write(o.topic, o.typename, o.msg, o.stamp_ns)
        for o in [*pipeline.flush(), pipeline.diagnostics(last)]:
            writer.write(o.topic, o.typename, o.msg, o.stamp_ns)
    seconds = time.perf_counter() - start
    return ReplayReport(bag, out, messages, pipeline.counters["frames"], seconds, pipeline.counters,
                        pipeline.sync.clouds_without_cameras,
                        {**engine.timers.summary(), **pipeline.timers.summary()})
