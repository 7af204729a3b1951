"""Map masks of lines that a patch cuts into pieces, as on real nuScenes maps near curved roads.

nuscenes-devkit 1.2.0's `get_map_mask` crashes on Shapely 2 when a clipped divider is a
``MultiLineString`` (`fuller.data.devkit_compat`). A curved, many-node divider that leaves and
re-enters the patch is rasterised with the devkit's own `get_map_mask` and compared with an
independent rasterisation: the distance of every pixel to the same clipped line, from Shapely.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
from nuscenes.map_expansion.map_api import NuScenesMap
from shapely import affinity
from shapely.geometry import LineString, box

from fuller.data import devkit_compat

LOCATION = "boston-seaport"


def curved_divider_map(synth_root: str, root: Path, centre: tuple[float, float], half: float,
                       angle: float) -> LineString:
    """A copy of the synthetic map whose only road divider is a sine wave of 81 nodes along the top
    edge of the patch (rotated by ``angle`` degrees), crossing it nine times. Returns its line."""
    (root / "maps" / "expansion").mkdir(parents=True)
    data = json.loads((Path(synth_root) / "maps" / "expansion" / f"{LOCATION}.json").read_text())
    xs = np.linspace(centre[0] - half, centre[0] + half, 81)
    ys = centre[1] + half + 3.0 * np.sin(2 * np.pi * (xs - xs[0]) / (2 * half / 4.5))
    xs, ys = np.asarray(affinity.rotate(LineString(np.stack([xs, ys], 1)), angle, origin=centre).coords).T
    nodes = [{"token": f"curve-node-{i}", "x": float(x), "y": float(y)} for i, (x, y) in enumerate(zip(xs, ys))]
    data["node"] += nodes
    data["line"].append({"token": "curve-line", "node_tokens": [n["token"] for n in nodes]})
    data["road_divider"] = [{"token": "curve-divider", "line_token": "curve-line",
                             "road_segment_token": data["road_divider"][0]["road_segment_token"]}]
    (root / "maps" / "expansion" / f"{LOCATION}.json").write_text(json.dumps(data))
    shutil.copytree(Path(synth_root) / "maps", root / "maps", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.json"))
    return LineString(np.stack([xs, ys], 1))


@pytest.fixture(scope="module", params=[0.0, 30.0])
def curved(request, tmp_path_factory, synth_root):
    root = tmp_path_factory.mktemp("curved_map")
    centre, half, angle = (150.0, 160.0), 25.0, request.param
    line = curved_divider_map(synth_root, root, centre, half, angle)
    return NuScenesMap(str(root), LOCATION), line, centre, half, angle


def test_a_divider_cut_into_pieces_is_rasterised_like_one_line(curved):
    nmap, line, centre, half, angle = curved
    patch = affinity.rotate(box(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half), angle,
                            origin=centre)
    pieces = line.intersection(patch)
    parts = [g for g in pieces.geoms if g.geom_type == "LineString"]
    assert pieces.geom_type in ("MultiLineString", "GeometryCollection") and len(parts) >= 4  # as on real maps
    canvas = (200, 200)
    mask = nmap.get_map_mask((*centre, 2 * half, 2 * half), angle, ["road_divider"], canvas)[0].astype(bool)

    # Independent reference: the clipped line in canvas pixels (rotate into the patch frame, shift, scale),
    # then every pixel's distance to it.
    local = affinity.rotate(pieces, -angle, origin=centre)
    pixels = affinity.scale(affinity.translate(local, half - centre[0], half - centre[1]),
                            canvas[1] / (2 * half), canvas[0] / (2 * half), origin=(0, 0))
    rows, cols = np.mgrid[: canvas[0], : canvas[1]]
    distance = shapely.distance(shapely.points(cols.ravel(), rows.ravel()), pixels).reshape(canvas)
    assert mask.any() and distance[mask].max() <= 2.5  # thickness-2 polylines of int-truncated vertices
    assert mask[distance <= 0.5].mean() >= 0.9  # the line itself is drawn, every piece of it
    for piece in (g for g in pixels.geoms if g.geom_type == "LineString"):
        around = shapely.distance(shapely.points(cols.ravel(), rows.ravel()), piece).reshape(canvas) <= 1.0
        assert mask[around].any()


def test_the_devkit_without_the_fix_refuses_the_pieces(curved, monkeypatch):
    """What the fix is for: the devkit's own line rasteriser on the same patch."""
    from nuscenes.map_expansion.map_api import NuScenesMapExplorer

    nmap, _, centre, half, angle = curved
    monkeypatch.setattr(NuScenesMapExplorer, "mask_for_lines", staticmethod(ORIGINAL_MASK_FOR_LINES))
    # A MultiLineString: "TypeError: ... not iterable"; pieces plus a touching point (a GeometryCollection,
    # as here): NotImplementedError from .coords.
    with pytest.raises((TypeError, NotImplementedError)):
        nmap.get_map_mask((*centre, 2 * half, 2 * half), angle, ["road_divider"], (200, 200))


def test_parts_of_nested_collections_are_drawn():
    from shapely.geometry import GeometryCollection, MultiLineString, Point

    mask = np.zeros((20, 20), np.uint8)
    lines = GeometryCollection([MultiLineString([[(1, 1), (1, 8)], [(10, 10), (18, 10)]]), Point(15, 3)])
    devkit_compat.mask_for_lines(lines, mask)
    assert mask[1:9, 1].all() and mask[10, 10:19].all()
    assert not mask[3, 15] and mask.sum() < 80  # a point where a line touches the edge draws nothing


ORIGINAL_MASK_FOR_LINES = None


def setup_module():
    """The devkit's function as released (the reader installs the fix at import)."""
    global ORIGINAL_MASK_FOR_LINES
    import importlib

    import nuscenes.map_expansion.map_api as map_api

    fresh = importlib.util.spec_from_file_location("devkit_map_api_as_released", map_api.__file__)
    module = importlib.util.module_from_spec(fresh)
    fresh.loader.exec_module(module)
    ORIGINAL_MASK_FOR_LINES = module.NuScenesMapExplorer.mask_for_lines
