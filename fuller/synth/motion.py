"""Where things are at time t: paths along the town's lanes and sidewalks, and speed profiles on them.

A `Trajectory` is a dense 2-D polyline with an arc-length parameter and a speed profile s(t). Both the
ego vehicle and the other agents move this way, so positions, headings and velocities are exact
functions of time: sensors at any timestamp see the same world the annotations describe. Paths are
planned on the town's straight plan grid and bent into the world (`Town.warp`) point by point, so
they follow the curved lanes and sidewalks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .town import LANE_WIDTH, WALKWAY_WIDTH, Road, Town

STEP = 0.25  # path sampling, metres


@dataclass
class Trajectory:
    """A path (N, 2) with cumulative arc length, travelled as s(t) = s0 + v t + a (1 - cos(w t)).

    The cosine term makes speed vary smoothly; |a w| <= v keeps motion forward. Past the end of the
    path the agent stays at the last point (it stopped), so any t is valid.
    """

    points: np.ndarray
    s0: float = 0.0
    speed: float = 0.0
    wobble: float = 0.0
    omega: float = 0.5
    fixed_yaw: float | None = None

    def __post_init__(self) -> None:
        seg = np.diff(self.points, axis=0)
        self._cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
        headings = np.arctan2(seg[:, 1], seg[:, 0]) if len(seg) else np.zeros(1)
        self._headings = np.unwrap(headings)

    @property
    def length(self) -> float:
        return float(self._cum[-1])

    def arc(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        s = self.s0 + self.speed * t + self.wobble * (1.0 - np.cos(self.omega * t))
        return np.clip(s, 0.0, self.length)

    def pose(self, t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, yaw) at time(s) t, seconds since the scene start."""
        s = self.arc(t)
        x = np.interp(s, self._cum, self.points[:, 0])
        y = np.interp(s, self._cum, self.points[:, 1])
        if self.fixed_yaw is not None:
            return x, y, np.full_like(s, self.fixed_yaw)
        # Heading of the segment under s, interpolated between segment mid-points for smooth turns.
        mids = 0.5 * (self._cum[:-1] + self._cum[1:]) if len(self._cum) > 1 else np.zeros(1)
        yaw = np.interp(s, mids, self._headings)
        return x, y, np.arctan2(np.sin(yaw), np.cos(yaw))

    def speed_at(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        v = self.speed + self.wobble * self.omega * np.sin(self.omega * t)
        s = self.s0 + self.speed * t + self.wobble * (1.0 - np.cos(self.omega * t))
        return np.where((s <= 0.0) | (s >= self.length), 0.0, v)


def static(x: float, y: float, yaw: float) -> Trajectory:
    return Trajectory(points=np.array([[x, y], [x + 1e-3 * np.cos(yaw), y + 1e-3 * np.sin(yaw)]]), fixed_yaw=yaw)


def _polyline(points: list[np.ndarray]) -> np.ndarray:
    """Resample a polyline at STEP spacing (keeps the corners)."""
    out = [points[0]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / STEP)), 1)
        out.extend(a + (b - a) * (i / n) for i in range(1, n + 1))
    return np.asarray(out)


def _bezier(p0: np.ndarray, c: np.ndarray, p1: np.ndarray) -> list[np.ndarray]:
    n = max(int(np.ceil((np.linalg.norm(c - p0) + np.linalg.norm(p1 - c)) / STEP)), 2)
    return [(1 - u) ** 2 * p0 + 2 * (1 - u) * u * c + u ** 2 * p1 for u in np.linspace(0.0, 1.0, n + 1)]


HEADINGS = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([-1.0, 0.0]), np.array([0.0, -1.0])]


