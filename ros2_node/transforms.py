"""TF without ROS: a buffer of `tf2_msgs/TFMessage` transforms, looked up between frames and times.

The node and the replay feed ``/tf`` and ``/tf_static`` into the same `TransformTree`, so the
extrinsics and ego motion a replay sees are exactly what the live node sees. Semantics follow tf2:
a ``TransformStamped`` gives the pose of ``child_frame_id`` in ``header.frame_id``; dynamic
transforms are interpolated (translation linearly, rotation by slerp) and never extrapolated;
``lookup_full`` goes through a fixed frame to relate two frames at two different times.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from fuller.engine.frame import FrameError

from .types import stamp_ns


class TransformError(FrameError):
    """A transform that is not (yet) known: missing frame, no path, or a time outside the buffer."""


def matrix(translation, quaternion_xyzw) -> np.ndarray:
    """4x4 float64 pose from a translation and a ROS (x, y, z, w) quaternion."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(np.asarray(quaternion_xyzw, dtype=np.float64)).as_matrix()
    m[:3, 3] = translation
    return m


def transform_matrix(transform) -> np.ndarray:
    """4x4 pose of a ``geometry_msgs/Transform``."""
    t, q = transform.translation, transform.rotation
    return matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def _frame(name: str) -> str:
    return name.lstrip("/")  # tf2 ignores a leading slash


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)  # sorted, dynamic edges only
    translations: list[np.ndarray] = field(default_factory=list)
    quaternions: list[np.ndarray] = field(default_factory=list)
    static_matrix: np.ndarray | None = None  # static edges only

    def at(self, ns: int, child: str) -> np.ndarray:
        if self.static:
            return self.static_matrix
        i = bisect.bisect_left(self.stamps, ns)
        if i < len(self.stamps) and self.stamps[i] == ns:
            return matrix(self.translations[i], self.quaternions[i])
        if i == 0 or i == len(self.stamps):
            raise TransformError(f"tf {self.parent} -> {child}: lookup at {ns * 1e-9:.6f} s would extrapolate "
                                 f"(buffer holds {self.stamps[0] * 1e-9:.6f} .. {self.stamps[-1] * 1e-9:.6f} s)")
        s0, s1 = self.stamps[i - 1], self.stamps[i]
        f = (ns - s0) / (s1 - s0)
        translation = (1 - f) * self.translations[i - 1] + f * self.translations[i]
        rotation = Slerp([0.0, 1.0], Rotation.from_quat([self.quaternions[i - 1], self.quaternions[i]]))([f])
        return matrix(translation, rotation.as_quat()[0])


class TransformTree:
    """Static and dynamic transforms by child frame; ``cache_s`` of dynamic history is kept."""

    def __init__(self, cache_s: float = 10.0) -> None:
        self.cache_ns = int(cache_s * 1e9)
        self._edges: dict[str, _Edge] = {}

    def add(self, tf_message, static: bool) -> None:
        """Every transform of a ``tf2_msgs/TFMessage`` (from /tf, or /tf_static when ``static``)."""
        for ts in tf_message.transforms:
            t, q = ts.transform.translation, ts.transform.rotation
            self.set(_frame(ts.header.frame_id), _frame(ts.child_frame_id), stamp_ns(ts.header),
                     (t.x, t.y, t.z), (q.x, q.y, q.z, q.w), static)

    def set(self, parent: str, child: str, ns: int, translation, quaternion_xyzw, static: bool) -> None:
        q = np.asarray(quaternion_xyzw, dtype=np.float64)
        norm = np.linalg.norm(q)
        if not np.isfinite(q).all() or not np.isfinite(translation).all() or norm < 1e-9:
            raise TransformError(f"tf {parent} -> {child}: non-finite translation or degenerate quaternion {q}")
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static:
            edge = self._edges[child] = _Edge(parent, static)
        value = (np.asarray(translation, dtype=np.float64), q / norm)
        if static:
            edge.static_matrix = matrix(*value)
            return
        i = bisect.bisect_left(edge.stamps, ns)
        if i < len(edge.stamps) and edge.stamps[i] == ns:
            edge.translations[i], edge.quaternions[i] = value
        else:
            edge.stamps.insert(i, ns)
            edge.translations.insert(i, value[0])
            edge.quaternions.insert(i, value[1])
        cut = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_ns)
        if cut:
            del edge.stamps[:cut], edge.translations[:cut], edge.quaternions[:cut]

    @property
    def frames(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def _chain(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to the root."""
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
            if len(chain) > 64:
                raise TransformError(f"tf: the frames above {frame} form a loop")
        return chain

    def _to_ancestor(self, chain: list[str], ancestor: str, ns: int) -> np.ndarray:
        m = np.eye(4)
        for child in chain[:chain.index(ancestor)]:
            m = self._edges[child].at(ns, child) @ m
        return m

    def lookup(self, target: str, source: str, ns: int) -> np.ndarray:
        """4x4 mapping points in ``source`` to ``target``, both at time ``ns``."""
        target, source = _frame(target), _frame(source)
        for name in (target, source):
            if name not in self.frames:
                raise TransformError(f"tf: frame {name!r} has not been published (known: {sorted(self.frames)})")
        up_target, up_source = self._chain(target), self._chain(source)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise TransformError(f"tf: {source!r} and {target!r} are not connected "
                                 f"(roots {up_source[-1]!r} and {up_target[-1]!r})")
        return np.linalg.inv(self._to_ancestor(up_target, common, ns)) @ self._to_ancestor(up_source, common, ns)

    def lookup_full(self, target: str, target_ns: int, source: str, source_ns: int, fixed: str) -> np.ndarray:
        """Points of ``source`` at ``source_ns`` into ``target`` at ``target_ns``, through ``fixed``:
        the ego motion between two sensor times (tf2's lookupTransform with a fixed frame)."""
        if target_ns == source_ns:
            return self.lookup(target, source, target_ns)
        return self.lookup(target, fixed, target_ns) @ self.lookup(fixed, source, source_ns)
