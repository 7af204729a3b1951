"""The study world (`make-data --study-world`), checked through the devkit's own records against a
default-world set of the same seed: the LiDAR barely sees paint and finds walkways raised by a kerb,
the cameras see night, fog and clear scenes (objects poorly, the near map well), large vehicles share
one LiDAR intensity, and more objects stand on car parks, walkways and crossings. A third set, the
study world with the LiDAR blind to the map (no paint contrast, no kerb, unmapped yards), sees paint
as asphalt, walkways at road level, and rows of parked cars on yards."""
from __future__ import annotations

import re

import numpy as np
import pytest
import shapely
from nuscenes import NuScenes
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, transform_matrix, view_points
from nuscenes.utils.splits import _get_custom_splits_file_path, get_scenes_of_custom_split
from PIL import Image
from pyquaternion import Quaternion
from shapely import contains_xy

from fuller.cli import build_parser
from fuller.commands.data_cmd import synth_options
from fuller.synth.generate import SynthOptions, make_dataset
from fuller.synth.schema import LOCATIONS

# Seed 8 gives the three scenes night, fog and clear (asserted below); 2 keyframes each, small images.
SMALL = dict(scenes=3, samples_per_scene=2, sweeps_per_sample=0, image_scale=0.2, azimuth_step_deg=0.8, seed=8)
BLIND = dict(lidar_ground_contrast=0.0, kerb_height=0.0, unmapped_yards=True)
LARGE_VEHICLES = ("vehicle.truck", "vehicle.bus.rigid", "vehicle.trailer", "vehicle.construction")


@pytest.fixture(scope="session")
def worlds(tmp_path_factory):
    """{"study": (root, NuScenes, summary), "default": ..., "blind": ...}: the same seed and sizes in
    each world; "blind" is the study world with the LiDAR blind to the map (`BLIND`)."""
    out = {}
    for world, options in (("study", SynthOptions(**SMALL, world="study")), ("default", SynthOptions(**SMALL)),
                           ("blind", SynthOptions(**SMALL, world="study", **BLIND))):
        root = tmp_path_factory.mktemp(f"synth_{world}") / "nuscenes"
        summary = make_dataset(root, options, progress=False)
        out[world] = (str(root), NuScenes("v1.0-mini", str(root), verbose=False), summary)
    return out


@pytest.fixture(scope="session")
def maps(worlds):
    root = worlds["study"][0]  # the towns depend on the seed only: both worlds share them
    return {loc: NuScenesMap(root, loc) for loc in LOCATIONS}


def _pose(nusc, token: str, table: str) -> np.ndarray:
    rec = nusc.get(table, token)
    return transform_matrix(rec["translation"], Quaternion(rec["rotation"]))


def _location(nusc, sample: dict) -> str:
    return nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]


def _condition(nusc, sample: dict) -> str:
    match = re.search(r"condition=(\w+)$", nusc.get("scene", sample["scene_token"])["description"])
    return match.group(1) if match else "none"


def _polygons(nmap: NuScenesMap, layer: str, near: shapely.Geometry | None = None):
    polys = [nmap.extract_polygon(r["polygon_token"]) for r in getattr(nmap, layer)]
    return shapely.union_all([p for p in polys if near is None or p.intersects(near)])


def _lidar(nusc, sample: dict):
    """(points (N, 4) [x, y, z, intensity] in the LiDAR frame, lidar -> global, LiDAR height above the
    ground from its calibrated_sensor record, annotation boxes in the LiDAR frame)."""
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    l2g = (_pose(nusc, sd["ego_pose_token"], "ego_pose")
           @ _pose(nusc, sd["calibrated_sensor_token"], "calibrated_sensor"))
    cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
    _, boxes, _ = nusc.get_sample_data(sd["token"])
    return cloud.points[:4].T, l2g, calib["translation"][2], boxes


