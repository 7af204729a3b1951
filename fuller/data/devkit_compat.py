"""A fix for nuscenes-devkit 1.2.0's map rasterisation on Shapely 2, installed when the reader is
imported.

`NuScenesMapExplorer.mask_for_lines` iterates a ``MultiLineString`` directly (``for line in
lines``), which Shapely 2 refuses (``TypeError: 'MultiLineString' object is not iterable``), and
reads ``.coords`` of a ``GeometryCollection``, which no Shapely allows. On real nuScenes maps a
divider that the patch cuts into pieces (most frames near curved roads) is exactly that, so
`get_map_mask` crashes. The replacement draws every line part of the clipped geometry the way the
devkit draws one line (``cv2.polylines``, thickness 2, coordinates truncated to int32), so masks
are the devkit's wherever the devkit does not crash.
"""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np
from nuscenes.map_expansion.map_api import NuScenesMapExplorer
from shapely.geometry.base import BaseGeometry


def _parts(geometry: BaseGeometry) -> Iterator[BaseGeometry]:
    """The single-part geometries of a (possibly multi-part, possibly nested) geometry."""
    if hasattr(geometry, "geoms"):
        for part in geometry.geoms:
            yield from _parts(part)
    elif not geometry.is_empty:
        yield geometry


def mask_for_lines(lines: BaseGeometry, mask: np.ndarray) -> np.ndarray:
    """Draw every line part of ``lines``, in canvas pixels, into ``mask`` (points, where a line
    touches the patch's edge, draw nothing, as in the devkit)."""
    for part in _parts(lines):
        if part.geom_type in ("LineString", "LinearRing"):
            coords = np.asarray(part.coords, np.int32).reshape(-1, 2)
            cv2.polylines(mask, [coords], False, 1, 2)
    return mask


def install() -> None:
    NuScenesMapExplorer.mask_for_lines = staticmethod(mask_for_lines)
