"""Which samples each step reads: a pure function of (seed, step, rank), so resume is exact.

The sample stream is an endless chain of seeded permutations of the dataset (one per epoch); step
s of a run with world size W and per-rank batch B reads positions [s*W*B, (s+1)*W*B) of it, rank r
the r-th slice. No sampler state needs saving: resuming at step s reads exactly what an
uninterrupted run would have read.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch


class StepBatchSampler:
    """Batch sampler (for ``DataLoader(batch_sampler=...)``) yielding steps ``start .. stop-1``."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        return [int(self._permutation(p // self.n)[p % self.n]) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