def _ground_points(nusc, sample: dict):
    """Points within 60 m that hit no annotated object (agents are annotated out to 70 m), with their
    global x, y, height above the road and intensity."""
    points, l2g, height, boxes = _lidar(nusc, sample)
    on_object = np.zeros(len(points), dtype=bool)
    for box in boxes:
        on_object |= points_in_box(box, points[:, :3].T, wlh_factor=1.1)
    xyz = points[:, :3] @ l2g[:3, :3].T + l2g[:3, 3]
    keep = ~on_object & (points[:, 2] + height < 0.5) & (np.hypot(points[:, 0], points[:, 1]) < 60.0)
    return xyz[keep, 0], xyz[keep, 1], points[keep, 2] + height, points[keep, 3], l2g


# --- options -------------------------------------------------------------------------------------

def test_study_world_preset_sets_every_option_and_the_default_world_none():
    d, s = SynthOptions(), SynthOptions(world="study")
    assert (d.lidar_ground_contrast, d.kerb_height, d.camera_conditions, d.equal_large_vehicle_intensity,
            d.objects_on_map) == (1.0, 0.0, "clear", False, False)
    assert (s.lidar_ground_contrast, s.kerb_height, s.camera_conditions, s.equal_large_vehicle_intensity,
            s.objects_on_map) == (0.01, 0.12, "varied", True, True)
    assert not d.unmapped_yards and not s.unmapped_yards
    assert SynthOptions(world="study", kerb_height=0.0).kerb_height == 0.0  # an explicit value wins
    parser = build_parser()
    args = ["make-data", "--out", "x"]
    assert synth_options(parser.parse_args(args)) == d
    assert synth_options(parser.parse_args([*args, "--study-world"])) == s
    one = synth_options(parser.parse_args([*args, "--kerb-height", "0.2", "--objects-on-map"]))
    assert (one.kerb_height, one.objects_on_map, one.lidar_ground_contrast, one.world) == (0.2, True, 1.0, "default")
    assert not synth_options(parser.parse_args([*args, "--study-world", "--no-objects-on-map"])).objects_on_map
    for bad, words in [(dict(world="night"), ("world", "default", "'night'")),
                       (dict(lidar_ground_contrast=1.5), ("lidar_ground_contrast", "0.0..1.0", "1.5")),
                       (dict(kerb_height=-0.1), ("kerb_height", "0.0..0.3", "-0.1")),
                       (dict(camera_conditions="rain"), ("camera_conditions", "varied", "'rain'")),
                       (dict(objects_on_map="yes"), ("objects_on_map", "True or False", "'yes'")),
                       (dict(unmapped_yards=True), ("unmapped_yards", "objects_on_map", "False"))]:
        with pytest.raises(ValueError) as exc:
            SynthOptions(**bad).validate()
        assert all(w in str(exc.value) for w in words), exc.value


def test_splits_json_is_the_devkits_custom_split_of_every_scene(worlds):
    for root, nusc, _ in worlds.values():
        assert _get_custom_splits_file_path(nusc) == f"{root}/v1.0-mini/splits.json"
        assert get_scenes_of_custom_split("all", nusc) == [s["name"] for s in nusc.scene]


# --- LiDAR ---------------------------------------------------------------------------------------

def _paint_and_asphalt(nusc, maps) -> tuple[np.ndarray, np.ndarray]:
    """Intensities of road-level returns within 5 cm of a road divider's double line (the map's line,
    offset 0.15 m to both sides), and of those 1-3 m from it on the road segments (asphalt)."""
    paint, asphalt = [], []
    for sample in nusc.sample:
        x, y, z, intensity, l2g = _ground_points(nusc, sample)
        nmap = maps[_location(nusc, sample)]
        near = shapely.box(l2g[0, 3] - 40, l2g[1, 3] - 40, l2g[0, 3] + 40, l2g[1, 3] + 40)
        lines = [nmap.extract_line(r["line_token"]) for r in nmap.road_divider]
        lines = shapely.union_all([line.offset_curve(o) for line in lines if line.intersects(near)
                                   for o in (-0.15, 0.15)])
        road = _polygons(nmap, "road_segment", near)
        flat = (np.abs(z) < 0.05) & contains_xy(near, x, y)
        dist = shapely.distance(lines, shapely.points(x[flat], y[flat]))
        paint.extend(intensity[flat][dist < 0.05])
        on_road = contains_xy(road, x[flat], y[flat])
        asphalt.extend(intensity[flat][(dist > 1.0) & (dist < 3.0) & on_road])
    return np.array(paint), np.array(asphalt)


