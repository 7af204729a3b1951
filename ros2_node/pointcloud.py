"""`sensor_msgs/PointCloud2` <-> NumPy, for whatever field layout a LiDAR driver publishes.

Drivers differ in everything the message lets them choose: field order and types (intensity as
float32 or uint8, extra ring/time fields), padding inside a point (`point_step`) and at the end of a
row (`row_step`, organised clouds), and byte order. The bytes are read through one strided
structured view built from the message's own description, so no layout is assumed and nothing is
copied until the wanted fields are taken out in native byte order.

Messages from rosbags (``data`` a uint8 ndarray) and from rclpy (``array.array('B')``, ``bytes``)
are read the same way.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .types import POINTCLOUD2, MessageError, msg_class

POINT_FIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32), 8: np.dtype(np.float64),
}
POINT_COLUMNS = ("x", "y", "z", "intensity")


def message_bytes(data) -> np.ndarray:
    """A message's ``data`` (ndarray, array.array, bytes, list of ints) as a flat uint8 array, without
    copying where the buffer allows it."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data.reshape(-1), dtype=np.uint8)
    try:
        view = memoryview(data)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    return np.frombuffer(view.cast("B"), dtype=np.uint8)


def _field_dtype(field, byteorder: str) -> np.dtype:
    if field.datatype not in POINT_FIELD_DTYPES:
        raise MessageError(f"PointCloud2.fields[{field.name!r}].datatype: expected one of "
                           f"{sorted(POINT_FIELD_DTYPES)} (INT8..FLOAT64), got {field.datatype}")
    base = POINT_FIELD_DTYPES[field.datatype].newbyteorder(byteorder)
    # count 0, written by some drivers for a scalar, is read as 1: the field still has to fit.
    return np.dtype((base, (field.count,))) if field.count > 1 else base


def _message_dtype(msg, has_points: bool) -> np.dtype:
    """The dtype of one point as the message lays it out (its offsets, padding and byte order).
    Fields must lie within `point_step` only when there are points to read."""
    byteorder = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if not field.name:
            raise MessageError("PointCloud2.fields: expected non-empty field names, got an empty one")
        if field.name in names:
            raise MessageError(f"PointCloud2.fields: expected unique names, got {field.name!r} twice")
        dtype = _field_dtype(field, byteorder)
        if field.offset < 0 or (has_points and field.offset + dtype.itemsize > msg.point_step):
            raise MessageError(f"PointCloud2.fields[{field.name!r}]: expected to lie within point_step "
                               f"{msg.point_step}, got bytes {field.offset}..{field.offset + dtype.itemsize}")
        names.append(field.name)
        formats.append(dtype)
        offsets.append(field.offset)
    end = max([o + f.itemsize for o, f in zip(offsets, formats)] + [msg.point_step, 0])
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": end})


def _strided_view(msg) -> np.ndarray:
    """(height, width) structured view on the message bytes, after checking the layout fits the data."""
    height, width = int(msg.height), int(msg.width)
    if height * width == 0:
        return np.empty((height, width), dtype=_message_dtype(msg, has_points=False))
    if msg.point_step <= 0:
        raise MessageError(f"PointCloud2.point_step: expected > 0 for {height * width} points, got {msg.point_step}")
    dtype = _message_dtype(msg, has_points=True)
    if msg.row_step < width * msg.point_step:
        raise MessageError(f"PointCloud2.row_step: expected >= width * point_step = {width * msg.point_step}, "
                           f"got {msg.row_step}")
    data = message_bytes(msg.data)
    if data.size < height * msg.row_step:
        raise MessageError(f"PointCloud2.data: expected height * row_step = {height * msg.row_step} bytes, "
                           f"got {data.size}")
    return np.ndarray((height, width), dtype=dtype, buffer=data, strides=(msg.row_step, msg.point_step))


def cloud_to_array(msg) -> np.ndarray:
    """All points as a packed structured array (height * width,), one field per PointField in the
    message's order, native byte order; fields with count > 1 are subarrays."""
    view = _strided_view(msg)
    native = np.dtype([(name, view.dtype.fields[name][0].newbyteorder("=")) for name in view.dtype.names])
    out = np.empty(view.shape, dtype=native)
    for name in view.dtype.names:
        out[name] = view[name]
    return out.reshape(-1)


