"""Other road users: the 10 nuScenes detection classes with plausible sizes, places and motion.

Vehicles follow lanes through the road graph, pedestrians walk sidewalks and crossings, cars and
trailers park in car parks, cones and barriers line work zones at the kerb. Places are chosen in the
town's plan and bent into the world (`Town.place`, paths through `Town.warp`). No two agents (the
ego included) ever overlap in the world: each candidate is checked against all accepted ones on a
0.25 s grid over the whole scene and redrawn if it would.

`objects_on_map` (the study world) adds agents where the map is, so the detection and map tasks need
the same cells: car parks filled further, cars parked with two wheels on the kerb (partly over
the walkway) along the local streets, and pedestrians standing on and walking back and forth over
the crossings. With `unmapped_yards` it adds yards instead of filling the car parks nearly full:
unmapped grass lots in blocks without a car park, with cars parked in rows as in a car park, and
the car parks filled only as far, so that rows of parked cars alone (what the LiDAR sees) do not
tell a car park; the ground's colour between them (what the cameras see) does. They are drawn from
their own generator, after the usual traffic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shapely.geometry import Point, Polygon, box

from .motion import RoadGraph, Trajectory, crossing_path, sidewalk_loop, static
from .town import (CARPARK_DEPTH, CARPARK_LENGTH, CROSSING_SETBACK, CROSSING_WIDTH, STOP_LINE_DEPTH, WALKWAY_WIDTH,
                   Town)

# nuScenes category -> (mean (w, l, h), std (w, l, h)), from the dataset's per-class statistics.
SIZES = {
    "vehicle.car": ((1.95, 4.62, 1.73), (0.12, 0.35, 0.15)),
    "vehicle.truck": ((2.52, 6.93, 2.84), (0.15, 1.0, 0.3)),
    "vehicle.bus.rigid": ((2.94, 11.19, 3.47), (0.08, 0.8, 0.15)),
    "vehicle.trailer": ((2.92, 12.28, 3.87), (0.15, 1.5, 0.2)),
    "vehicle.construction": ((2.82, 6.37, 3.19), (0.2, 0.8, 0.3)),
    "human.pedestrian.adult": ((0.67, 0.73, 1.77), (0.06, 0.08, 0.08)),
    "vehicle.motorcycle": ((0.77, 2.11, 1.47), (0.06, 0.12, 0.08)),
    "vehicle.bicycle": ((0.61, 1.70, 1.30), (0.05, 0.1, 0.08)),
    "movable_object.trafficcone": ((0.41, 0.41, 1.07), (0.03, 0.03, 0.08)),
    "movable_object.barrier": ((2.53, 0.50, 0.98), (0.15, 0.04, 0.05)),
}
EGO_SIZE = (1.73, 4.08, 1.56)
PARKING_SLOT = (2.6, 5.2)
# objects_on_map: the share of free car-park slots filled (with unmapped_yards the second: with the usual
# traffic's 55 %, about 71 % of the slots, so the ground shows between the cars); yards in this share of
# the blocks without a car park, this share of their slots taken (as the car parks' end up); kerb parking
# along local streets within this of the route, one car per KERB_SLOT metres with this probability, its
# centre this far (range) beyond the kerb line, so one side's wheels stand on the walkway; crossings
# within this of the route get a Poisson number of pedestrians of this mean, this share standing.
ON_MAP_PARK_FILL, YARDS_PARK_FILL = 0.95, 0.35
YARD_SHARE, YARD_FILL = 0.5, 0.7
KERB_RANGE, KERB_SLOT, KERB_SHARE, KERB_OVERHANG = 70.0, 6.5, 0.7, (0.35, 0.5)
CROSSING_RANGE, CROSSING_PEDESTRIANS, CROSSING_STANDING = 70.0, 1.5, 0.5


@dataclass
class Agent:
    category: str
    size: tuple[float, float, float]  # (w, l, h), nuScenes order
    trajectory: Trajectory
    parked: bool = False  # static by placement (parked vehicle, bicycle in a rack) rather than stopped
    shade: float = 1.0  # per-instance brightness of its colour in the cameras

    def attribute(self, t: float) -> str:
        """The nuScenes attribute at time t ('' for classes without one)."""
        moving = float(self.trajectory.speed_at(t)) > 0.3
        if self.category.startswith("human.pedestrian"):
            return "pedestrian.moving" if moving else "pedestrian.standing"
        if self.category in ("vehicle.bicycle", "vehicle.motorcycle"):
            return "cycle.without_rider" if self.parked else "cycle.with_rider"
        if self.category.startswith("vehicle."):
            if moving:
                return "vehicle.moving"
            return "vehicle.parked" if self.parked else "vehicle.stopped"
        return ""


def boxes_overlap(c1, wl1, yaw1, c2, wl2, yaw2) -> np.ndarray:
    """Separating-axis test for oriented 2-D rectangles, broadcast over leading dimensions."""
    d = c2 - c1
    axes1 = np.stack([np.cos(yaw1), np.sin(yaw1)], -1), np.stack([-np.sin(yaw1), np.cos(yaw1)], -1)
    axes2 = np.stack([np.cos(yaw2), np.sin(yaw2)], -1), np.stack([-np.sin(yaw2), np.cos(yaw2)], -1)
    separated = np.zeros(np.broadcast(c1[..., 0], c2[..., 0]).shape, dtype=bool)
    for n in (*axes1, *axes2):
        def radius(axes, wl):
            return (np.abs(0.5 * wl[..., 1] * np.sum(axes[0] * n, -1))
                    + np.abs(0.5 * wl[..., 0] * np.sum(axes[1] * n, -1)))
        separated |= np.abs(np.sum(d * n, -1)) > radius(axes1, wl1) + radius(axes2, wl2)
    return ~separated


class Population:
    """Accepted agents and their poses on the check grid, for overlap-free spawning."""

    def __init__(self, times: np.ndarray, ego: Trajectory) -> None:
        self.times = times
        self.agents: list[Agent] = []
        self._poses: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self._add(ego, EGO_SIZE)

    def _add(self, trajectory: Trajectory, size) -> None:
        self._poses.append(np.stack(trajectory.pose(self.times), -1))
        self._sizes.append(np.array([size[0], size[1]]))

    def try_add(self, agent: Agent, clearance: float = 0.3) -> bool:
        poses = np.stack(agent.trajectory.pose(self.times), -1)  # (T, 3)
        others = np.stack(self._poses)  # (K, T, 3)
        sizes = np.stack(self._sizes)[:, None, :] + clearance
        mine = np.array([agent.size[0], agent.size[1]]) + clearance
        if boxes_overlap(poses[None, :, :2], mine, poses[None, :, 2], others[..., :2], sizes, others[..., 2]).any():
            return False
        self.agents.append(agent)
        self._add(agent.trajectory, agent.size)
        return True


def _size(rng: np.random.Generator, category: str) -> tuple[float, float, float]:
    mean, std = SIZES[category]
    return tuple(float(max(m + s * rng.standard_normal(), 0.5 * m)) for m, s in zip(mean, std))


def populate(town: Town, graph: RoadGraph, ego: Trajectory, duration: float,
             rng: np.random.Generator, density: float = 1.0, lead_in: float = 0.0,
             on_map_rng: np.random.Generator | None = None, yards: bool = False) -> list[Agent]:
    """Spawn the scene's agents around the ego's route; `density` scales all counts. Vehicles are
    under way `lead_in` seconds before t = 0 (the first sweeps and camera images come earlier than
    the first keyframe), and nothing overlaps from then on. With `on_map_rng`, the agents on map areas
    (`objects_on_map`, with `yards` the unmapped yards) follow, drawn from it."""
    times = np.arange(-lead_in, duration + 1e-9, 0.25)
    pop = Population(times, ego)
    ex, ey, _ = ego.pose(times)
    route = town.unwarp(np.stack([ex, ey], -1))  # in the plan, where places are chosen

    def near_route(radius: float) -> np.ndarray:
        return route[int(rng.integers(len(route)))] + rng.uniform(-radius, radius, 2)

    def count(n: float) -> int:
        return int(rng.poisson(n * density))

    def attempt(make, n: int, tries: int = 6) -> None:
        for _ in range(n):
            for _ in range(tries):
                if pop.try_add(make()):
                    break

    def lane_vehicle(category: str, speed: tuple[float, float], radius: float = 40.0, outer: bool = False,
                     parked: bool = False):
        def make() -> Agent:
            start, heading = graph.random_leg(rng, near_route(radius), radius + 20.0)
            road = graph.road_along(*start, heading)
            lane = road.lanes_per_direction - 1 if outer else int(rng.integers(road.lanes_per_direction))
            stopped = parked or rng.random() < 0.15
            v = 0.0 if stopped else float(rng.uniform(*speed))
            traj = graph.random_route(rng, start, heading, lane, v * (duration + lead_in) + 5.0,
                                      float(rng.uniform(0.85, 0.97) if stopped else rng.uniform(0.0, 0.9)))
            traj.speed, traj.wobble, traj.omega = v, 0.1 * v / 0.4, 0.4
            traj.s0 = v * lead_in
            return Agent(category, _size(rng, category), traj, parked=parked, shade=float(rng.uniform(0.6, 1.2)))
        return make

    # Every class once close to the ego's route first (a scene then holds all ten classes within
    # the devkit's evaluation ranges), then the usual traffic at random.
    _work_zones(town, pop, rng, lambda r: near_route(8.0), [False, True])
    lanes = [("vehicle.car", (7.0, 11.0), False), ("vehicle.truck", (6.0, 10.0), False),
             ("vehicle.bus.rigid", (6.0, 9.0), False), ("vehicle.motorcycle", (7.0, 11.0), False),
             ("vehicle.bicycle", (3.0, 6.0), True)]
    for category, speed, outer in lanes:
        attempt(lane_vehicle(category, speed, radius=15.0, outer=outer), 1, tries=40)
    for category in ("vehicle.trailer", "vehicle.construction"):  # parked at the kerb
        attempt(lane_vehicle(category, (0.0, 0.0), radius=15.0, outer=True, parked=True), 1, tries=40)
    _pedestrians(town, pop, rng, lambda r: near_route(min(r, 10.0)), lambda n: 1)

    _work_zones(town, pop, rng, near_route, [bool(rng.random() < 0.5) for _ in range(count(1.5))])
    _car_parks(town, pop, rng, route, density)
    for (category, speed, outer), n in zip(lanes, (14, 2, 1.5, 2, 2)):
        attempt(lane_vehicle(category, speed, outer=outer), count(n))
    _pedestrians(town, pop, rng, near_route, count)
    if on_map_rng is not None:
        _objects_on_map(town, pop, on_map_rng, route, density, yards)
    return pop.agents


def _blocks_near(town: Town, point: np.ndarray) -> tuple[int, int]:
    i = int(np.clip(np.searchsorted(town.xs, point[0]) - 1, 0, len(town.xs) - 2))
    j = int(np.clip(np.searchsorted(town.ys, point[1]) - 1, 0, len(town.ys) - 2))
    return i, j


def _pedestrians(town: Town, pop: Population, rng, near_route, count) -> None:
    cat = "human.pedestrian.adult"

    def walker(standing: bool):
        def make() -> Agent:
            loop = sidewalk_loop(town, _blocks_near(town, near_route(50.0)), bool(rng.random() < 0.5))
            traj = Trajectory(points=loop)
            traj.s0 = float(rng.uniform(0.0, traj.length / 2))
            if standing:
                x, y, yaw = traj.pose(0.0)
                traj = static(float(x), float(y), float(yaw + rng.uniform(-np.pi, np.pi)))
            else:
                traj.speed, traj.wobble, traj.omega = float(rng.uniform(1.0, 1.6)), 0.2, 1.0
            return Agent(cat, _size(rng, cat), traj, shade=float(rng.uniform(0.6, 1.2)))
        return make

    def parked_bicycle() -> Agent:
        x, y, yaw = walker(True)().trajectory.pose(0.0)
        cat_b = "vehicle.bicycle"
        return Agent(cat_b, _size(rng, cat_b), static(float(x), float(y), float(yaw)), parked=True)

    def crosser() -> Agent:
        crossings = [c for c in town.ped_crossings
                     if np.linalg.norm(np.array(c["polygon"].centroid.coords[0]) - near_route(0.0)) < 90.0]
        crossing = crossings[int(rng.integers(len(crossings)))] if crossings else town.ped_crossings[0]
        traj = Trajectory(points=crossing_path(town, crossing, bool(rng.random() < 0.5)))
        traj.speed = float(rng.uniform(1.1, 1.6))
        traj.s0 = -float(rng.uniform(0.0, 10.0)) * traj.speed  # waits at the kerb, then crosses
        return Agent(cat, _size(rng, cat), traj, shade=float(rng.uniform(0.6, 1.2)))

    for make, n in ((walker(False), 14), (walker(True), 5), (crosser, 3), (parked_bicycle, 2)):
        for _ in range(count(n)):
            for _ in range(6):
                if pop.try_add(make()):
                    break


def _work_zones(town: Town, pop: Population, rng, near_route, barriers: list[bool]) -> None:
    """Rows of cones or barriers (one zone per entry) along a kerb, sometimes with a construction
    vehicle behind them."""
    segments = [s for s in town.segments if not s.is_intersection]
    for use_barriers in barriers:
        p = near_route(40.0)
        seg = min(segments, key=lambda s: s.polygon.distance(Point(float(p[0]), float(p[1]))))
        road = seg.road
        side = float(rng.choice([-1.0, 1.0]))
        a, b = seg.span
        spacing, n = (2.9, 4) if use_barriers else (2.5, 6)
        closest = (p[0] if road.axis == 0 else p[1]) - n * spacing / 2
        along = float(np.clip(closest, a + 2.0, max(a + 2.0, b - n * spacing - 2.0)))
        road_yaw = 0.0 if road.axis == 0 else np.pi / 2
        cat = "movable_object.barrier" if use_barriers else "movable_object.trafficcone"
        offset = side * (road.half_width - 0.45)
        for k in range(n):
            s = along + k * spacing
            x, y = (s, road.coord + offset) if road.axis == 0 else (road.coord + offset, s)
            # A barrier's long side is its width: its heading is across the road.
            yaw = road_yaw + (np.pi / 2 if use_barriers else float(rng.uniform(-np.pi, np.pi)))
            pop.try_add(Agent(cat, _size(rng, cat), static(*town.place(x, y, yaw))), clearance=0.05)
        if rng.random() < 0.5:
            c = "vehicle.construction"
            off = side * (road.half_width + WALKWAY_WIDTH + 4.0)
            s = along + n * spacing / 2
            x, y = (s, road.coord + off) if road.axis == 0 else (road.coord + off, s)
            pop.try_add(Agent(c, _size(rng, c), static(*town.place(x, y, road_yaw)), parked=True, shade=0.9))


def _car_parks(town: Town, pop: Population, rng, route: np.ndarray, density: float) -> None:
    """Cars in two rows of slots facing the aisle; trucks and trailers lengthwise in the aisle."""
    for park in town.carparks:
        poly = park["polygon"]
        if min(np.hypot(*(route - np.array(poly.centroid.coords[0])).T)) > 110.0:
            continue
        x0, y0, x1, y1 = poly.bounds
        slot_w, slot_l = PARKING_SLOT
        for row_y, yaw in ((y0 + slot_l / 2, np.pi / 2), (y1 - slot_l / 2, -np.pi / 2)):
            for x in np.arange(x0 + slot_w / 2, x1 - slot_w / 2, slot_w):
                if rng.random() < 0.55 * density:
                    cat = "vehicle.car" if rng.random() < 0.92 else "vehicle.truck"
                    size = _size(rng, cat)
                    size = (min(size[0], slot_w - 0.35), min(size[1], slot_l + 1.5), size[2])
                    yaw_i = yaw + (np.pi if rng.random() < 0.2 else 0.0) + rng.normal(0.0, 0.03)
                    place = town.place(float(x), row_y, float(yaw_i))
                    pop.try_add(Agent(cat, size, static(*place), parked=True, shade=float(rng.uniform(0.6, 1.2))),
                                clearance=0.1)
        for cat in ("vehicle.trailer", "vehicle.construction"):
            if rng.random() < 0.5 * density:
                size = _size(rng, cat)
                x = float(rng.uniform(x0 + size[1] / 2 + 1, max(x0 + size[1] / 2 + 1.5, x1 - size[1] / 2 - 1)))
                place = town.place(x, 0.5 * (y0 + y1), 0.0)
                pop.try_add(Agent(cat, size, static(*place), parked=True, shade=0.9))



def _yards(town: Town, rng: np.random.Generator) -> list[Polygon]:
    """Unmapped lots (plan), one in `YARD_SHARE` of the blocks without a car park: a car park's size
    and place in the block (`CARPARK_DEPTH`, `CARPARK_LENGTH`), on the grass. The draws are made for
    every block, whether or not it gets a yard, so a block's yard does not depend on the blocks before it."""
    lots = []
    for walkway in town.walkways:
        x0, y0, x1, y1 = Polygon(walkway.interiors[0]).bounds
        share, depth, length_u, start_u, south = rng.random(5)
        inner = box(x0, y0, x1, y1)
        if share >= YARD_SHARE or any(inner.intersects(p["polygon"]) for p in town.carparks):
            continue
        depth = CARPARK_DEPTH[0] + depth * (CARPARK_DEPTH[1] - CARPARK_DEPTH[0])
        longest = min(CARPARK_LENGTH[1], x1 - x0 - 4.0)
        if longest < CARPARK_LENGTH[0] or depth > y1 - y0 - 2.0:
            continue
        length = CARPARK_LENGTH[0] + length_u * (longest - CARPARK_LENGTH[0])
        start = x0 + 2.0 + start_u * (x1 - x0 - 4.0 - length)
        lots.append(box(start, y0, start + length, y0 + depth) if south < 0.5 else
                    box(start, y1 - depth, start + length, y1))
    return lots