class RoadGraph:
    """The town's intersections as a grid graph, for routes that follow lanes through turns."""

    def __init__(self, town: Town) -> None:
        self.town = town
        self.vroads = [r for r in town.roads if r.axis == 1]
        self.hroads = [r for r in town.roads if r.axis == 0]

    def node(self, i: int, j: int) -> np.ndarray:
        return np.array([self.town.xs[i], self.town.ys[j]])

    def road_along(self, i: int, j: int, heading: int) -> Road:
        return self.hroads[j] if heading in (0, 2) else self.vroads[i]

    def extent(self, i: int, j: int, heading: int) -> float:
        """Distance from an intersection's centre to its edge along the heading."""
        return self.vroads[i].half_width if heading in (0, 2) else self.hroads[j].half_width

    def lane_offset(self, road: Road, heading: int, lane: int) -> np.ndarray:
        u = HEADINGS[heading]
        right = np.array([u[1], -u[0]])  # right-hand traffic
        return right * (min(lane, road.lanes_per_direction - 1) + 0.5) * LANE_WIDTH

    def step(self, i: int, j: int, heading: int) -> tuple[int, int] | None:
        di, dj = HEADINGS[heading].astype(int)
        ni, nj = i + di, j + dj
        if 0 <= ni < len(self.vroads) and 0 <= nj < len(self.hroads):
            return ni, nj
        return None

    def random_route(self, rng: np.random.Generator, start: tuple[int, int], heading: int, lane: int,
                     min_length: float, start_fraction: float, arterials: bool = False) -> Trajectory:
        """A lane-following world path from a point on the leg leaving `start`, turning at random
        (`min_length` is measured in the plan); with `arterials`, turning only onto arterials."""
        i, j = start
        pts: list[np.ndarray] = []
        length, first = 0.0, True
        while True:
            nxt = self.step(i, j, heading)
            road = self.road_along(i, j, heading)
            off = self.lane_offset(road, heading, lane)
            u = HEADINGS[heading]
            a = self.node(i, j) + off + u * self.extent(i, j, heading)
            b = self.node(*nxt) + off - u * self.extent(*nxt, heading)
            if first:
                a = a + (b - a) * start_fraction
                first = False
            pts.extend([a, b])
            length += float(np.linalg.norm(b - a))
            options = [h for h in ((heading + 1) % 4, (heading + 3) % 4, heading)
                       if self.step(*nxt, h) is not None and (self.road_along(*nxt, h).arterial or not arterials)]
            if length >= min_length or not options:
                break
            new = heading if heading in options and rng.random() < 0.5 else int(rng.choice(options))
            new_road = self.road_along(*nxt, new)
            lane = min(lane, new_road.lanes_per_direction - 1)
            exit_point = (self.node(*nxt) + self.lane_offset(new_road, new, lane)
                          + HEADINGS[new] * self.extent(*nxt, new))
            if new == heading:
                pts.append(exit_point)
            else:
                corner = b + u * float(np.dot(exit_point - b, u))
                pts.extend(_bezier(b, corner, exit_point)[1:])
            length += float(np.linalg.norm(exit_point - b))
            i, j, heading = nxt[0], nxt[1], new
        return Trajectory(points=self.town.warp(_polyline(pts)))

    def random_leg(self, rng: np.random.Generator, near: np.ndarray, radius: float,
                   arterials: bool = False) -> tuple[tuple[int, int], int]:
        """A (start node, heading) whose leg passes within `radius` of `near`; with `arterials`, a leg
        of an arterial."""
        legs = []
        for i in range(len(self.vroads)):
            for j in range(len(self.hroads)):
                for h in range(4):
                    nxt = self.step(i, j, h)
                    if nxt is None or (arterials and not self.road_along(i, j, h).arterial):
                        continue
                    mid = 0.5 * (self.node(i, j) + self.node(*nxt))
                    if np.linalg.norm(mid - near) < radius:
                        legs.append(((i, j), h))
        if not legs:
            legs = [((0, 0), 0)]
        return legs[int(rng.integers(len(legs)))]


def sidewalk_loop(town: Town, block: tuple[int, int], clockwise: bool) -> np.ndarray:
    """World centre line of a block's sidewalk ring, walked twice round (long enough for any scene)."""
    i, j = block
    v0, v1 = [r for r in town.roads if r.axis == 1][i:i + 2]
    h0, h1 = [r for r in town.roads if r.axis == 0][j:j + 2]
    inset = WALKWAY_WIDTH / 2
    x0, x1 = v0.coord + v0.half_width + inset, v1.coord - v1.half_width - inset
    y0, y1 = h0.coord + h0.half_width + inset, h1.coord - h1.half_width - inset
    ring = [np.array(p) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    if clockwise:
        ring = ring[::-1]
    return town.warp(_polyline(ring * 2 + [ring[0]]))


def crossing_path(town: Town, crossing: dict, forward: bool) -> np.ndarray:
    """World path across a pedestrian crossing, sidewalk to sidewalk: straight in the plan, bent with
    the street (a crossing on a local street lies where its bow begins)."""
    road = town.segments[crossing["segment"]].road
    x0, y0, x1, y1 = crossing["polygon"].bounds
    reach = road.half_width + WALKWAY_WIDTH / 2
    if road.axis == 0:
        xm = 0.5 * (x0 + x1)
        a, b = np.array([xm, road.coord - reach]), np.array([xm, road.coord + reach])
    else:
        ym = 0.5 * (y0 + y1)
        a, b = np.array([road.coord - reach, ym]), np.array([road.coord + reach, ym])
    return town.warp(_polyline([a, b] if forward else [b, a]))
