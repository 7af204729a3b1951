"""A procedurally generated town: a grid of two-way streets with the map layers nuScenes annotates.

The town is the single source of the world's static geometry. The map-expansion writer turns it
into the devkit's JSON, the camera renderer and the LiDAR read the painted ground from its label
raster, and agents drive and walk along its lanes and sidewalks. Global frame: x east, y north,
metres, ground at z = 0; the canvas spans [0, width] x [0, height] as in the real map files.

The layout is drawn on a straight grid (the *plan*): straight arterials about 100 m apart, and through
the middle of every superblock they enclose a local street in each direction. `Bends` bends the plan
into the world: the local streets wind between their intersections, as residential streets do, so
their dividers, lanes and kerbs are curved polylines of many nodes. The spacing matches the 100 m map
patch the reader rasterises around the ego, which keeps to the arterials: the winding local streets
run along the patch's side edges, where a curved divider leaves the patch and comes back, as dividers
near curved roads do on the real maps. Layout code (agents, routes) works in the plan; everything
sensors and maps see goes through `Town.warp`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely.geometry import LineString, MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import substring, unary_union

LANE_WIDTH = 3.5
WALKWAY_WIDTH = 3.0
CROSSING_WIDTH = 3.0
CROSSING_SETBACK = 1.0
STOP_LINE_DEPTH = 0.6
PAINT_WIDTH = 0.15
MARGIN = 40.0
RASTER_RES = 0.1
NODE_SPACING = 1.0  # metres between map nodes along lines and curved edges (real maps: about 1 to 2 m)
SUPERBLOCK = (95.0, 105.0)  # range of the spacing between arterials
LOCAL_JITTER = 1.5  # how far a local street may lie off the middle of its superblock
LOCAL_TWO_LANES = 0.7  # share of local streets with two lanes each way (arterials all have two)
MAX_BOW = 5.0  # largest sideways bow of a local street between two intersections
MIN_RADIUS = 20.0  # tightest curve a bow may make (a residential street's, about 30 km/h)
CARPARK_SHARE = 0.3  # share of the blocks with a car park
CARPARK_DEPTH = (17.0, 21.0)  # two rows of slots and the aisle between them
CARPARK_LENGTH = (16.0, 26.0)

# Ground labels of the raster the sensors see. Paint is what cameras (and LiDAR intensity) see of
# the markings; the map layers are the annotated regions the paint belongs to.
GRASS, ASPHALT, WALKWAY, CARPARK, WHITE_PAINT, YELLOW_PAINT = range(6)


@dataclass
class Road:
    """A straight two-way road on a grid line. `axis` 0 runs along x (constant y), 1 along y. Arterials
    bound the superblocks and stay straight; the local streets between them wind."""

    axis: int
    coord: float
    lanes_per_direction: int
    start: float
    end: float
    arterial: bool = False

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


@dataclass(frozen=True)
class Bends:
    """A smooth, invertible map from the plan to the world: x' = x + f(x, y), y' = y + g(x, y).

    Between two intersections a local street bows sideways with a sin^2 profile (zero offset and zero
    slope at both ends, so it leaves every intersection straight and intersections keep their shape);
    the blocks between two roads follow by a smoothstep blend of the roads' bows, flat at each kerb,
    so a street shifts as a whole and keeps its width. Intersections stay exactly where the plan has
    them. Bows are small against the distance they act over, so the offsets' gradient stays at about
    0.3 or less, which keeps the map invertible.
    """

    x_zones: np.ndarray  # (K, 2): x intervals between the kerbs of consecutive roads along y
    y_zones: np.ndarray  # (J, 2): likewise in y, between consecutive roads along x
    x_bows: np.ndarray  # (K + 1, J): sideways (x) bow of each road along y, in each y interval
    y_bows: np.ndarray  # (J + 1, K): sideways (y) bow of each road along x, in each x interval

    def offsets(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) world minus plan position of plan points (..., 2)."""
        p = np.asarray(points, dtype=np.float64)
        ux = _zone_fraction(p[..., 0], self.x_zones)
        uy = _zone_fraction(p[..., 1], self.y_zones)
        f = np.sum(np.sin(np.pi * uy) ** 2 * (self.x_bows[0] + _smoothstep(ux) @ np.diff(self.x_bows, axis=0)), -1)
        g = np.sum(np.sin(np.pi * ux) ** 2 * (self.y_bows[0] + _smoothstep(uy) @ np.diff(self.y_bows, axis=0)), -1)
        return np.stack([f, g], -1)

    def warp(self, points: np.ndarray) -> np.ndarray:
        """Plan points (..., 2) to world points."""
        return np.asarray(points, dtype=np.float64) + self.offsets(points)

    def unwarp(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 2) back to the plan: the fixed point of p = w - offsets(p), a contraction
        because the offsets' gradient stays below 1."""
        w = np.asarray(points, dtype=np.float64)
        p = w.copy()
        for _ in range(40):
            p = w - self.offsets(p)
        return p


