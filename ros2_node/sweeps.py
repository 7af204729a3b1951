"""Multi-sweep point clouds on a live stream, as the network was trained on them.

Training read clouds with the devkit's ``LidarPointCloud.from_file_multisweep``: the keyframe
sweep and the ``sweeps - 1`` sweeps before it, each with points closer than 1 m (a square in x, y)
removed in its own frame, moved into the keyframe's LiDAR frame through the ego poses at both
times, with a fifth column dt = keyframe time - sweep time (s); keyframe points first. The node
keeps the last clouds it received and builds the same thing from TF, so a vehicle feeds the network
what it learnt from.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from .transforms import TransformTree

MIN_DISTANCE_M = 1.0  # from_file_multisweep's default, which training used


@dataclass(frozen=True)
class Sweep:
    stamp_ns: int
    frame_id: str
    points: np.ndarray  # (P, 4) float32 x, y, z, intensity in frame_id


def remove_close(points: np.ndarray, radius: float = MIN_DISTANCE_M) -> np.ndarray:
    """Drop points with |x| < radius and |y| < radius (the devkit's ``remove_close``: the roof)."""
    close = (np.abs(points[:, 0]) < radius) & (np.abs(points[:, 1]) < radius)
    return points[~close]


class SweepAccumulator:
    """Recent sweeps by stamp; ``aggregate`` builds the (P, 5) multi-sweep cloud of one of them."""

    def __init__(self, sweeps: int, keep: int = 32) -> None:
        if sweeps < 1:
            raise ValueError(f"sweeps: expected >= 1, got {sweeps}")
        self.sweeps, self.keep = sweeps, max(keep, sweeps)
        self._stamps: list[int] = []
        self._sweeps: list[Sweep] = []

    def add(self, sweep: Sweep) -> None:
        """Keep a sweep, its close points removed once here rather than at every frame it joins."""
        sweep = Sweep(sweep.stamp_ns, sweep.frame_id, remove_close(sweep.points))
        i = bisect.bisect_left(self._stamps, sweep.stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == sweep.stamp_ns:
            self._sweeps[i] = sweep
        else:
            self._stamps.insert(i, sweep.stamp_ns)
            self._sweeps.insert(i, sweep)
        del self._stamps[:-self.keep], self._sweeps[:-self.keep]

    def aggregate(self, stamp_ns: int, tf: TransformTree, fixed_frame: str) -> np.ndarray:
        """(P, 5) float32 x, y, z, intensity, dt in the frame of the sweep at ``stamp_ns``.

        Raises `TransformError` when the ego motion to an earlier sweep is not in TF (the frame is
        dropped rather than fed fewer sweeps than training saw), KeyError when the reference sweep
        itself was never added."""
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i == len(self._stamps) or self._stamps[i] != stamp_ns:
            raise KeyError(f"no sweep at {stamp_ns} ns")
        ref = self._sweeps[i]
        parts = []
        for sweep in reversed(self._sweeps[max(0, i - self.sweeps + 1):i + 1]):
            xyz = sweep.points
            if sweep is not ref:
                m = tf.lookup_full(ref.frame_id, ref.stamp_ns, sweep.frame_id, sweep.stamp_ns, fixed_frame)
                moved = xyz[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
                xyz = np.concatenate([moved.astype(np.float32), xyz[:, 3:4]], axis=1)
            dt = np.full((len(xyz), 1), (ref.stamp_ns - sweep.stamp_ns) * 1e-9, dtype=np.float32)
            parts.append(np.concatenate([xyz, dt], axis=1))
        return np.concatenate(parts, axis=0)
