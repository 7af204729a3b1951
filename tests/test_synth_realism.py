"""The synthetic world's nuScenes properties, checked against the devkit's own records: curved map
geometry of many nodes that cameras and LiDAR see painted where the map says, cameras fired by the
spinning LiDAR at their own times, and nuScenes' rates as an option."""
from __future__ import annotations

import numpy as np
import pytest
import shapely
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, transform_matrix, view_points
from PIL import Image
from pyquaternion import Quaternion
from shapely import affinity, contains_xy
from shapely.geometry import LineString, MultiPoint, Polygon, box

from fuller.cli import build_parser
from fuller.commands.data_cmd import synth_options
from fuller.config import load_config
from fuller.data import NuScenesDataset
from fuller.synth.camera import OBJECT_COLOURS
from fuller.synth.generate import SynthOptions, town_for
from fuller.synth.schema import LOCATIONS
from fuller.synth.town import NODE_SPACING, WHITE_PAINT, YELLOW_PAINT

# The real rig's firing order (scene-0061's first keyframe: front left 43 ms before LIDAR_TOP, ...,
# back left 0.5 ms before), the clockwise sweep of a 20 Hz LiDAR.
FIRING_ORDER = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT"]
REVOLUTION_US = 50_000
GREY_CLASSES = {"movable_object.barrier"}  # drawn grey-white, like paint: not separable by colour
PATCH_CHECKS = 20  # map patches per location whose rasterised pieces are checked cell by cell


def _pose(nusc, record: dict, table: str) -> np.ndarray:
    rec = nusc.get(table, record)
    return transform_matrix(rec["translation"], Quaternion(rec["rotation"]))


def _cam2lidar(nusc, sample: dict, channel: str, moving: bool = True) -> np.ndarray:
    """Float64 camera -> LiDAR straight from the records: camera -> ego at the camera's time -> global ->
    ego at the LiDAR's time -> LiDAR; `moving=False` drops the ego motion (the static calibration)."""
    cam = nusc.get("sample_data", sample["data"][channel])
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cam2ego = _pose(nusc, cam["calibrated_sensor_token"], "calibrated_sensor")
    lidar2ego = _pose(nusc, lidar["calibrated_sensor_token"], "calibrated_sensor")
    if not moving:
        return np.linalg.inv(lidar2ego) @ cam2ego
    ego_then, ego_now = (_pose(nusc, sd["ego_pose_token"], "ego_pose") for sd in (cam, lidar))
    return np.linalg.inv(lidar2ego) @ np.linalg.inv(ego_now) @ ego_then @ cam2ego


def _yaw(nusc, sd: dict) -> float:
    return Quaternion(nusc.get("ego_pose", sd["ego_pose_token"])["rotation"]).yaw_pitch_roll[0]


def _straight(nusc, a: dict, b: dict) -> bool:
    """Whether the ego drove straight (under 0.5 degrees of turn) between two sample_data records."""
    return abs(np.angle(np.exp(1j * (_yaw(nusc, a) - _yaw(nusc, b))))) < np.radians(0.5)


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


@pytest.fixture(scope="module")
def loaded(tiny, synth_root, nusc):
    """(sample record, the reader's raw sample) for every keyframe of mini_train."""
    dataset = NuScenesDataset(tiny, synth_root, "mini_train", transforms=[], nusc=nusc)
    return [(nusc.get("sample", t), dataset.load(t)) for t in dataset.samples]


# --- map geometry ------------------------------------------------------------------------------

def test_map_dividers_are_curved_polylines_of_many_nodes(synth_root, synth_options):
    """The map file holds the town's own lines, a node about every metre; those of the local streets are
    bowed, those of the arterials straight."""
    for location in LOCATIONS:
        nmap = NuScenesMap(synth_root, location)
        town = town_for(synth_options.seed, location)
        for layer in ("road_divider", "lane_divider"):
            lines = [nmap.extract_line(r["line_token"]) for r in getattr(nmap, layer)]
            assert len(lines) == len(town.layer_lines(layer)) > 10
            for line, ours in zip(lines, town.layer_lines(layer)):
                np.testing.assert_allclose(np.asarray(line.coords), np.asarray(ours.coords), atol=1e-4)
            steps = np.concatenate([np.hypot(*np.diff(np.asarray(line.coords), axis=0).T) for line in lines])
            # Spaced in the plan; bending stretches a step, by about 5 % where a bow is steepest.
            assert steps.max() <= 1.06 * NODE_SPACING
            chords = [LineString([line.coords[0], line.coords[-1]]) for line in lines]
            bows = np.array([max(chord.distance(shapely.Point(p)) for p in line.coords)
                             for line, chord in zip(lines, chords)])
            records = {"road_divider": town.road_dividers, "lane_divider": town.lane_dividers}[layer]
            local = np.array([not town.segments[r["segment"]].road.arterial for r in records])
            assert 0.2 < local.mean() < 0.8
            assert bows[local].min() > 1.0 and bows[~local].max() < 1e-3, np.round(bows, 2)