def _zone_fraction(c: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """(..., Z): how far c lies through each zone, clipped to [0, 1]."""
    return np.clip((c[..., None] - zones[:, 0]) / (zones[:, 1] - zones[:, 0]), 0.0, 1.0)


def _smoothstep(u: np.ndarray) -> np.ndarray:
    return u * u * (3.0 - 2.0 * u)


@dataclass
class Town:
    """All static geometry of one map location: the layout in plan coordinates, `bends` to the world."""

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
    bends: Bends | None = None
    labels: np.ndarray | None = None

    def road(self, axis: int, index: int) -> Road:
        return [r for r in self.roads if r.axis == axis][index]

    def warp(self, points: np.ndarray) -> np.ndarray:
        """Plan points (..., 2) to the world."""
        return self.bends.warp(points)

    def unwarp(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 2) to the plan."""
        return self.bends.unwarp(points)

    def place(self, x: float, y: float, yaw: float) -> tuple[float, float, float]:
        """A plan pose (a parked car, a cone) in the world: the heading turns with the local bend."""
        p = np.array([x, y])
        step = 0.05 * np.array([np.cos(yaw), np.sin(yaw)])
        (wx, wy), (ax, ay), (bx, by) = self.warp(np.stack([p, p - step, p + step]))
        return float(wx), float(wy), float(np.arctan2(by - ay, bx - ax))

    def world(self, geometry: BaseGeometry) -> BaseGeometry:
        """A plan geometry in the world. Lines get a node about every NODE_SPACING metres (spaced in the
        plan), as the real maps' dividers have; polygon edges keep only the nodes their curves need
        (1 cm tolerance), as each map query rebuilds every polygon from its nodes."""
        bent = shapely.transform(shapely.segmentize(geometry, NODE_SPACING), self.warp)
        if bent.geom_type in ("Polygon", "MultiPolygon"):
            return shapely.simplify(bent, 0.01)
        return bent

    @property
    def drivable_area(self) -> Polygon:
        """Roads and car parks in the world, the union nuScenes calls drivable_area."""
        return self.world(unary_union([s.polygon for s in self.segments] + [c["polygon"] for c in self.carparks]))

    def layer_polygons(self, layer: str) -> list[Polygon]:
        """The generator's own world polygons of a polygon map layer, in record order."""
        if layer == "drivable_area":
            geom = self.drivable_area
            return list(getattr(geom, "geoms", [geom]))
        if layer == "walkway":
            return [self.world(w) for w in self.walkways]
        if layer == "road_segment":
            return [self.world(s.polygon) for s in self.segments]
        records = {"ped_crossing": self.ped_crossings, "stop_line": self.stop_lines,
                   "carpark_area": self.carparks, "lane": self.lanes}[layer]
        return [self.world(r["polygon"]) for r in records]

    def layer_lines(self, layer: str) -> list[LineString]:
        """The generator's own world lines of a line map layer, in record order."""
        records = {"road_divider": self.road_dividers, "lane_divider": self.lane_dividers}[layer]
        return [self.world(r["line"]) for r in records]

    def label_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground label under global (x, y); GRASS off the canvas."""
        col = np.floor(np.asarray(x) / RASTER_RES).astype(np.int64)
        row = np.floor(np.asarray(y) / RASTER_RES).astype(np.int64)
        h, w = self.labels.shape
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        out = np.full(col.shape, GRASS, dtype=np.uint8)
        out[inside] = self.labels[row[inside], col[inside]]
        return out


def generate_town(rng: np.random.Generator, superblocks: tuple[int, int] = (4, 4)) -> Town:
    """Lay out a town of (x, y) superblocks: arterial spacing, where the local streets cross them, lane
    counts, crossings and car parks are drawn from `rng`. Grid lines alternate: arterials (two lanes
    each way) at even indices, local streets (one or two) at odd ones."""
    def grid_lines(n: int) -> list[float]:
        sizes = rng.uniform(*SUPERBLOCK, size=n)
        edges = np.concatenate([[0.0], np.cumsum(sizes)])
        middles = edges[:-1] + sizes / 2 + rng.uniform(-LOCAL_JITTER, LOCAL_JITTER, size=n)
        return list(MARGIN + np.sort(np.concatenate([edges, middles])))

    xs, ys = grid_lines(superblocks[0]), grid_lines(superblocks[1])
    width, height = xs[-1] + MARGIN, ys[-1] + MARGIN
    roads = []
    for axis, coords, (lo, hi) in ((1, xs, (ys[0], ys[-1])), (0, ys, (xs[0], xs[-1]))):
        for k, c in enumerate(coords):
            arterial = k % 2 == 0
            lanes = 2 if arterial else int(rng.choice([1, 2], p=[1.0 - LOCAL_TWO_LANES, LOCAL_TWO_LANES]))
            roads.append(Road(axis, c, lanes, lo, hi, arterial))
    town = Town(width=width, height=height, xs=xs, ys=ys, roads=roads)
    vroads = [r for r in roads if r.axis == 1]
    hroads = [r for r in roads if r.axis == 0]
    _add_intersections(town, vroads, hroads)
    for road in roads:
        _add_road_segments(town, road, vroads if road.axis == 0 else hroads, rng)
    _add_blocks(town, vroads, hroads, rng)
    town.bends = _draw_bends(vroads, hroads, rng)
    town.labels = _rasterise(town)
    return town


def _draw_bends(vroads: list[Road], hroads: list[Road], rng: np.random.Generator) -> Bends:
    """Each local street's bow in each block it passes, from kerb to kerb of the crossing roads: 0.7 to
    1 times the largest that keeps every curve at MIN_RADIUS or wider (a sin^2 bow of amplitude a over
    length L has its tightest radius L^2 / (2 pi^2 a)), to alternating sides block after block. The
    street snakes, so any 100 m of it bows out to both sides, whichever side of it a map patch's edge
    runs. Arterials stay straight: the recording car drives them, and on a straight road its map
    patch stays square to the streets around, whose bows then cross the patch's edges and come back."""
    def zones(roads: list[Road]) -> np.ndarray:
        return np.array([(r0.coord + r0.half_width, r1.coord - r1.half_width) for r0, r1 in zip(roads[:-1], roads[1:])])

    def bows(roads: list[Road], zone: np.ndarray) -> np.ndarray:
        limit = np.minimum(MAX_BOW, (zone[:, 1] - zone[:, 0]) ** 2 / (2 * np.pi ** 2 * MIN_RADIUS))
        out = np.zeros((len(roads), len(zone)))
        for k, road in enumerate(roads):
            if not road.arterial:
                side = rng.choice([-1.0, 1.0]) * (-1.0) ** np.arange(len(zone))
                out[k] = side * rng.uniform(0.7, 1.0, size=len(zone)) * limit
        return out

    x_zones, y_zones = zones(vroads), zones(hroads)
    return Bends(x_zones, y_zones, bows(vroads, y_zones), bows(hroads, x_zones))


def _rect_along(road: Road, a: float, b: float, lo: float, hi: float) -> Polygon:
    """Rectangle spanning [a, b] along the road and [lo, hi] across it (offsets from its centre line)."""
    if road.axis == 0:
        return box(min(a, b), road.coord + lo, max(a, b), road.coord + hi)
    return box(road.coord + lo, min(a, b), road.coord + hi, max(a, b))


def _line_across(road: Road, at: float, lo: float, hi: float) -> LineString:
    """Segment across the road at `at` along it, from offset lo to hi."""
    if road.axis == 0:
        return LineString([(at, road.coord + lo), (at, road.coord + hi)])
    return LineString([(road.coord + lo, at), (road.coord + hi, at)])


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
            # Right-hand traffic: along x the lanes below the centre line run towards +x, along y
            # those right of it run towards +y; a lane's from edge is where its traffic enters.
            start, end = (a, b) if side == (-1 if road.axis == 0 else 1) else (b, a)
            for k in range(road.lanes_per_direction):
                lo, hi = sorted((side * k * LANE_WIDTH, side * (k + 1) * LANE_WIDTH))
                town.lanes.append({"polygon": _rect_along(road, a, b, lo, hi), "segment": seg_index,
                                   "from_edge": _line_across(road, start, lo, hi),
                                   "to_edge": _line_across(road, end, lo, hi)})
            for k in range(1, road.lanes_per_direction):
                town.lane_dividers.append({"line": _line_along(road, a, b, side * k * LANE_WIDTH),
                                           "segment": seg_index})
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
            if rng.random() < CARPARK_SHARE:
                depth = rng.uniform(*CARPARK_DEPTH)
                length = rng.uniform(CARPARK_LENGTH[0], min(CARPARK_LENGTH[1], x1 - x0 - 2 * WALKWAY_WIDTH - 4.0))
                start = rng.uniform(x0 + WALKWAY_WIDTH + 2.0, x1 - WALKWAY_WIDTH - 2.0 - length)
                if rng.random() < 0.5:  # along the southern edge of the block
                    poly = box(start, y0 + WALKWAY_WIDTH, start + length, y0 + WALKWAY_WIDTH + depth)
                    orientation = 0.0
                else:
                    poly = box(start, y1 - WALKWAY_WIDTH - depth, start + length, y1 - WALKWAY_WIDTH)
                    orientation = np.pi
                town.carparks.append({"polygon": poly, "orientation": orientation})


def _rasterise(town: Town) -> np.ndarray:
    """World ground labels at RASTER_RES, row = y / res, col = x / res (no flip: an internal texture).
    Everything is drawn from the same world geometry the map file holds, so the paint the sensors
    see lies where the map's lines and polygons are."""
    h, w = int(np.ceil(town.height / RASTER_RES)), int(np.ceil(town.width / RASTER_RES))
    img = Image.new("L", (w, h), GRASS)
    draw = ImageDraw.Draw(img)

    def fill(poly: Polygon, label: int) -> None:
        for part in getattr(poly, "geoms", [poly]):
            draw.polygon([(x / RASTER_RES, y / RASTER_RES) for x, y in part.exterior.coords], fill=label)
            for hole in part.interiors:
                draw.polygon([(x / RASTER_RES, y / RASTER_RES) for x, y in hole.coords], fill=GRASS)

    for walk in town.layer_polygons("walkway"):
        fill(walk, WALKWAY)
    for park in town.layer_polygons("carpark_area"):
        fill(park, CARPARK)
    for seg in town.layer_polygons("road_segment"):
        fill(seg, ASPHALT)
    for crossing in town.ped_crossings:
        stripes = _zebra(crossing["polygon"], town.segments[crossing["segment"]].road)
        fill(town.world(MultiPolygon(stripes)), WHITE_PAINT)
    for stop in town.layer_polygons("stop_line"):
        fill(stop, WHITE_PAINT)
    for line in town.layer_lines("road_divider"):
        for off in (-0.15, 0.15):  # double yellow line
            fill(line.offset_curve(off).buffer(PAINT_WIDTH / 2, cap_style="flat"), YELLOW_PAINT)
    for line in town.layer_lines("lane_divider"):
        for dash in _dashes(line, on=3.0, off=6.0):
            fill(dash.buffer(PAINT_WIDTH / 2, cap_style="flat"), WHITE_PAINT)
    return np.asarray(img, dtype=np.uint8)


def _zebra(crossing: Polygon, road: Road) -> list[Polygon]:
    """Zebra stripes 0.5 m wide every 1 m across the road, inside the crossing polygon (plan)."""
    x0, y0, x1, y1 = crossing.bounds
    lo, hi = (y0, y1) if road.axis == 0 else (x0, x1)
    return [box(x0, c, x1, c + 0.5) if road.axis == 0 else box(c, y0, c + 0.5, y1)
            for c in np.arange(lo + 0.25, hi - 0.25, 1.0)]


def _dashes(line: LineString, on: float, off: float) -> list[LineString]:
    """The painted dashes of a dashed line, following its curve."""
    return [substring(line, s, min(s + on, line.length)) for s in np.arange(0.0, line.length, on + off)]