def points_from_cloud(msg) -> tuple[np.ndarray, int]:
    """(P, 4) float32 x, y, z, intensity of the finite points, and how many points were dropped.

    Organised clouds carry NaN for missed returns, and `is_dense` is not always truthful, so rows
    with any non-finite column are dropped regardless of the flag. Other fields are ignored."""
    view = _strided_view(msg)
    present = view.dtype.names
    for name in POINT_COLUMNS:
        if name not in present:
            raise MessageError(f"PointCloud2.fields: expected a {name!r} field (need {', '.join(POINT_COLUMNS)}), "
                               f"got fields {', '.join(present) or '(none)'}")
        if view.dtype.fields[name][0].shape:
            raise MessageError(f"PointCloud2.fields[{name!r}].count: expected 1, got "
                               f"{view.dtype.fields[name][0].shape[0]}")
    points = np.empty((*view.shape, len(POINT_COLUMNS)), dtype=np.float32)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf and is dropped
        for column, name in enumerate(POINT_COLUMNS):
            points[..., column] = view[name]
    points = points.reshape(-1, len(POINT_COLUMNS))
    finite = np.isfinite(points).all(axis=1)
    dropped = int(points.shape[0] - np.count_nonzero(finite))
    return (points[finite] if dropped else points), dropped


def _datatype_code(dtype: np.dtype, name: str) -> int:
    for code, candidate in POINT_FIELD_DTYPES.items():
        if dtype.kind == candidate.kind and dtype.itemsize == candidate.itemsize:
            return code
    raise ValueError(f"array: field {name!r} has dtype {dtype}; expected one of "
                     f"{', '.join(str(d) for d in POINT_FIELD_DTYPES.values())}")


def cloud_from_array(array: np.ndarray, header, *, big_endian: bool = False, point_step: int | None = None,
                     height: int = 1):
    """A PointCloud2 from a structured array: fields in dtype order at the dtype's offsets,
    `point_step` (>= itemsize) adds padding after each point, `height` > 1 makes it organised."""
    array = np.asarray(array)
    if array.dtype.names is None:
        raise ValueError(f"array: expected a structured array, got dtype {array.dtype}")
    array = array.reshape(-1)
    step = array.dtype.itemsize if point_step is None else int(point_step)
    if step < array.dtype.itemsize:
        raise ValueError(f"point_step: expected >= the dtype's itemsize {array.dtype.itemsize}, got {step}")
    if height < 1 or array.size % height:
        raise ValueError(f"height: expected a positive divisor of the {array.size} points, got {height}")
    byteorder = ">" if big_endian else "<"
    field_class = msg_class("sensor_msgs/msg/PointField")
    fields, formats, offsets, dense = [], [], [], True
    for name in array.dtype.names:
        dtype, offset = array.dtype.fields[name][:2]
        base, shape = (dtype.base, dtype.shape) if dtype.shape else (dtype, ())
        if len(shape) > 1:
            raise ValueError(f"array: field {name!r} expected scalar or 1-D subarray, got shape {shape}")
        code = _datatype_code(base, name)
        count = shape[0] if shape else 1
        fields.append(field_class(name=name, offset=offset, datatype=code, count=count))
        formats.append(np.dtype((base.newbyteorder(byteorder), shape)) if shape else base.newbyteorder(byteorder))
        offsets.append(offset)
        if base.kind == "f":
            dense = dense and bool(np.isfinite(array[name]).all())
    wire = np.zeros(array.size, dtype={"names": list(array.dtype.names), "formats": formats,
                                       "offsets": offsets, "itemsize": step})
    for name in array.dtype.names:
        wire[name] = array[name]
    width = array.size // height
    return msg_class(POINTCLOUD2)(header=header, height=height, width=width, fields=fields,
                                  is_bigendian=bool(big_endian), point_step=step, row_step=width * step,
                                  data=wire.view(np.uint8).reshape(-1), is_dense=dense)


def cloud_from_points(points: np.ndarray, header, names: Sequence[str] = POINT_COLUMNS):
    """A float32 PointCloud2, one field per column of `points` (P, len(names))."""
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != len(names):
        raise ValueError(f"points: expected shape (P, {len(names)}) for fields {tuple(names)}, got {points.shape}")
    array = np.empty(points.shape[0], dtype=[(name, np.float32) for name in names])
    for column, name in enumerate(names):
        array[name] = points[:, column]
    return cloud_from_array(array, header)