def test_paint_lies_where_the_map_json_puts_the_dividers(synth_root, synth_options):
    """Read back from the map file: both lines of each road divider are yellow paint in the ground
    raster the cameras and the LiDAR see, a lane divider's dashes are white and its gaps are not."""
    for location in LOCATIONS:
        nmap = NuScenesMap(synth_root, location)
        town = town_for(synth_options.seed, location)
        yellow, white, gaps = [], [], []
        for r in nmap.road_divider:
            line = nmap.extract_line(r["line_token"])
            for off in (-0.15, 0.15):
                pts = [line.offset_curve(off).interpolate(s) for s in np.arange(0.5, line.length - 0.5, 0.5)]
                yellow.extend(town.label_at(np.array([p.x for p in pts]), np.array([p.y for p in pts])))
        for r in nmap.lane_divider:
            line = nmap.extract_line(r["line_token"])
            # Dashes 3 m on, 6 m off; the last 6 m may hold the far end's crossing and stop line.
            for s0, out in ((1.5, white), (6.0, gaps)):
                pts = [line.interpolate(s) for s in np.arange(s0, line.length - 6.0, 9.0)]
                out.extend(town.label_at(np.array([p.x for p in pts]), np.array([p.y for p in pts])))
        assert len(yellow) > 1000 and np.mean(np.array(yellow) == YELLOW_PAINT) > 0.95
        assert len(white) > 100 and np.mean(np.array(white) == WHITE_PAINT) > 0.95
        assert np.mean(np.isin(gaps, [WHITE_PAINT, YELLOW_PAINT])) < 0.05


def test_lidar_and_cameras_see_the_map_dividers(nusc, synth_root):
    """End to end through the dataset's own records: LiDAR returns within 5 cm of a road divider's
    paint are bright; road divider paint projected into CAM_FRONT (with that image's own ego pose)
    lands on yellow pixels."""
    maps = {loc: NuScenesMap(synth_root, loc) for loc in LOCATIONS}
    bright, dark, hues = [], [], []
    for sample in nusc.sample:
        location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
        nmap = maps[location]
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        l2g = (_pose(nusc, lidar["ego_pose_token"], "ego_pose")
               @ _pose(nusc, lidar["calibrated_sensor_token"], "calibrated_sensor"))
        near = shapely.box(l2g[0, 3] - 40, l2g[1, 3] - 40, l2g[0, 3] + 40, l2g[1, 3] + 40)
        lines = [nmap.extract_line(r["line_token"]) for r in nmap.road_divider]
        paint = shapely.union_all([line.offset_curve(o) for line in lines for o in (-0.15, 0.15)
                                   if line.intersects(near)]).intersection(near)
        if paint.is_empty:
            continue
        cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(lidar["token"]))
        xyz = cloud.points[:3].T @ l2g[:3, :3].T + l2g[:3, 3]
        ground = (np.abs(xyz[:, 2]) < 0.1) & contains_xy(near, xyz[:, 0], xyz[:, 1])
        dist = shapely.distance(paint, shapely.points(xyz[ground, 0], xyz[ground, 1]))
        bright.extend(cloud.points[3, ground][dist < 0.05])
        dark.extend(cloud.points[3, ground][(dist > 1.0) & (dist < 3.0)])
        cam = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        g2c = np.linalg.inv(_pose(nusc, cam["ego_pose_token"], "ego_pose")
                            @ _pose(nusc, cam["calibrated_sensor_token"], "calibrated_sensor"))
        k = np.asarray(nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])["camera_intrinsic"])
        image = np.asarray(Image.open(nusc.get_sample_data_path(cam["token"])).convert("RGB"), dtype=np.float64)
        pts = np.array([[p.x, p.y, 0.0] for part in getattr(paint, "geoms", [paint])
                        for p in (part.interpolate(s) for s in np.arange(0.0, part.length, 0.25))])
        in_cam = pts @ g2c[:3, :3].T + g2c[:3, 3]
        in_cam = in_cam[(in_cam[:, 2] > 4.0) & (in_cam[:, 2] < 15.0)]
        uv = np.round(view_points(in_cam.T, k, normalize=True)[:2].T).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < cam["width"]) & (uv[:, 1] >= 0) & (uv[:, 1] < cam["height"])
        rgb = image[uv[ok, 1], uv[ok, 0]]
        hues.extend((rgb[:, 0] > 120) & (rgb[:, 2] < 0.6 * rgb[:, 0]))
    assert len(bright) > 50 and np.median(bright) > 50 > np.median(dark)
    assert len(hues) > 100 and np.mean(hues) > 0.8