def test_lidar_barely_sees_paint_in_the_study_world(worlds, maps):
    """Default world: paint returns are over 5x as bright as asphalt's. Study world: the paint stands out
    from asphalt by under 5 % of that (ground contrast 0.01); at contrast 0 ("blind") by under 1 %,
    with asphalt's median."""
    (p_def, a_def), (p_study, a_study) = (_paint_and_asphalt(worlds[w][1], maps) for w in ("default", "study"))
    assert min(len(p_def), len(p_study)) > 30 and min(len(a_def), len(a_study)) > 300
    assert p_def.mean() > 5 * a_def.mean()
    assert abs(p_study.mean() - a_study.mean()) < 0.05 * (p_def.mean() - a_def.mean())
    assert np.median(a_study) == np.median(a_def)  # asphalt itself unchanged
    p_blind, a_blind = _paint_and_asphalt(worlds["blind"][1], maps)
    assert len(p_blind) > 30 and np.median(p_blind) == np.median(a_blind) == np.median(a_def)
    assert abs(p_blind.mean() - a_blind.mean()) < 0.01 * (p_def.mean() - a_def.mean())


def test_walkway_returns_lie_at_the_kerb_height(worlds, maps):
    """Ground returns inside the map's walkways (20 cm in from their edges) are at the kerb's height above
    the road (the LiDAR's height from its calibrated_sensor record), those on road segments at the road's."""
    kerb = SynthOptions(world="study").kerb_height
    for world, expected in (("study", kerb), ("default", 0.0), ("blind", 0.0)):
        nusc = worlds[world][1]
        walk, road = [], []
        for sample in nusc.sample:
            x, y, z, _, l2g = _ground_points(nusc, sample)
            nmap = maps[_location(nusc, sample)]
            near = shapely.box(l2g[0, 3] - 40, l2g[1, 3] - 40, l2g[0, 3] + 40, l2g[1, 3] + 40)
            walk.extend(z[contains_xy(_polygons(nmap, "walkway", near).buffer(-0.2), x, y)])
            road.extend(z[contains_xy(_polygons(nmap, "road_segment", near).buffer(-0.2), x, y)])
        walk, road = np.array(walk), np.array(road)
        assert len(walk) > 200 and len(road) > 1000
        assert np.mean(np.abs(walk - expected) < 0.01) > 0.9, (world, np.percentile(walk, [5, 50, 95]))
        assert np.mean(np.abs(road) < 0.01) > 0.99


def test_large_vehicles_share_one_lidar_intensity(worlds):
    """Mean intensity of the returns inside each large-vehicle class's boxes: equal (within 5 %) in the
    study world, over 15 % apart in the default one."""
    for world in ("study", "default"):
        nusc = worlds[world][1]
        per_class: dict[str, list] = {c: [] for c in LARGE_VEHICLES}
        for sample in nusc.sample:
            points, _, _, boxes = _lidar(nusc, sample)
            for box in boxes:
                if box.name in per_class:
                    per_class[box.name].extend(points[points_in_box(box, points[:, :3].T), 3])
        means = {c: np.mean(v) for c, v in per_class.items() if len(v) >= 20}
        assert len(means) == len(LARGE_VEHICLES), {c: len(v) for c, v in per_class.items()}
        ratio = max(means.values()) / min(means.values())
        assert (ratio < 1.05) if world == "study" else (ratio > 1.15), (world, means)


# --- cameras -------------------------------------------------------------------------------------

def _camera(nusc, sample: dict, channel: str = "CAM_FRONT"):
    cam = nusc.get("sample_data", sample["data"][channel])
    g2c = np.linalg.inv(_pose(nusc, cam["ego_pose_token"], "ego_pose")
                        @ _pose(nusc, cam["calibrated_sensor_token"], "calibrated_sensor"))
    k = np.asarray(nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])["camera_intrinsic"])
    image = np.asarray(Image.open(nusc.get_sample_data_path(cam["token"])).convert("RGB"), dtype=np.float64)
    return image, g2c, k


