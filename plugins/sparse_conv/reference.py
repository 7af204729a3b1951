"""Float64 reference of one sparse convolution layer (SPEC.md), written for clarity, not speed.

Each output site is found and summed one at a time from a dict of input coordinates, the way the
definition reads, so it shares no code with the index ops and the standard-op composition it
checks. Also home of the attribute and input checks (`ConvGeometry`, `check_coords`) every
implementation of the index ops applies.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

AXES = "xyz"
GEOMETRY_ATTRIBUTES = ("kernel", "stride", "padding", "shape")


@dataclass(frozen=True)
class ConvGeometry:
    """A layer's geometry, per axis (x, y, z), validated on construction: the index ops' attributes."""

    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    shape: tuple[int, int, int]  # input grid (X, Y, Z)
    subm: bool
    out_capacity: int

    def __post_init__(self) -> None:
        for name, values, low in (("kernel", self.kernel, 1), ("stride", self.stride, 1),
                                  ("padding", self.padding, 0), ("shape", self.shape, 1)):
            if len(values) != 3 or any(int(v) != v or v < low for v in values):
                raise ValueError(f"sparse conv geometry: {name}: expected three integers >= {low} (x, y, z), "
                                 f"got {values}")
        if self.out_capacity < 0:
            raise ValueError(f"sparse conv geometry: out_capacity: expected >= 0, got {self.out_capacity}")
        if self.subm and (self.stride != (1, 1, 1) or any(k % 2 == 0 or p != k // 2
                                                          for k, p in zip(self.kernel, self.padding))):
            raise ValueError(f"sparse conv geometry: subm: expected stride 1 and padding = kernel // 2 with odd "
                             f"kernels, got kernel {self.kernel} stride {self.stride} padding {self.padding}")
        if any(self.out_shape_axis(a) < 1 for a in range(3)):
            raise ValueError(f"sparse conv geometry: kernel {self.kernel} with padding {self.padding} does not fit "
                             f"the grid {self.shape}")

    @classmethod
    def from_attributes(cls, **attrs: int) -> "ConvGeometry":
        """From an ONNX node's scalar attributes: kernel_x, ..., shape_z, and for ``SparseSites``
        subm and out_capacity (``SparseRulebook`` has neither: its sites are an input)."""
        per_axis = {name: tuple(int(attrs[f"{name}_{a}"]) for a in AXES) for name in GEOMETRY_ATTRIBUTES}
        return cls(**per_axis, subm=bool(attrs.get("subm", 0)), out_capacity=int(attrs.get("out_capacity", 0)))

    def attributes(self, sites: bool = True) -> dict[str, int]:
        """The node's attributes (the inverse of `from_attributes`): ``SparseSites``' with ``sites``,
        else ``SparseRulebook``'s."""
        attrs = {f"{name}_{a}": int(v) for name in GEOMETRY_ATTRIBUTES for a, v in zip(AXES, getattr(self, name))}
        return {**attrs, "subm": int(self.subm), "out_capacity": int(self.out_capacity)} if sites else attrs

    def out_shape_axis(self, axis: int) -> int:
        if self.subm:
            return self.shape[axis]
        return (self.shape[axis] + 2 * self.padding[axis] - self.kernel[axis]) // self.stride[axis] + 1

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return tuple(self.out_shape_axis(a) for a in range(3))

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1] * self.kernel[2]


def site_keys(coords: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """int64 keys ``((b * X + x) * Y + y) * Z + z`` of (b, x, y, z) rows on a grid of ``shape``."""
    c = coords.astype(np.int64)
    return ((c[:, 0] * shape[0] + c[:, 1]) * shape[1] + c[:, 2]) * shape[2] + c[:, 3]


def check_coords(coords: np.ndarray, count: np.ndarray, shape: tuple[int, int, int], op: str,
                 name: str = "coords") -> int:
    """An (N, 4) int32 site list with its (1,) count: valid rows inside ``shape`` and strictly
    ascending by key (SPEC). Returns the count; errors name the op, the input and the row."""
    if coords.ndim != 2 or coords.shape[1] != 4 or coords.dtype != np.int32:
        raise ValueError(f"{op}: {name}: expected (N, 4) int32, got {coords.shape} {coords.dtype}")
    if np.shape(count) != (1,) or not np.issubdtype(np.asarray(count).dtype, np.integer):
        raise ValueError(f"{op}: count: expected (1,) int32, got {np.shape(count)} {np.asarray(count).dtype}")
    c = int(np.asarray(count)[0])
    if not 0 <= c <= len(coords):
        raise ValueError(f"{op}: count: expected 0 <= count <= {len(coords)} (rows of {name}), got {c}")
    valid = coords[:c]
    bad = np.flatnonzero((valid[:, 0] < 0) | (valid[:, 1:] < 0).any(1) | (valid[:, 1:] >= shape).any(1))
    if bad.size:
        raise ValueError(f"{op}: {name}: row {bad[0]} = {valid[bad[0]].tolist()} is outside "
                         f"batch >= 0 and the grid {shape}")
    steps = np.flatnonzero(np.diff(site_keys(valid, shape)) <= 0)
    if steps.size:
        r = int(steps[0]) + 1
        raise ValueError(f"{op}: {name}: row {r} = {valid[r].tolist()} does not come after row {r - 1} = "
                         f"{valid[r - 1].tolist()} in key order (valid rows must be sorted by key and unique)")
    return c


def sparse_conv3d_reference(features: np.ndarray, coords: np.ndarray, count: np.ndarray, weight: np.ndarray,
                            bias: np.ndarray, geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer, ``weight`` (Kx, Ky, Kz, Cin, Cout), ``bias`` (Cout,): (out_features float64
    (out_capacity, Cout), out_coords int32 (out_capacity, 4), out_count (1,) int32), rows past the
    count zero and -1. Input rows in any order (sites unique); output sites as SPEC orders them."""
    c = int(count[0])
    sites: dict[tuple[int, ...], int] = {}
    for row in range(c):
        key = tuple(int(v) for v in coords[row])
        if key in sites:
            raise ValueError(f"sparse_conv3d_reference: coords: rows {sites[key]} and {row} are the same site "
                             f"{list(key)}")
        sites[key] = row
    taps = list(itertools.product(*(range(k) for k in geom.kernel)))
    if geom.subm:
        outputs = [tuple(int(v) for v in coords[row]) for row in range(c)]
    else:
        found = set()
        for (b, *p) in sites:
            for tap in taps:
                num = [p[a] + geom.padding[a] - tap[a] for a in range(3)]
                if all(v % s == 0 and 0 <= v // s < o for v, s, o in zip(num, geom.stride, geom.out_shape)):
                    found.add((b, *(v // s for v, s in zip(num, geom.stride))))
        ox, oy, oz = geom.out_shape
        outputs = sorted(found, key=lambda s: ((s[0] * ox + s[1]) * oy + s[2]) * oz + s[3])
    outputs = outputs[: geom.out_capacity]
    cout = weight.shape[4]
    out = np.zeros((geom.out_capacity, cout))
    out_coords = np.full((geom.out_capacity, 4), -1, dtype=np.int32)
    w = weight.astype(np.float64)
    for r, (b, *o) in enumerate(outputs):
        out_coords[r] = (b, *o)
        acc = bias.astype(np.float64).copy()
        for tap in taps:
            p = tuple(o[a] * geom.stride[a] - geom.padding[a] + tap[a] for a in range(3))
            row = sites.get((b, *p))
            if row is not None:
                acc += features[row].astype(np.float64) @ w[tap]
        out[r] = acc
    return out, out_coords, np.array([len(outputs)], dtype=np.int32)