def _lane_poses(town, step: float = 10.0):
    """(x, y, yaw) every `step` metres along the centre line of every lane, in its direction of travel."""
    for lane in town.lanes:
        a = np.asarray(lane["from_edge"].centroid.coords[0])
        b = np.asarray(lane["to_edge"].centroid.coords[0])
        line = town.world(LineString([a, b]))
        for s in np.arange(step, line.length - step, step):
            p, q = line.interpolate(s - 0.5), line.interpolate(s + 0.5)
            yield (p.x + q.x) / 2, (p.y + q.y) / 2, np.arctan2(q.y - p.y, q.x - p.x)


def test_patches_that_cut_a_curved_divider_into_pieces_are_rasterised_right(synth_root, synth_options, tiny):
    """Map patches (the tiny config's 100 m map grid) along every lane: where one curved divider leaves
    and re-enters the patch, the devkit's mask (with the reader's MultiLineString fix) draws every
    piece and nothing else, judged by each cell's distance to the clipped lines. Most patches cut one,
    so an even spread of PATCH_CHECKS of them per map is rasterised."""
    import fuller.data  # noqa: F401  (installs the devkit fix, as the reader does)

    grid = tiny.geometry.map_grid
    half = (grid.x_range[1] - grid.x_range[0]) / 2
    nx, ny = grid.shape
    for location in LOCATIONS:
        nmap = NuScenesMap(synth_root, location)
        town = town_for(synth_options.seed, location)
        lines = np.array([nmap.extract_line(r["line_token"]) for layer in ("road_divider", "lane_divider")
                          for r in getattr(nmap, layer)])
        tree, cut = shapely.STRtree(lines), []
        for x, y, yaw in _lane_poses(town):
            patch = affinity.rotate(box(x - half, y - half, x + half, y + half), yaw, origin=(x, y), use_radians=True)
            clipped = shapely.intersection(lines[tree.query(patch)], patch)
            if max(sum(g.geom_type == "LineString" for g in getattr(c, "geoms", [c])) for c in clipped) >= 2:
                cut.append((x, y, yaw, clipped))
        assert len(cut) >= PATCH_CHECKS
        for x, y, yaw, clipped in cut[::len(cut) // PATCH_CHECKS]:
            mask = nmap.get_map_mask((x, y, 2 * half, 2 * half), np.degrees(yaw), ["road_divider", "lane_divider"],
                                     (ny, nx)).any(0)
            u, v = np.meshgrid(np.arange(nx) + 0.5 - nx / 2, np.arange(ny) + 0.5 - ny / 2)
            c, s = np.cos(yaw), np.sin(yaw)
            centres = shapely.points(x + (c * u - s * v) * grid.resolution, y + (s * u + c * v) * grid.resolution)
            dist = shapely.distance(shapely.union_all(clipped), centres)
            assert mask[dist < 0.25 * grid.resolution].all() and not mask[dist > 2.5 * grid.resolution].any()


def _map_patch(nusc, sample: dict, grid) -> Polygon:
    """The global-frame rectangle the reader rasterises a keyframe's map from: the map grid laid out in
    the LiDAR frame (no augmentation), as `NuScenesDataset.map_masks` places the devkit's patch."""
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    l2g = (_pose(nusc, lidar["ego_pose_token"], "ego_pose")
           @ _pose(nusc, lidar["calibrated_sensor_token"], "calibrated_sensor"))
    (x0, x1), (y0, y1) = grid.x_range, grid.y_range
    corners = np.array([[x0, y0, 0.0, 1.0], [x1, y0, 0.0, 1.0], [x1, y1, 0.0, 1.0], [x0, y1, 0.0, 1.0]])
    return Polygon((corners @ l2g.T)[:, :2])


def test_most_keyframes_have_a_divider_the_map_patch_cuts_into_pieces(nusc, synth_root, tiny):
    """As on real nuScenes maps near curved roads, in most keyframes of the default world (the session's
    dataset is made in it) some road or lane divider leaves the reader's map patch and comes back, so
    the patch clips it into several pieces: the case the devkit needs the reader's fix for."""
    lines = {}
    for location in LOCATIONS:
        nmap = NuScenesMap(synth_root, location)
        lines[location] = np.array([nmap.extract_line(r["line_token"]) for layer in ("road_divider", "lane_divider")
                                    for r in getattr(nmap, layer)])
    cut = []
    for sample in nusc.sample:
        location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
        clipped = shapely.intersection(lines[location], _map_patch(nusc, sample, tiny.geometry.map_grid))
        cut.append(max(sum(g.geom_type == "LineString" for g in getattr(c, "geoms", [c])) for c in clipped) >= 2)
    assert len(cut) == len(nusc.sample) >= 30
    assert np.mean(cut) > 0.5, f"{sum(cut)} of {len(cut)} keyframes"


# --- camera timing -----------------------------------------------------------------------------

def test_cameras_fire_as_the_lidar_sweeps_past_them(nusc):
    """Each camera's timestamp precedes the LiDAR keyframe's by less than one revolution, in the real
    rig's firing order, and by the time the clockwise beam takes to reach the end of the revolution
    from the camera's yaw (yaws from the calibrated_sensor records). Its ego_pose record is at that
    time: where the ego was then, on its path between the two LiDAR sweeps around it."""
    checked = 0
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        cams = {ch: nusc.get("sample_data", sample["data"][ch]) for ch in FIRING_ORDER}
        stamps = np.array([cams[ch]["timestamp"] for ch in FIRING_ORDER])
        lead = lidar["timestamp"] - stamps
        assert np.all((lead > 0) & (lead < 60_000)) and np.all(np.diff(stamps) > 0), lead
        axes = np.array([Quaternion(nusc.get("calibrated_sensor", cams[ch]["calibrated_sensor_token"])["rotation"])
                         .rotate([0.0, 0.0, 1.0]) for ch in FIRING_ORDER])
        yaw = np.degrees(np.arctan2(axes[:, 1], axes[:, 0]))
        swept = (yaw[:-1] - yaw[1:]) % 360.0  # clockwise angle from one camera to the next
        np.testing.assert_allclose(np.diff(stamps), swept / 360.0 * REVOLUTION_US, atol=2.0)
        before = nusc.get("sample_data", lidar["prev"])
        a, b = (nusc.get("ego_pose", sd["ego_pose_token"]) for sd in (before, lidar))
        for ch, sd in cams.items():
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            assert pose["timestamp"] == sd["timestamp"]
            if not _straight(nusc, before, lidar):
                continue  # on a curve, the straight interpolation below is not the path
            w = (sd["timestamp"] - a["timestamp"]) / (b["timestamp"] - a["timestamp"])
            expected = (1 - w) * np.array(a["translation"]) + w * np.array(b["translation"])
            assert np.linalg.norm(np.array(pose["translation"]) - expected) < 0.02, ch
            checked += 1
    assert checked > 30


def test_camera2lidar_carries_the_ego_motion_between_camera_and_lidar_time(loaded, nusc, tiny):
    """The reader's camera -> LiDAR matrices equal the float64 chain of the records. Where the ego drove
    straight, they differ from the static calibration by how far it drove between the camera's and the
    LiDAR's time: its speed (from the LiDAR sweeps' poses) times the time offset."""
    moved = []
    for sample, raw in loaded:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        before = nusc.get("sample_data", lidar["prev"])
        now, then = (np.array(nusc.get("ego_pose", sd["ego_pose_token"])["translation"]) for sd in (lidar, before))
        speed = np.linalg.norm(now - then) / ((lidar["timestamp"] - before["timestamp"]) * 1e-6)
        for i, channel in enumerate(tiny.geometry.cameras):
            truth = _cam2lidar(nusc, sample, channel)
            np.testing.assert_allclose(raw.camera2lidar[i], truth, atol=1e-9)
            cam = nusc.get("sample_data", sample["data"][channel])
            if not _straight(nusc, before, lidar):
                continue
            shift = np.linalg.norm(truth[:3, 3] - _cam2lidar(nusc, sample, channel, moving=False)[:3, 3])
            driven = speed * (lidar["timestamp"] - cam["timestamp"]) * 1e-6
            assert abs(shift - driven) < 0.02, (channel, shift, driven)
            if lidar["timestamp"] - cam["timestamp"] > 25_000:
                moved.append(shift)
    assert len(moved) > 20 and min(moved) > 0.08


def _colour_fraction(image: np.ndarray, corners_lidar: np.ndarray, cam2lidar: np.ndarray, k: np.ndarray,
                     colour: np.ndarray) -> float | None:
    """Fraction of the pixels inside the (2 px shrunk) projected outline of a box that show its
    class's hue; None when the box is not wholly in front of the camera or too small."""
    lidar2cam = np.linalg.inv(cam2lidar)
    corners = corners_lidar @ lidar2cam[:3, :3].T + lidar2cam[:3, 3]
    if corners[:, 2].min() < 1.0:
        return None
    inner = MultiPoint(view_points(corners.T, k, normalize=True)[:2].T).convex_hull.buffer(-2.0)
    h, w = image.shape[:2]
    if inner.is_empty or inner.area < 60 or not box(0, 0, w, h).contains(inner):
        return None
    v, u = np.mgrid[0:h, 0:w]
    pixels = image[contains_xy(inner, u.ravel(), v.ravel()).reshape(h, w)]
    cosine = pixels @ colour / (np.linalg.norm(pixels, axis=1) * np.linalg.norm(colour) + 1e-9)
    return float(np.mean(cosine > 0.97))


def test_static_boxes_project_onto_their_pixels_only_with_the_ego_motion(loaded, nusc, tiny):
    """Parked vehicles, cones: boxes that do not move between camera and LiDAR time. Projected with the
    reader's matrices they cover their rendered pixels; with the static calibration (ignoring how far
    the ego moved meanwhile) they miss part of them."""
    right, static = [], []
    for sample, raw in loaded:
        _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"], box_vis_level=BoxVisibility.ANY)
        for i, channel in enumerate(tiny.geometry.cameras):
            if nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["timestamp"] - \
                    nusc.get("sample_data", sample["data"][channel])["timestamp"] < 15_000:
                continue  # the ego barely moved: both projections agree
            image = raw.images[i].astype(np.float64)
            for b in boxes:
                ann = nusc.get("sample_annotation", b.token)
                velocity = nusc.box_velocity(b.token)
                if (ann["visibility_token"] != "4" or ann["category_name"] in GREY_CLASSES
                        or not np.all(np.isfinite(velocity)) or np.linalg.norm(velocity) > 0.01):
                    continue
                colour = np.array(OBJECT_COLOURS[ann["category_name"]], dtype=np.float64)
                pair = [_colour_fraction(image, b.corners().T, m, raw.intrinsics[i], colour)
                        for m in (raw.camera2lidar[i], _cam2lidar(nusc, sample, channel, moving=False))]
                if None not in pair:
                    right.append(pair[0])
                    static.append(pair[1])
    right, static = np.array(right), np.array(static)
    assert len(right) >= 15
    assert np.median(right) > 0.95 and np.mean(right) > np.mean(static) + 0.08
    assert np.mean(right >= static - 0.01) > 0.9, np.round(np.stack([right, static]), 2)


# --- rates -------------------------------------------------------------------------------------

def test_nuscenes_rates_option_sets_a_20_hz_lidar_and_full_size_images():
    assert (SynthOptions().sweeps_per_sample, SynthOptions().image_scale) == (2, 0.5)
    nuscenes = SynthOptions(rates="nuscenes")
    assert (nuscenes.sweeps_per_sample, nuscenes.image_scale) == (9, 1.0)  # 10 sweeps per 0.5 s: 20 Hz
    assert SynthOptions(rates="nuscenes", image_scale=0.25).image_scale == 0.25
    parser = build_parser()
    args = parser.parse_args(["make-data", "--out", "x", "--nuscenes-rates"])
    assert synth_options(args) == nuscenes
    assert synth_options(parser.parse_args(["make-data", "--out", "x"])) == SynthOptions()
    with pytest.raises(ValueError, match="rates"):
        SynthOptions(rates="fast").validate()
