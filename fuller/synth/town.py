"""A procedurally generated town: a grid of two-way roads with the map layers nuScenes annotates.

The town is the single source of the world's static geometry. The map-expansion writer turns it
into the devkit's JSON, the camera renderer and the LiDAR read the painted ground from its label
raster, and agents drive and walk along its lanes and sidewalks. Global frame: x east, y north,
metres, ground at z = 0; the canvas spans [0, width] x [0, height] as in the real map files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

LANE_WIDTH = 3.5
WALKWAY_WIDTH = 3.0
CROSSING_WIDTH = 3.0
CROSSING_SETBACK = 1.0
STOP_LINE_DEPTH = 0.6
PAINT_WIDTH = 0.15
MARGIN = 40.0
RASTER_RES = 0.1

# Ground labels of the raster the sensors see. Paint is what cameras (and LiDAR intensity) see of
# the markings; the map layers are the annotated regions the paint belongs to.
GRASS, ASPHALT, WALKWAY, CARPARK, WHITE_PAINT, YELLOW_PAINT = range(6)


@dataclass
class Road:
    """A straight two-way road on a grid line. `axis` 0 runs along x (constant y), 1 along y."""

    axis: int
    coord: float
    lanes_per_direction: int
    start: float
    end: float

    @property
    def half_width(self) -> float:
        return self.lanes_per_direction * LANE_WIDTH


@dataclass
class Segment:
    """A stretch of road between two intersections (or an intersection square itself)."""

    polygon: Polygon
    is_intersection: bool
    road: Road | None = None
    span: tuple[float, float] = (0.0, 0.0)


@dataclass
class Town:
    """All static geometry of one map location, as shapely objects in the global frame."""

    width: float
    height: float
    xs: list[float]
    ys: list[float]
    roads: list[Road]
    segments: list[Segment] = field(default_factory=list)
    lanes: list[dict] = field(default_factory=list)
    ped_crossings: list[dict] = field(default_factory=list)
    stop_lines: list[dict] = field(default_factory=list)
    walkways: list[Polygon] = field(default_factory=list)
    carparks: list[dict] = field(default_factory=list)
    road_dividers: list[dict] = field(default_factory=list)
    lane_dividers: list[dict] = field(default_factory=list)
    labels: np.ndarray | None = None

    def road(self, axis: int, index: int) -> Road:
        return [r for r in self.roads if r.axis == axis][index]

    @property
    def drivable_area(self) -> Polygon:
        """Roads and car parks, the union nuScenes calls drivable_area."""
        return unary_union([s.polygon for s in self.segments] + [c["polygon"] for c in self.carparks])

    def layer_polygons(self, layer: str) -> list[Polygon]:
        """The generator's own polygons of a polygon map layer."""
        if layer == "drivable_area":
            geom = self.drivable_area
            return list(getattr(geom, "geoms", [geom]))
        if layer == "walkway":
            return list(self.walkways)
        records = {"ped_crossing": self.ped_crossings, "stop_line": self.stop_lines,
                   "carpark_area": self.carparks, "lane": self.lanes}[layer]
        return [r["polygon"] for r in records]

    def layer_lines(self, layer: str) -> list[LineString]:
        """The generator's own lines of a line map layer."""
        return [r["line"] for r in {"road_divider": self.road_dividers, "lane_divider": self.lane_dividers}[layer]]

    def label_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground label under global (x, y); GRASS off the canvas."""
        col = np.floor(np.asarray(x) / RASTER_RES).astype(np.int64)
        row = np.floor(np.asarray(y) / RASTER_RES).astype(np.int64)
        h, w = self.labels.shape
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        out = np.full(col.shape, GRASS, dtype=np.uint8)
        out[inside] = self.labels[row[inside], col[inside]]
        return out


def generate_town(rng: np.random.Generator, blocks: tuple[int, int] = (4, 4)) -> Town:
    """Lay out a grid town: block sizes, road widths, crossings, car parks are drawn from `rng`."""
    def grid_lines(n_blocks: int) -> list[float]:
        sizes = rng.uniform(70.0, 110.0, size=n_blocks)
        return list(MARGIN + np.concatenate([[0.0], np.cumsum(sizes)]))

    xs, ys = grid_lines(blocks[0]), grid_lines(blocks[1])
    width, height = xs[-1] + MARGIN, ys[-1] + MARGIN
    roads = []
    for axis, coords, (lo, hi) in ((1, xs, (ys[0], ys[-1])), (0, ys, (xs[0], xs[-1]))):
        for c in coords:
            roads.append(Road(axis, c, int(rng.choice([1, 2], p=[0.4, 0.6])), lo, hi))
    town = Town(width=width, height=height, xs=xs, ys=ys, roads=roads)
    vroads = [r for r in roads if r.axis == 1]
    hroads = [r for r in roads if r.axis == 0]
    _add_intersections(town, vroads, hroads)
    for road in roads:
        _add_road_segments(town, road, vroads if road.axis == 0 else hroads, rng)
    _add_blocks(town, vroads, hroads, rng)
    town.labels = _rasterise(town)
    return town


def _rect_along(road: Road, a: float, b: float, lo: float, hi: float) -> Polygon:
    """Rectangle spanning [a, b] along the road and [lo, hi] across it (offsets from its centre line)."""
    if road.axis == 0:
        return box(min(a, b), road.coord + lo, max(a, b), road.coord + hi)
    return box(road.coord + lo, min(a, b), road.coord + hi, max(a, b))


def _line_along(road: Road, a: float, b: float, offset: float) -> LineString:
    if road.axis == 0:
        return LineString([(a, road.coord + offset), (b, road.coord + offset)])
    return LineString([(road.coord + offset, a), (road.coord + offset, b)])


def _add_intersections(town: Town, vroads: list[Road], hroads: list[Road]) -> None:
    for v in vroads:
        for h in hroads:
            square = box(v.coord - v.half_width, h.coord - h.half_width, v.coord + v.half_width, h.coord + h.half_width)
            town.segments.append(Segment(square, True))


def _add_road_segments(town: Town, road: Road, crossing_roads: list[Road], rng: np.random.Generator) -> None:
    """Segments between consecutive intersections with their lanes, dividers, crossings and stop lines."""
    cuts = sorted((r.coord, r.half_width) for r in crossing_roads)
    hw = road.half_width
    for (c0, w0), (c1, w1) in zip(cuts[:-1], cuts[1:]):
        a, b = c0 + w0, c1 - w1
        seg = Segment(_rect_along(road, a, b, -hw, hw), False, road, (a, b))
        town.segments.append(seg)
        seg_index = len(town.segments) - 1
        town.road_dividers.append({"line": _line_along(road, a, b, 0.0), "segment": seg_index})
        for side in (-1, 1):
            for k in range(road.lanes_per_direction):
                lo, hi = sorted((side * k * LANE_WIDTH, side * (k + 1) * LANE_WIDTH))
                town.lanes.append({"polygon": _rect_along(road, a, b, lo, hi), "segment": seg_index})
            for k in range(1, road.lanes_per_direction):
                town.lane_dividers.append({"line": _line_along(road, a, b, side * k * LANE_WIDTH), "segment": seg_index})
        # A crossing at each end with probability 0.7, and a stop line before it for the traffic
        # that arrives there (right-hand traffic: the arriving half is the one on its right).
        for end, direction in ((a, 1.0), (b, -1.0)):
            if rng.random() > 0.7:
                continue
            c_lo = end + direction * CROSSING_SETBACK
            c_hi = c_lo + direction * CROSSING_WIDTH
            crossing = {"polygon": _rect_along(road, c_lo, c_hi, -hw, hw), "segment": seg_index}
            town.ped_crossings.append(crossing)
            s_lo = c_hi + direction * 0.5
            s_hi = s_lo + direction * STOP_LINE_DEPTH
            # Traffic arriving at `end` travels in -direction along the road axis; its right side is
            # +y for a road along x travelling -x, i.e. the sign below.
            arriving_side = direction if road.axis == 0 else -direction
            lo, hi = sorted((0.0, arriving_side * hw))
            town.stop_lines.append({"polygon": _rect_along(road, s_lo, s_hi, lo, hi),
                                    "crossing": len(town.ped_crossings) - 1})


def _add_blocks(town: Town, vroads: list[Road], hroads: list[Road], rng: np.random.Generator) -> None:
    """Each block gets a sidewalk ring along its edges and, sometimes, a car park inside it."""
    for v0, v1 in zip(vroads[:-1], vroads[1:]):
        for h0, h1 in zip(hroads[:-1], hroads[1:]):
            x0, x1 = v0.coord + v0.half_width, v1.coord - v1.half_width
            y0, y1 = h0.coord + h0.half_width, h1.coord - h1.half_width
            outer = box(x0, y0, x1, y1)
            inner = box(x0 + WALKWAY_WIDTH, y0 + WALKWAY_WIDTH, x1 - WALKWAY_WIDTH, y1 - WALKWAY_WIDTH)
            town.walkways.append(Polygon(outer.exterior.coords, [inner.exterior.coords]))
            if rng.random() < 0.5:
                depth, length = rng.uniform(22.0, 30.0), rng.uniform(30.0, 50.0)
                start = rng.uniform(x0 + WALKWAY_WIDTH + 2.0, x1 - WALKWAY_WIDTH - 2.0 - length)
                if rng.random() < 0.5:  # along the southern edge of the block
                    poly = box(start, y0 + WALKWAY_WIDTH, start + length, y0 + WALKWAY_WIDTH + depth)
                    orientation = 0.0
                else:
                    poly = box(start, y1 - WALKWAY_WIDTH - depth, start + length, y1 - WALKWAY_WIDTH)
                    orientation = np.pi
                town.carparks.append({"polygon": poly, "orientation": orientation})


def _rasterise(town: Town) -> np.ndarray:
    """Ground labels at RASTER_RES, row = y / res, col = x / res (no flip: an internal texture)."""
    h, w = int(np.ceil(town.height / RASTER_RES)), int(np.ceil(town.width / RASTER_RES))
    img = Image.new("L", (w, h), GRASS)
    draw = ImageDraw.Draw(img)

    def fill(poly: Polygon, label: int) -> None:
        for part in getattr(poly, "geoms", [poly]):
            draw.polygon([(x / RASTER_RES, y / RASTER_RES) for x, y in part.exterior.coords], fill=label)
            for hole in part.interiors:
                draw.polygon([(x / RASTER_RES, y / RASTER_RES) for x, y in hole.coords], fill=GRASS)

    for walk in town.walkways:
        fill(walk, WALKWAY)
    for park in town.carparks:
        fill(park["polygon"], CARPARK)
    for seg in town.segments:
        fill(seg.polygon, ASPHALT)
    for crossing in town.ped_crossings:
        _fill_zebra(fill, crossing["polygon"], town.segments[crossing["segment"]].road)
    for stop in town.stop_lines:
        fill(stop["polygon"], WHITE_PAINT)
    for div in town.road_dividers:
        for off in (-0.15, 0.15):  # double yellow line
            fill(_offset_line(div["line"], off).buffer(PAINT_WIDTH / 2, cap_style="flat"), YELLOW_PAINT)
    for div in town.lane_dividers:
        for dash in _dashes(div["line"], on=3.0, off=6.0):
            fill(dash.buffer(PAINT_WIDTH / 2, cap_style="flat"), WHITE_PAINT)
    return np.asarray(img, dtype=np.uint8)


def _fill_zebra(fill, crossing: Polygon, road: Road) -> None:
    """Zebra stripes 0.5 m wide every 1 m across the road, inside the crossing polygon."""
    x0, y0, x1, y1 = crossing.bounds
    lo, hi = (y0, y1) if road.axis == 0 else (x0, x1)
    for c in np.arange(lo + 0.25, hi - 0.25, 1.0):
        stripe = box(x0, c, x1, c + 0.5) if road.axis == 0 else box(c, y0, c + 0.5, y1)
        fill(stripe, WHITE_PAINT)


def _offset_line(line: LineString, offset: float) -> LineString:
    (ax, ay), (bx, by) = line.coords[0], line.coords[-1]
    n = np.array([-(by - ay), bx - ax]) / max(np.hypot(bx - ax, by - ay), 1e-9)
    return LineString([(ax + offset * n[0], ay + offset * n[1]), (bx + offset * n[0], by + offset * n[1])])


def _dashes(line: LineString, on: float, off: float) -> list[LineString]:
    out, s = [], 0.0
    while s < line.length:
        a, b = line.interpolate(s), line.interpolate(min(s + on, line.length))
        out.append(LineString([a, b]))
        s += on + off
    return out
