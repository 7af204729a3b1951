"""The town as a nuScenes map-expansion file (`maps/expansion/<location>.json`, version 1.3).

Geometry is normalised the way the real files are: `node` records hold coordinates, `line` and
`polygon` records hold node tokens, and each layer record points to its geometry. Dividers are
written as straight two-node lines, one per road segment.
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
    drivable = town.drivable_area
    drivable_record = {"token": token("drivable_area"),
                       "polygon_tokens": [geom.add_polygon(p) for p in getattr(drivable, "geoms", [drivable])]}
    segments = []
    for seg in town.segments:
        segments.append({"token": token("road_segment"), "polygon_token": geom.add_polygon(seg.polygon),
                         "is_intersection": seg.is_intersection, "drivable_area_token": drivable_record["token"]})
    lanes = []
    for lane in town.lanes:
        x0, y0, x1, y1 = lane["polygon"].bounds
        lanes.append({"token": token("lane"), "polygon_token": geom.add_polygon(lane["polygon"]), "lane_type": "CAR",
                      "from_edge_line_token": geom.add_line(LineString([(x0, y0), (x0, y1)])),
                      "to_edge_line_token": geom.add_line(LineString([(x1, y0), (x1, y1)])),
                      "left_lane_divider_segments": [], "right_lane_divider_segments": []})
    crossings = [{"token": token("ped_crossing"), "polygon_token": geom.add_polygon(c["polygon"]),
                  "road_segment_token": segments[c["segment"]]["token"]} for c in town.ped_crossings]
    stop_lines = [{"token": token("stop_line"), "polygon_token": geom.add_polygon(s["polygon"]),
                   "stop_line_type": "PED_CROSSING", "ped_crossing_tokens": [crossings[s["crossing"]]["token"]],
                   "traffic_light_tokens": [], "road_block_token": ""} for s in town.stop_lines]
    walkways = [{"token": token("walkway"), "polygon_token": geom.add_polygon(w)} for w in town.walkways]
    carparks = [{"token": token("carpark_area"), "polygon_token": geom.add_polygon(c["polygon"]),
                 "orientation": float(c["orientation"]), "road_block_token": ""} for c in town.carparks]
    road_dividers = [{"token": token("road_divider"), "line_token": geom.add_line(d["line"]),
                      "road_segment_token": segments[d["segment"]]["token"]} for d in town.road_dividers]
    lane_dividers = []
    for d in town.lane_dividers:
        line_token = geom.add_line(d["line"])
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