def _objects_on_map(town: Town, pop: Population, rng: np.random.Generator, route: np.ndarray,
                    density: float, yards: bool = False) -> None:
    """The study world's agents on map areas (car parks, walkways, crossings) and with `yards` on the
    unmapped yards, near the route (plan)."""
    def near(geometry, radius: float) -> bool:
        c = np.asarray(geometry.centroid.coords[0])
        return bool(np.min(np.hypot(*(route - c).T)) < radius)

    def shade() -> float:
        return float(rng.uniform(0.6, 1.2))

    car = "vehicle.car"
    slot_w, slot_l = PARKING_SLOT

    def park_rows(lot, fill: float) -> None:
        """Cars in two rows of slots facing the aisle, each slot taken with probability `fill`."""
        x0, y0, x1, y1 = lot.bounds
        for row_y, yaw in ((y0 + slot_l / 2, np.pi / 2), (y1 - slot_l / 2, -np.pi / 2)):
            for x in np.arange(x0 + slot_w / 2, x1 - slot_w / 2, slot_w):
                if rng.random() < min(1.0, fill * density):
                    w, l, h = _size(rng, car)
                    size = (min(w, slot_w - 0.35), min(l, slot_l - 0.2), h)
                    yaw_i = yaw + (np.pi if rng.random() < 0.2 else 0.0) + rng.normal(0.0, 0.03)
                    pop.try_add(Agent(car, size, static(*town.place(float(x), row_y, float(yaw_i))), parked=True,
                                      shade=shade()), clearance=0.1)

    for park in town.carparks:  # more of the free slots taken
        if near(park["polygon"], 110.0):
            park_rows(park["polygon"], YARDS_PARK_FILL if yards else ON_MAP_PARK_FILL)
    for lot in _yards(town, rng) if yards else []:
        if near(lot, 110.0):
            park_rows(lot, YARD_FILL)
    # Kerb parking along the local streets, facing the traffic of their side, half over the walkway.
    margin = CROSSING_SETBACK + CROSSING_WIDTH + STOP_LINE_DEPTH + 4.0
    for seg in town.segments:
        road = seg.road
        if seg.is_intersection or road.arterial or not near(seg.polygon, KERB_RANGE):
            continue
        a, b = seg.span
        road_yaw = 0.0 if road.axis == 0 else np.pi / 2
        for side in (-1.0, 1.0):
            forward = side == (-1.0 if road.axis == 0 else 1.0)  # right-hand traffic on this side runs +axis
            for s in np.arange(a + margin, b - margin, KERB_SLOT):
                if rng.random() >= min(1.0, KERB_SHARE * density):
                    continue
                w, l, h = _size(rng, car)
                s_i = float(s + rng.uniform(-0.5, 0.5))
                offset = side * (road.half_width + float(rng.uniform(*KERB_OVERHANG)))
                x, y = (s_i, road.coord + offset) if road.axis == 0 else (road.coord + offset, s_i)
                yaw = road_yaw + (0.0 if forward else np.pi) + float(rng.normal(0.0, 0.02))
                pop.try_add(Agent(car, (w, l, h), static(*town.place(x, y, yaw)), parked=True, shade=shade()),
                            clearance=0.1)
    # Pedestrians on the crossings: standing on them, or walking over and back for the whole scene.
    ped = "human.pedestrian.adult"
    for crossing in town.ped_crossings:
        if not near(crossing["polygon"], CROSSING_RANGE):
            continue
        road = town.segments[crossing["segment"]].road
        x0, y0, x1, y1 = crossing["polygon"].bounds
        for _ in range(int(rng.poisson(CROSSING_PEDESTRIANS * density))):
            standing = bool(rng.random() < CROSSING_STANDING)
            for _ in range(6):
                size = _size(rng, ped)
                if standing:
                    x, y = float(rng.uniform(x0 + 0.4, x1 - 0.4)), float(rng.uniform(y0 + 0.4, y1 - 0.4))
                    yaw = (np.pi / 2 if road.axis == 0 else 0.0) + float(rng.choice([0.0, np.pi]))
                    traj = static(*town.place(x, y, yaw + float(rng.normal(0.0, 0.3))))
                else:
                    there = crossing_path(town, crossing, bool(rng.random() < 0.5))
                    traj = Trajectory(points=np.concatenate([there, there[::-1][1:]] * 4))
                    traj.speed = float(rng.uniform(1.0, 1.5))
                    traj.s0 = float(rng.uniform(0.0, traj.length / 4))
                if pop.try_add(Agent(ped, size, traj, shade=shade()), clearance=0.1):
                    break