def _pixels(points_global: np.ndarray, image, g2c, k, near: float, far: float) -> np.ndarray:
    """RGB under global points between `near` and `far` metres in front of the camera."""
    in_cam = points_global @ g2c[:3, :3].T + g2c[:3, 3]
    in_cam = in_cam[(in_cam[:, 2] > near) & (in_cam[:, 2] < far)]
    if not len(in_cam):
        return np.zeros((0, 3))
    uv = np.round(view_points(in_cam.T, k, normalize=True)[:2].T).astype(int)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < image.shape[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < image.shape[0])
    return image[uv[ok, 1], uv[ok, 0]]


def test_scenes_are_night_fog_and_clear_and_night_is_dark(worlds):
    """Each scene's description names its condition; night images are far darker than clear ones."""
    root, nusc, summary = worlds["study"]
    conditions = {s["name"]: re.search(r"condition=(\w+)$", s["description"]).group(1) for s in nusc.scene}
    assert sorted(conditions.values()) == ["clear", "fog", "night"] and summary["conditions"] == conditions
    assert all("condition=" not in s["description"] for s in worlds["default"][1].scene)
    brightness: dict[str, list] = {"clear": [], "night": [], "fog": []}
    for sample in nusc.sample:
        for channel in ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"):
            brightness[_condition(nusc, sample)].append(_camera(nusc, sample, channel)[0].mean())
    assert np.mean(brightness["night"]) < 0.35 * np.mean(brightness["clear"]), brightness


def test_cameras_see_the_near_map_in_every_condition_and_far_objects_fade_in_fog(worlds, maps):
    """Road divider paint 4-15 m ahead of CAM_FRONT is yellow against the road beside it in every
    condition; annotated objects 25-60 m off (the pixel under each box centre) lie close to the colour of
    the fog (the image's top row, the sky at that image's exposure) in fog, far from the sky's when clear."""
    nusc = worlds["study"][1]
    yellow: dict[str, list] = {"clear": [], "night": [], "fog": []}
    far: dict[str, list] = {"clear": [], "night": [], "fog": []}
    for sample in nusc.sample:
        condition = _condition(nusc, sample)
        image, g2c, k = _camera(nusc, sample)
        nmap = maps[_location(nusc, sample)]
        origin = np.linalg.inv(g2c)[:3, 3]
        near = shapely.box(origin[0] - 20, origin[1] - 20, origin[0] + 20, origin[1] + 20)
        for line in (nmap.extract_line(r["line_token"]) for r in nmap.road_divider):
            if not line.intersects(near):
                continue
            for offset, on_paint in ((0.15, True), (-0.15, True), (1.5, False), (-1.5, False)):
                part = line.offset_curve(offset).intersection(near)
                for piece in getattr(part, "geoms", [part]):
                    pts = np.array([[p.x, p.y, 0.0] for p in (piece.interpolate(s) for s in
                                                              np.arange(0.0, piece.length, 0.25))]).reshape(-1, 3)
                    rgb = _pixels(pts, image, g2c, k, 4.0, 15.0)
                    yellow[condition].append((on_paint, rgb[:, 0] - rgb[:, 2]))
        for ann in (nusc.get("sample_annotation", t) for t in sample["anns"]):
            rgb = _pixels(np.array([ann["translation"]]), image, g2c, k, 25.0, 60.0)
            far[condition].extend(np.linalg.norm(rgb - image[0].mean(0), axis=1))
    for condition, rows in yellow.items():
        paint = np.concatenate([v for on, v in rows if on])
        road = np.concatenate([v for on, v in rows if not on])
        assert len(paint) > 20 and len(road) > 20, condition
        # Yellow minus blue: ~170 on the paint, ~0 on asphalt; at its darkest the night leaves a fifth.
        assert np.median(paint) - np.median(road) > 25.0, (condition, np.median(paint), np.median(road))
    assert len(far["fog"]) > 10 and len(far["clear"]) > 10
    assert np.median(far["fog"]) < 0.3 * np.median(far["clear"]), {c: np.median(v) for c, v in far.items() if v}


# --- objects on map areas ------------------------------------------------------------------------

