"""The town as a nuScenes map-expansion file (`maps/expansion/<location>.json`, version 1.3).

Geometry is normalised the way the real files are: `node` records hold coordinates, `line` and
`polygon` records hold node tokens, and each layer record points to its geometry. Everything is the
town's world geometry (`Town.layer_polygons`, `Town.layer_lines`): local streets curve, so dividers
are polylines with a node every metre, one per road segment, and lanes and kerbs follow the curves.
"""
from __future__ import annotations

from typing import Callable

from shapely.geometry import LineString, Polygon

from .town import Town

MAP_VERSION = "1.3"


class _Geometry:
    def __init__(self, token: Callable[[str], str]) -> None:
        self.token = token
        self.node: list[dict] = []
        self.line: list[dict] = []
        self.polygon: list[dict] = []

    def nodes(self, coords) -> list[str]:
        tokens = []
        for x, y in coords:
            tok = self.token("node")
            self.node.append({"token": tok, "x": round(float(x), 4), "y": round(float(y), 4)})
            tokens.append(tok)
        return tokens

    def add_polygon(self, poly: Polygon) -> str:
        tok = self.token("polygon")
        self.polygon.append({
            "token": tok,
            "exterior_node_tokens": self.nodes(list(poly.exterior.coords)[:-1]),
            "holes": [{"node_tokens": self.nodes(list(h.coords)[:-1])} for h in poly.interiors],
        })
        return tok

    def add_line(self, line: LineString) -> str:
        tok = self.token("line")
        self.line.append({"token": tok, "node_tokens": self.nodes(line.coords)})
        return tok


def town_to_map_json(town: Town, token: Callable[[str], str]) -> dict:
    geom = _Geometry(token)
    drivable_record = {"token": token("drivable_area"),
                       "polygon_tokens": [geom.add_polygon(p) for p in town.layer_polygons("drivable_area")]}
    segments = []
    for seg, poly in zip(town.segments, town.layer_polygons("road_segment")):
        segments.append({"token": token("road_segment"), "polygon_token": geom.add_polygon(poly),
                         "is_intersection": seg.is_intersection, "drivable_area_token": drivable_record["token"]})
    lanes = []
    for lane, poly in zip(town.lanes, town.layer_polygons("lane")):
        lanes.append({"token": token("lane"), "polygon_token": geom.add_polygon(poly), "lane_type": "CAR",
                      "from_edge_line_token": geom.add_line(town.world(lane["from_edge"])),
                      "to_edge_line_token": geom.add_line(town.world(lane["to_edge"])),
                      "left_lane_divider_segments": [], "right_lane_divider_segments": []})
    crossings = [{"token": token("ped_crossing"), "polygon_token": geom.add_polygon(poly),
                  "road_segment_token": segments[c["segment"]]["token"]}
                 for c, poly in zip(town.ped_crossings, town.layer_polygons("ped_crossing"))]
    stop_lines = [{"token": token("stop_line"), "polygon_token": geom.add_polygon(poly),
                   "stop_line_type": "PED_CROSSING", "ped_crossing_tokens": [crossings[s["crossing"]]["token"]],
                   "traffic_light_tokens": [], "road_block_token": ""}
                  for s, poly in zip(town.stop_lines, town.layer_polygons("stop_line"))]
    walkways = [{"token": token("walkway"), "polygon_token": geom.add_polygon(w)}
                for w in town.layer_polygons("walkway")]
    carparks = [{"token": token("carpark_area"), "polygon_token": geom.add_polygon(poly),
                 "orientation": float(c["orientation"]), "road_block_token": ""}
                for c, poly in zip(town.carparks, town.layer_polygons("carpark_area"))]
    road_dividers = [{"token": token("road_divider"), "line_token": geom.add_line(line),
                      "road_segment_token": segments[d["segment"]]["token"]}
                     for d, line in zip(town.road_dividers, town.layer_lines("road_divider"))]
    lane_dividers = []
    for line in town.layer_lines("lane_divider"):
        line_token = geom.add_line(line)
        nodes = geom.line[-1]["node_tokens"]
        lane_dividers.append({"token": token("lane_divider"), "line_token": line_token,
                              "lane_divider_segments": [{"node_token": n, "segment_type": "DOUBLE_DASHED_WHITE"}
                                                        for n in nodes]})
    return {
        "version": MAP_VERSION,
        "canvas_edge": [float(town.width), float(town.height)],
        "polygon": geom.polygon, "line": geom.line, "node": geom.node,
        "drivable_area": [drivable_record], "road_segment": segments, "road_block": [], "lane": lanes,
        "ped_crossing": crossings, "walkway": walkways, "stop_line": stop_lines, "carpark_area": carparks,
        "road_divider": road_dividers, "lane_divider": lane_dividers, "traffic_light": [],
        "arcline_path_3": {}, "connectivity": {}, "lane_connector": [],
    }
