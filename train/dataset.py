"""The training set: the torch-free nuScenes reader (`fuller.data`) as a torch ``Dataset``.

Small splits (v1.0-mini, the synthetic sets) keep each loaded sample in memory: without random
augmentation a sample never changes, and loading it (JPEG decoding, sweep aggregation, map
rasterisation) costs more than a tiny training step. Larger ones (trainval: ~28k samples, several
MB each) are read from disk every time.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from fuller.config import FullerConfig
from fuller.data import NuScenesDataset, Sample

MEMORY_CACHE_MAX_SAMPLES = 2000


class TrainingSet(Dataset):
    """``reader`` as a torch dataset, its samples kept in memory once read (``cache``; by default
    for splits up to ``MEMORY_CACHE_MAX_SAMPLES``). Other attributes are the reader's (``nusc``,
    ``samples``, ``split``), so a cached split also serves the evaluation, which reads them; the
    ablation shares one per split across all its runs."""

    def __init__(self, reader: NuScenesDataset, cache: bool | None = None) -> None:
        self.reader = reader
        self.cache: dict[int, Sample] | None = None
        if cache if cache is not None else len(reader) <= MEMORY_CACHE_MAX_SAMPLES:
            self.cache = {}

    @classmethod
    def open(cls, cfg: FullerConfig, data_root: str | Path, split: str) -> "TrainingSet":
        return cls(NuScenesDataset(cfg, data_root, split))

    def __len__(self) -> int:
        return len(self.reader)

    def __getattr__(self, name: str):
        if name in ("reader", "cache"):  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.reader, name)

    def __getitem__(self, index: int) -> Sample:
        if self.cache is None:
            return self.reader[index]
        if index not in self.cache:
            self.cache[index] = self.reader[index]
        return self.cache[index]
