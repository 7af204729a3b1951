"""LiDAR simulation: ray casting a spinning beam pattern against the ground and the agents' boxes.

Each ray keeps its nearest hit, so objects occlude the ground and each other. Hits on a box are
pushed 2 cm into it (a real return comes from the surface; a point exactly on the surface would
fall in or out of the box by float rounding), so the points inside an annotation are exactly the
returns from that object. Intensity follows the surface: paint is bright, asphalt dark, cones
retro-reflective.

Two options change what the LiDAR sees of the ground (the study world, docs/data.md): a ground
contrast that pulls every ground intensity towards asphalt's (paint then looks like the road), and
raised walkways (a kerb), whose returns then lie at the kerb's height instead of the road's.
"""
from __future__ import annotations

import numpy as np

from .rig import Lidar
from .town import ASPHALT, CARPARK, GRASS, WALKWAY, WHITE_PAINT, YELLOW_PAINT, Town

MAX_RANGE = 90.0
PENETRATION = 0.02
DROPOUT = 0.03
GROUND_INTENSITY = {GRASS: 3.0, ASPHALT: 8.0, WALKWAY: 14.0, CARPARK: 10.0, WHITE_PAINT: 85.0, YELLOW_PAINT: 70.0}
OBJECT_INTENSITY = {
    "vehicle.car": 25.0, "vehicle.truck": 30.0, "vehicle.bus.rigid": 30.0, "vehicle.trailer": 28.0,
    "vehicle.construction": 35.0, "human.pedestrian.adult": 12.0, "vehicle.motorcycle": 20.0,
    "vehicle.bicycle": 15.0, "movable_object.trafficcone": 120.0, "movable_object.barrier": 60.0,
}
# With `equal_large_vehicle_intensity` these share one intensity: only their camera colour tells them apart.
LARGE_VEHICLES = ("vehicle.truck", "vehicle.bus.rigid", "vehicle.trailer", "vehicle.construction")
LARGE_VEHICLE_INTENSITY = 30.0


def object_intensity(category: str, equal_large_vehicles: bool = False) -> float:
    """The mean LiDAR intensity of an object class."""
    if equal_large_vehicles and category in LARGE_VEHICLES:
        return LARGE_VEHICLE_INTENSITY
    return OBJECT_INTENSITY[category]


def ground_intensity(contrast: float = 1.0) -> dict[int, float]:
    """Mean intensity per ground label: asphalt's, plus `contrast` times each label's difference from it."""
    if contrast == 1.0:
        return dict(GROUND_INTENSITY)
    asphalt = GROUND_INTENSITY[ASPHALT]
    return {k: asphalt + contrast * (v - asphalt) for k, v in GROUND_INTENSITY.items()}


def _raise_walkways(t_ground: np.ndarray, origin: np.ndarray, d: np.ndarray, town: Town,
                    kerb_height: float) -> np.ndarray:
    """Ground hits with the walkways raised to `kerb_height`: a ray whose point on the raised plane is on a
    walkway hits there (before it would reach the road level); one that passes over the road at kerb height
    and comes down on a walkway has hit the kerb's side, placed half way between the two planes."""
    t = t_ground.copy()
    down = np.flatnonzero(np.isfinite(t))
    if not len(down):
        return t
    o, dd = origin, d[down]
    t_top = (kerb_height - o[2]) / dd[:, 2]
    top = o + t_top[:, None] * dd
    low = o + t[down, None] * dd
    on_top = town.label_at(top[:, 0], top[:, 1]) == WALKWAY
    on_low = town.label_at(low[:, 0], low[:, 1]) == WALKWAY
    t[down[on_top]] = t_top[on_top]
    side = on_low & ~on_top
    t[down[side]] = 0.5 * (t_top[side] + t[down[side]])
    return t


def cast(lidar: Lidar, lidar2global: np.ndarray, boxes: np.ndarray, box_intensity: np.ndarray,
         town: Town, rng: np.random.Generator, ground_contrast: float = 1.0,
         kerb_height: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one sweep.

    boxes: (B, 7) global [x, y, z_centre, w, l, h, yaw]. Returns the points (N, 5) float32 in the
    LiDAR frame as nuScenes stores them [x, y, z, intensity, ring], and for each point the index of
    the box it hit (-1 for the ground). `ground_contrast` scales the ground intensities' differences
    from asphalt (`ground_intensity`); walkways are raised by `kerb_height` metres.
    """
    el, az = np.meshgrid(lidar.elevations, lidar.azimuths, indexing="ij")
    ring = np.broadcast_to(np.arange(len(lidar.elevations))[:, None], el.shape).ravel()
    d_lidar = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    rot, origin = lidar2global[:3, :3], lidar2global[:3, 3]
    d = d_lidar @ rot.T

    with np.errstate(divide="ignore"):
        t_best = np.where(d[:, 2] < 0.0, -origin[2] / d[:, 2], np.inf)
    if kerb_height > 0.0:
        t_best = _raise_walkways(t_best, origin, d, town, kerb_height)
    t_best[t_best > MAX_RANGE] = np.inf
    hit = np.full(len(d), -1, dtype=np.int64)

    near = np.hypot(boxes[:, 0] - origin[0], boxes[:, 1] - origin[1]) < MAX_RANGE + 10.0
    for b in np.flatnonzero(near):
        x, y, z, w, l, h, yaw = boxes[b]
        c, s = np.cos(yaw), np.sin(yaw)
        rel = origin - np.array([x, y, z])
        o_b = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]])
        d_b = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], -1)
        half = np.array([l / 2, w / 2, h / 2])
        d_safe = np.where(np.abs(d_b) < 1e-12, 1e-12, d_b)
        t1, t2 = (-half - o_b) / d_safe, (half - o_b) / d_safe
        t_near = np.minimum(t1, t2).max(1)
        t_far = np.maximum(t1, t2).min(1)
        better = (t_near <= t_far) & (t_near > 0.0) & (t_near < t_best)
        t_best[better] = np.minimum(t_near[better] + PENETRATION, 0.5 * (t_near[better] + t_far[better]))
        hit[better] = b

    keep = np.isfinite(t_best) & (rng.random(len(d)) > DROPOUT)
    t, hit, ring, d_lidar, d = t_best[keep], hit[keep], ring[keep], d_lidar[keep], d[keep]
    xyz_global = origin + t[:, None] * d
    labels = town.label_at(xyz_global[:, 0], xyz_global[:, 1])
    ground = ground_intensity(ground_contrast)
    intensity = np.select([labels == k for k in ground], list(ground.values()), 5.0)
    intensity = np.where(hit >= 0, box_intensity[np.maximum(hit, 0)], intensity)
    intensity = np.clip(np.round(intensity * rng.uniform(0.8, 1.2, len(t))), 0.0, 255.0)
    points = np.concatenate([t[:, None] * d_lidar, intensity[:, None], ring[:, None]], axis=1)
    return points.astype(np.float32), hit
