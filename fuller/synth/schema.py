"""The fixed nuScenes vocabularies (category, attribute, visibility, sensor) and scene naming."""
from __future__ import annotations

from nuscenes.utils import splits

CATEGORIES = [
    "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.wheelchair",
    "human.pedestrian.stroller", "human.pedestrian.personal_mobility", "human.pedestrian.police_officer",
    "human.pedestrian.construction_worker", "animal", "vehicle.car", "vehicle.motorcycle", "vehicle.bicycle",
    "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.truck", "vehicle.construction",
    "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.trailer", "movable_object.barrier",
    "movable_object.trafficcone", "movable_object.pushable_pullable", "movable_object.debris",
    "static_object.bicycle_rack",
]
ATTRIBUTES = [
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
]
# token, level, lower bound of the visible fraction (over all six cameras)
VISIBILITY = [("1", "v0-40", 0.0), ("2", "v40-60", 0.4), ("3", "v60-80", 0.6), ("4", "v80-100", 0.8)]
LOCATIONS = ["boston-seaport", "singapore-onenorth"]
VERSIONS = ("v1.0-mini", "v1.0-trainval")
# Mini scenes in an order that puts a validation scene early, so small sets still have one.
MINI_ORDER = ["scene-0061", "scene-0103", "scene-0553", "scene-0655", "scene-0757",
              "scene-0796", "scene-0916", "scene-1077", "scene-1094", "scene-1100"]


def visibility_token(fraction: float) -> str:
    return [tok for tok, _, lo in VISIBILITY if fraction >= lo][-1]


def scene_names(n: int) -> list[str]:
    """The first n scene names: the 10 mini scenes, then further train/val scenes (6 train : 1 val)."""
    names = MINI_ORDER[:n]
    if n > len(MINI_ORDER):
        train = [s for s in splits.train if s not in MINI_ORDER]
        val = [s for s in splits.val if s not in MINI_ORDER]
        for k in range(n - len(MINI_ORDER)):
            pool = val if k % 7 == 6 else train
            names.append(pool.pop(0))
    return names