def _annotations_on(nusc, maps, layer: str, category: str | None = None) -> int:
    """Annotations (of `category`, or any) whose centre lies on a polygon of the map layer."""
    polys = {loc: _polygons(nmap, layer) for loc, nmap in maps.items()}
    n = 0
    for ann in nusc.sample_annotation:
        if category is not None and nusc.get("instance", ann["instance_token"])["category_token"] != \
                next(c["token"] for c in nusc.category if c["name"] == category):
            continue
        location = _location(nusc, nusc.get("sample", ann["sample_token"]))
        n += bool(contains_xy(polys[location], *ann["translation"][:2]))
    return n


def test_more_objects_stand_on_car_parks_and_pedestrians_on_crossings(worlds, maps):
    study, default = worlds["study"][1], worlds["default"][1]
    parks = _annotations_on(study, maps, "carpark_area"), _annotations_on(default, maps, "carpark_area")
    assert parks[0] > 1.3 * parks[1] + 10, parks
    # With the yards, car parks are filled only to 55 % + 35 % of the rest (71 %) of their slots.
    blind = _annotations_on(worlds["blind"][1], maps, "carpark_area")
    assert parks[1] < blind < parks[0], (parks, blind)
    ped = "human.pedestrian.adult"
    crossing = _annotations_on(study, maps, "ped_crossing", ped), _annotations_on(default, maps, "ped_crossing", ped)
    assert crossing[0] >= 10 and crossing[0] > 2 * crossing[1], crossing


def test_cars_park_half_on_the_kerb(worlds, maps):
    """Car footprints over both a walkway (over 0.5 m of their width) and a road segment (over 0.2 m):
    many in the study world, next to none in the default one."""
    counts = []
    for world in ("study", "default"):
        nusc = worlds[world][1]
        walk = {loc: _polygons(nmap, "walkway") for loc, nmap in maps.items()}
        road = {loc: _polygons(nmap, "road_segment") for loc, nmap in maps.items()}
        car = next(c["token"] for c in nusc.category if c["name"] == "vehicle.car")
        n = 0
        for ann in nusc.sample_annotation:
            if nusc.get("instance", ann["instance_token"])["category_token"] != car:
                continue
            location = _location(nusc, nusc.get("sample", ann["sample_token"]))
            w, l, _ = ann["size"]
            yaw = Quaternion(ann["rotation"]).yaw_pitch_roll[0]
            foot = shapely.affinity.rotate(shapely.box(-l / 2, -w / 2, l / 2, w / 2), yaw, use_radians=True)
            foot = shapely.affinity.translate(foot, *ann["translation"][:2])
            on_walk, on_road = foot.intersection(walk[location]).area, foot.intersection(road[location]).area
            n += on_walk > 0.5 * l and on_road > 0.2 * l
        counts.append(n)
    assert counts[0] >= 20 and counts[1] <= 0.1 * counts[0], counts


def test_cars_park_in_rows_on_unmapped_yards(worlds, maps):
    """Parked cars whose centre lies on no road segment, car park or walkway (on the grass of a yard):
    many with `unmapped_yards`, in rows of slots (the nearest other such car within 3.5 m, a slot's
    width and a little), none in the default or the study world."""
    mapped = {loc: shapely.union_all([_polygons(nmap, layer) for layer in ("road_segment", "carpark_area", "walkway")])
              for loc, nmap in maps.items()}
    counts = []
    for world in ("blind", "study", "default"):
        nusc = worlds[world][1]
        car = next(c["token"] for c in nusc.category if c["name"] == "vehicle.car")
        off_map: dict[str, list] = {}
        for ann in nusc.sample_annotation:
            if nusc.get("instance", ann["instance_token"])["category_token"] != car:
                continue
            location = _location(nusc, nusc.get("sample", ann["sample_token"]))
            if not contains_xy(mapped[location], *ann["translation"][:2]):
                off_map.setdefault(ann["sample_token"], []).append(ann["translation"][:2])
        in_rows = 0
        for centres in off_map.values():
            c = np.array(centres)
            d = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1)) + np.eye(len(c)) * 1e9
            in_rows += int(np.sum(d.min(1) < 3.5))
        counts.append((sum(map(len, off_map.values())), in_rows))
    (yards, in_rows), (study, _), (default, _) = counts
    assert yards >= 20 and in_rows >= 0.8 * yards and study == default == 0, counts
