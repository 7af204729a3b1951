"""`fuller bench data`: how many samples per second the training loader delivers.

A training step at batch B is bounded by the loader when B / (loader samples/s) exceeds the step's
compute time (`fuller bench train` on the same machine). The loader is the one training uses
(`TrainingSet` without its memory cache, `Collator`, the config's ``train.num_workers`` or the
given count), read past a warm-up of the worker processes, on whatever root it is given: the real
dataset, or a synthetic one at nuScenes rates and sizes.
"""
from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import DataLoader

from fuller.config import FullerConfig
from fuller.data import NuScenesDataset

from .batching import Collator
from .dataset import TrainingSet


def bench_loader(cfg: FullerConfig, data_root: str | Path, split: str, workers: int, batches: int,
                 warmup: int = 1) -> dict:
    """Samples/s of the training loader over ``batches`` batches after ``warmup`` untimed ones."""
    dataset = TrainingSet(NuScenesDataset(cfg, data_root, split), cache=False)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=Collator(cfg),
                        num_workers=workers, persistent_workers=False)
    samples, start = 0, None
    for i, batch in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        if i >= warmup:
            samples += batch.inputs.batch_size
        if i + 1 >= warmup + batches:
            break
    if start is None or samples == 0:
        raise ValueError(f"bench_loader: the split has fewer than {warmup + 1} batches of {cfg.train.batch_size}")
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch_size": cfg.train.batch_size, "samples": samples, "seconds": seconds,
            "samples_per_s": samples / seconds, "ms_per_sample": 1000 * seconds / samples}


def format_loader_bench(rows: list[dict], cfg: FullerConfig, root: str | Path) -> str:
    lines = [f"training loader, config {cfg.name} ({cfg.geometry.sweeps} sweeps, {len(cfg.geometry.cameras)} cameras "
             f"at {cfg.geometry.image_size[1]}x{cfg.geometry.image_size[0]}), data {root}",
             f"{'workers':>7} {'samples':>8} {'samples/s':>10} {'ms/sample':>10} {'batch s':>8}"]
    for r in rows:
        lines.append(f"{r['workers']:>7} {r['samples']:>8} {r['samples_per_s']:>10.2f} {r['ms_per_sample']:>10.1f} "
                     f"{r['batch_size'] / r['samples_per_s']:>8.2f}")
    lines.append("A training step is loader-bound when its compute time (fuller bench train) is below 'batch s'.")
    return "\n".join(lines)
