"""`fuller make-data`: simulate scenes in the synthetic towns and write them as a nuScenes dataset.

Layout and tables follow the devkit's schema, so `NuScenes(version, dataroot)`, `NuScenesMap` and
`DetectionEval` load the result unchanged. Scenes are simulated in parallel, each from its own seed
derived from (seed, scene index), and tokens are hashes of what they name: the same seed gives the
same bytes whatever the number of workers.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .agents import Agent, populate
from .camera import CONDITIONS, EXPOSURE, OBJECT_COLOURS, CameraRenderer, draw_condition
from .lidar import cast, object_intensity
from .map_json import town_to_map_json
from .motion import RoadGraph
from .rig import make_cameras, make_lidar, pose_matrix, quaternion_list, yaw_rotation
from .schema import ATTRIBUTES, CATEGORIES, LOCATIONS, VERSIONS, VISIBILITY, scene_names, visibility_token
from .town import ASPHALT, CARPARK, WHITE_PAINT, YELLOW_PAINT, Town, generate_town

SAMPLE_PERIOD = 0.5  # keyframes at 2 Hz, as in nuScenes
# Traffic is under way this long before the first keyframe: its earlier sweeps and its camera images
# (taken up to a LiDAR revolution before the LiDAR timestamp) see moving vehicles.
LEAD_IN = SAMPLE_PERIOD
# (sweeps_per_sample, image_scale) of each `rates` choice: the light default, and nuScenes' own
# (20 Hz LiDAR, i.e. 9 sweeps between 2 Hz keyframes, and 1600 x 900 images).
RATES = {"default": (2, 0.5), "nuscenes": (9, 1.0)}
ANNOTATION_RANGE = 70.0
# The recording car starts on an arterial leg within this of the town centre (the town's outer arterials
# have nothing beyond them) and keeps to the arterials, as survey drives keep to main roads.
EGO_START_RADIUS = 130.0
START_TIMESTAMP_US = 1_532_402_927_647_951
# The worlds `SynthOptions.world` names: the values each sets for the options left unset (None).
# "study" builds in a camera/LiDAR modality bias and a detection/map task conflict (docs/data.md).
WORLDS = {
    "default": {"lidar_ground_contrast": 1.0, "kerb_height": 0.0, "camera_conditions": "clear",
                "equal_large_vehicle_intensity": False, "objects_on_map": False, "unmapped_yards": False},
    "study": {"lidar_ground_contrast": 0.01, "kerb_height": 0.12, "camera_conditions": "varied",
              "equal_large_vehicle_intensity": True, "objects_on_map": True, "unmapped_yards": False},
}
MAX_KERB_HEIGHT = 0.3
# Study-world draws come from their own generator per scene, so the default world's draws (and bytes)
# stay what they are with every option off.
STUDY_STREAM = 77


@dataclass(frozen=True)
class SynthOptions:
    """What `make-data` writes. The defaults make a set for CI and the demo (about 200 samples).

    `rates` picks the sweep count and image size left unset (None): "default" (2 sweeps, half
    resolution) or "nuscenes" (9 sweeps, i.e. a 20 Hz LiDAR, and full 1600 x 900 images).

    `world` likewise picks the world options left unset: "default" (contrast 1, no kerb, clear
    cameras, per-class LiDAR intensities, the usual traffic) or "study" (the values of `WORLDS["study"]`):
    `lidar_ground_contrast` scales how far ground intensities lie from asphalt's; `kerb_height` raises
    the walkways in the LiDAR's geometry (metres); `camera_conditions` "varied" draws clear, night or
    fog per scene with per-image exposure; `equal_large_vehicle_intensity` gives trucks, buses,
    trailers and construction vehicles one LiDAR intensity; `objects_on_map` adds parked cars in the
    car parks and on the kerbs and pedestrians on the crossings; `unmapped_yards` (with
    `objects_on_map`) adds rows of parked cars on unmapped grass lots and fills the car parks only as
    far, so that car rows alone do not tell a car park.
    """

    scenes: int = 10
    samples_per_scene: int = 20
    seed: int = 0
    sweeps_per_sample: int | None = None  # non-key LiDAR sweeps between keyframes (sweep rate 2 Hz x (this + 1))
    image_scale: float | None = None  # of the native 1600 x 900
    azimuth_step_deg: float = 0.5
    version: str = "v1.0-mini"
    density: float = 1.0
    jpeg_quality: int = 90
    rates: str = "default"
    world: str = "default"
    lidar_ground_contrast: float | None = None  # 1.0 in the default world
    kerb_height: float | None = None  # 0.0 in the default world
    camera_conditions: str | None = None  # "clear" in the default world
    equal_large_vehicle_intensity: bool | None = None  # False in the default world
    objects_on_map: bool | None = None  # False in the default world
    unmapped_yards: bool | None = None  # False in the default and the study world

    def __post_init__(self) -> None:
        sweeps, scale = RATES.get(self.rates, RATES["default"])  # an unknown name is reported by validate
        if self.sweeps_per_sample is None:
            object.__setattr__(self, "sweeps_per_sample", sweeps)
        if self.image_scale is None:
            object.__setattr__(self, "image_scale", scale)
        for name, value in WORLDS.get(self.world, WORLDS["default"]).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def validate(self) -> None:
        if self.rates not in RATES:
            raise ValueError(f"rates: expected one of {sorted(RATES)}, got {self.rates!r}")
        if self.world not in WORLDS:
            raise ValueError(f"world: expected one of {sorted(WORLDS)}, got {self.world!r}")
        number = (int, float, np.integer, np.floating)
        c = self.lidar_ground_contrast
        if isinstance(c, bool) or not isinstance(c, number) or not 0.0 <= c <= 1.0:
            raise ValueError(f"lidar_ground_contrast: expected a number in 0.0..1.0, got {c!r}")
        k = self.kerb_height
        if isinstance(k, bool) or not isinstance(k, number) or not 0.0 <= k <= MAX_KERB_HEIGHT:
            raise ValueError(f"kerb_height: expected metres in 0.0..{MAX_KERB_HEIGHT} (a kerb), got {k!r}")
        if self.camera_conditions not in CONDITIONS:
            raise ValueError(f"camera_conditions: expected one of {sorted(CONDITIONS)}, "
                             f"got {self.camera_conditions!r}")
        for name in ("equal_large_vehicle_intensity", "objects_on_map", "unmapped_yards"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if self.unmapped_yards and not self.objects_on_map:
            raise ValueError("unmapped_yards: needs objects_on_map (the yards are drawn with the objects on "
                             "map areas), got objects_on_map=False")
        if self.version not in VERSIONS:
            raise ValueError(f"version: expected one of {VERSIONS}, got {self.version!r}")
        if self.version == "v1.0-mini" and not 1 <= self.scenes <= 10:
            raise ValueError(f"scenes: v1.0-mini holds 1 to 10 scenes, got {self.scenes} "
                             "(use --version v1.0-trainval for more)")
        if self.scenes < 1 or self.samples_per_scene < 2:
            raise ValueError(f"scenes >= 1 and samples_per_scene >= 2 expected, got {self.scenes}, "
                             f"{self.samples_per_scene}")
        if not 0.05 <= self.image_scale <= 1.0:
            raise ValueError(f"image_scale: expected 0.05..1.0, got {self.image_scale}")


class Tokens:
    """Deterministic 32-hex tokens: md5 of (seed, name); counters make repeated names unique."""

    def __init__(self, seed: int, namespace: str) -> None:
        self.prefix = f"{seed}/{namespace}"
        self.counts: dict[str, int] = {}

    def fixed(self, name: str) -> str:
        """The token of a record named once per dataset (sensors, categories, attributes)."""
        return hashlib.md5(f"{self.prefix}/{name}/0".encode()).hexdigest()

    def __call__(self, name: str) -> str:
        k = self.counts.get(name, 0)
        self.counts[name] = k + 1
        return hashlib.md5(f"{self.prefix}/{name}/{k}".encode()).hexdigest()


def make_dataset(out: str | os.PathLike, options: SynthOptions = SynthOptions(), workers: int | None = None,
                 progress: bool = True) -> dict:
    """Write the dataset under `out` (must be empty or absent). Returns a summary dict."""
    options.validate()
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: output directory exists and is not empty")
    for sub in ("maps/expansion", options.version, "samples/LIDAR_TOP", "sweeps/LIDAR_TOP",
                *(f"samples/{c.channel}" for c in make_cameras(options.image_scale))):
        (root / sub).mkdir(parents=True, exist_ok=True)

    names = scene_names(options.scenes)
    locations = sorted({LOCATIONS[i % len(LOCATIONS)] for i in range(len(names))}, key=LOCATIONS.index)
    towns = {loc: town_for(options.seed, loc) for loc in locations}
    tables = _static_tables(options.seed)
    jobs = [SceneJob(i, name, LOCATIONS[i % len(LOCATIONS)], options, root) for i, name in enumerate(names)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(simulate_scene, jobs)
        for part in tqdm(results, total=len(jobs), desc="scenes", unit="scene", disable=not progress):
            for table, rows in part.items():
                tables[table].extend(rows)

    _write_maps(root, towns, tables, options.seed)
    for table, rows in tables.items():
        with open(root / options.version / f"{table}.json", "w") as f:
            json.dump(rows, f, indent=0)
    # The devkit's custom-split file (nuscenes.utils.splits.get_scenes_of_custom_split): "all" scenes.
    with open(root / options.version / "splits.json", "w") as f:
        json.dump({"all": names}, f, indent=0)
    summary = {"dataroot": str(root), "version": options.version, "scenes": len(names),
               "samples": len(tables["sample"]), "annotations": len(tables["sample_annotation"]),
               "options": asdict(options)}
    if options.camera_conditions == "varied":
        summary["conditions"] = {s["name"]: s["description"].rsplit("condition=", 1)[1] for s in tables["scene"]}
    return summary


@functools.lru_cache(maxsize=8)
def town_for(seed: int, location: str) -> Town:
    """The town a dataset of this seed holds at `location` (a pure function of both, built once per
    process)."""
    return generate_town(np.random.default_rng([seed, 1000 + LOCATIONS.index(location)]))


def _static_tables(seed: int) -> dict[str, list]:
    tok = Tokens(seed, "static").fixed
    tables: dict[str, list] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
        "scene", "sample", "sample_data", "sample_annotation", "map")}
    tables["category"] = [{"token": tok(f"category/{c}"), "name": c, "description": c} for c in CATEGORIES]
    tables["attribute"] = [{"token": tok(f"attribute/{a}"), "name": a, "description": a} for a in ATTRIBUTES]
    tables["visibility"] = [{"token": t, "level": level, "description": f"visibility of whole object is {level}"}
                            for t, level, _ in VISIBILITY]
    channels = ["LIDAR_TOP"] + [c.channel for c in make_cameras(1.0)]
    tables["sensor"] = [{"token": tok(f"sensor/{ch}"), "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else
                         "camera"} for ch in channels]
    return tables


def _write_maps(root: Path, towns: dict[str, Town], tables: dict[str, list], seed: int) -> None:
    """Expansion JSON per location, plus the basemap PNG the `map` table points to (a drivable-
    surface prior at 0.1 m, row 0 at the top = largest y, as the devkit's MapMask reads it)."""
    for loc, town in towns.items():
        with open(root / "maps" / "expansion" / f"{loc}.json", "w") as f:
            json.dump(town_to_map_json(town, Tokens(seed, f"map/{loc}")), f)
        token = hashlib.md5(f"{seed}/basemap/{loc}".encode()).hexdigest()
        drivable = np.isin(town.labels, [ASPHALT, CARPARK, WHITE_PAINT, YELLOW_PAINT])
        Image.fromarray(np.flipud(drivable).astype(np.uint8) * 255).save(root / "maps" / f"{token}.png")
        logs = [log["token"] for log in tables["log"] if log["location"] == loc]
        tables["map"].append({"token": token, "log_tokens": logs, "category": "semantic_prior",
                              "filename": f"maps/{token}.png"})


def _boxes_at(agents: list[Agent], t: float) -> np.ndarray:
    """(B, 7) global boxes [x, y, z_centre, w, l, h, yaw] at time t."""
    rows = []
    for a in agents:
        x, y, yaw = a.trajectory.pose(t)
        w, l, h = a.size
        rows.append([float(x), float(y), h / 2, w, l, h, float(yaw)])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def points_in_boxes(points_lidar: np.ndarray, boxes_lidar: np.ndarray) -> np.ndarray:
    """(N, B) bool: point inside box, boxes (B, 7) [x, y, z, w, l, h, yaw] in the points' frame."""
    d = points_lidar[:, None, :3].astype(np.float64) - boxes_lidar[None, :, :3]
    c, s = np.cos(boxes_lidar[:, 6]), np.sin(boxes_lidar[:, 6])
    along = d[..., 0] * c + d[..., 1] * s
    across = -d[..., 0] * s + d[..., 1] * c
    return ((np.abs(along) <= boxes_lidar[:, 4] / 2) & (np.abs(across) <= boxes_lidar[:, 3] / 2)
            & (np.abs(d[..., 2]) <= boxes_lidar[:, 5] / 2))


@dataclass(frozen=True)
class SceneJob:
    """One scene to simulate in a worker process: everything it needs is in here (the town is
    rebuilt in the worker from the seed, cheaper than sending it)."""

    index: int
    name: str
    location: str
    options: SynthOptions
    root: Path


TABLES_PER_SCENE = ("instance", "calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data",
                    "sample_annotation")


class SceneSimulator:
    """One scene: traffic around an ego drive, every LiDAR sweep and keyframe camera image written
    to disk, and the scene's rows of the nuScenes tables. `run` does the steps in order; the random
    draws happen in a fixed order, so a scene's bytes depend only on (seed, scene index)."""

    def __init__(self, job: SceneJob) -> None:
        self.job, self.opts = job, job.options
        self.town = town_for(self.opts.seed, job.location)
        self.rng = np.random.default_rng([self.opts.seed, job.index])
        # The study world's draws, one generator each (conditions, agents on the map, image exposure and
        # noise), apart from `rng`: the default world's draws stay the same whatever is switched on here.
        self.study_rng = [np.random.default_rng([self.opts.seed, job.index, STUDY_STREAM, k]) for k in range(3)]
        self.condition = (draw_condition(self.study_rng[0]) if self.opts.camera_conditions == "varied"
                          else None)
        self.tok = Tokens(self.opts.seed, job.name)
        self.fixed = Tokens(self.opts.seed, "static").fixed
        self.tables: dict[str, list] = {k: [] for k in TABLES_PER_SCENE}
        self.chains: dict[str, list[dict]] = {}
        self.annotations: dict[int, list[dict]] = {}
        self.scene_offset_us = job.index * 3_600_000_000 + self.opts.seed % 1000 * 1_000_000

    def run(self) -> dict[str, list]:
        self._drive_and_traffic()
        self._log()
        self._sensors()
        self.sample_tokens = [self.tok("sample") for _ in range(self.opts.samples_per_scene)]
        self.scene_token = self.tok("scene")
        sweeps = self.opts.sweeps_per_sample + 1
        # Sweeps before the first keyframe too, so every sample has its full history of sweeps.
        for k in range(-self.opts.sweeps_per_sample, (self.opts.samples_per_scene - 1) * sweeps + 1):
            self._sweep(k * SAMPLE_PERIOD / sweeps, k // sweeps if k >= 0 and k % sweeps == 0 else None)
        self._link_sample_data()
        self._instances()
        self._samples_and_scene()
        return self.tables

    def _drive_and_traffic(self) -> None:
        """The ego's route along the arterials and its speed, and the agents populated along it."""
        rng, town = self.rng, self.town
        graph = RoadGraph(town)
        self.duration = (self.opts.samples_per_scene - 1) * SAMPLE_PERIOD
        start, heading = graph.random_leg(rng, np.array([town.width, town.height]) / 2, EGO_START_RADIUS,
                                          arterials=True)
        speed = float(rng.uniform(5.0, 10.0))
        ego = graph.random_route(rng, start, heading, 0, speed * (self.duration + LEAD_IN) + 20.0,
                                 float(rng.uniform(0.0, 0.5)), arterials=True)
        ego.speed, ego.wobble, ego.omega, ego.s0 = speed, 0.15 * speed / 0.3, 0.3, speed * LEAD_IN
        self.ego = ego
        on_map = self.study_rng[1] if self.opts.objects_on_map else None
        self.agents = populate(town, graph, ego, self.duration, rng, self.opts.density, LEAD_IN, on_map,
                               self.opts.unmapped_yards)
        self.colours = np.array([np.array(OBJECT_COLOURS[a.category]) * a.shade for a in self.agents]).reshape(-1, 3)
        self.intensity = np.array([object_intensity(a.category, self.opts.equal_large_vehicle_intensity)
                                   for a in self.agents])

    def _log(self) -> None:
        index, location = self.job.index, self.job.location
        vehicle = "n015" if location.startswith("singapore") else "n008"
        zone = "+0800" if vehicle == "n015" else "-0400"
        self.logfile = f"{vehicle}-2018-{7 + index // 28:02d}-{1 + index % 28:02d}-11-22-45{zone}"
        self.log_token = self.tok("log")
        self.tables["log"].append({"token": self.log_token, "logfile": self.logfile, "vehicle": vehicle,
                                   "date_captured": self.logfile[5:15], "location": location})

    def _sensors(self) -> None:
        """The rig (LiDAR and the six cameras) and its calibrated_sensor rows."""
        self.lidar = make_lidar(self.opts.azimuth_step_deg)
        self.cameras = make_cameras(self.opts.image_scale)
        self.renderers = [CameraRenderer(c) for c in self.cameras]
        self.calib = {}
        for channel, rot, trans, k in [("LIDAR_TOP", self.lidar.rotation, self.lidar.translation, [])] + [
                (c.channel, c.rotation, c.translation, c.intrinsic.tolist()) for c in self.cameras]:
            self.calib[channel] = self.tok("calibrated_sensor")
            self.tables["calibrated_sensor"].append({
                "token": self.calib[channel], "sensor_token": self.fixed(f"sensor/{channel}"),
                "translation": [float(c) for c in trans], "rotation": quaternion_list(rot), "camera_intrinsic": k})
        self.lidar2ego = pose_matrix(self.lidar.rotation, self.lidar.translation)

    def _timestamp(self, t: float) -> int:
        return START_TIMESTAMP_US + self.scene_offset_us + int(round(t * 1e6))

    def _ego_pose(self, t: float) -> tuple[str, np.ndarray]:
        x, y, yaw = self.ego.pose(t)
        pose_token = self.tok("ego_pose")
        rot = yaw_rotation(float(yaw))
        self.tables["ego_pose"].append({"token": pose_token, "timestamp": self._timestamp(t),
                                        "rotation": quaternion_list(rot), "translation": [float(x), float(y), 0.0]})
        return pose_token, pose_matrix(rot, [float(x), float(y), 0.0])

    def _add_sample_data(self, channel: str, t: float, key: int | None, filename: str, pose_token: str,
                         size: tuple[int, int]) -> None:
        last = len(self.sample_tokens) - 1
        sample = self.sample_tokens[key if key is not None else min(int(np.ceil(t / SAMPLE_PERIOD - 1e-9)), last)]
        self.chains.setdefault(channel, []).append({
            "token": self.tok("sample_data"), "sample_token": sample, "ego_pose_token": pose_token,
            "calibrated_sensor_token": self.calib[channel], "timestamp": self._timestamp(t),
            "fileformat": "pcd" if channel == "LIDAR_TOP" else "jpg", "is_key_frame": key is not None,
            "height": size[1], "width": size[0], "filename": filename, "prev": "", "next": ""})

    def _sweep(self, t: float, key: int | None) -> None:
        """One LiDAR sweep at time t; at a keyframe (``key``: the sample index) also the cameras and
        the annotations."""
        pose_token, ego2global = self._ego_pose(t)
        lidar2global = ego2global @ self.lidar2ego
        boxes = _boxes_at(self.agents, t)
        points, _ = cast(self.lidar, lidar2global, boxes, self.intensity, self.town, self.rng,
                         self.opts.lidar_ground_contrast, self.opts.kerb_height)
        folder = "samples" if key is not None else "sweeps"
        filename = f"{folder}/LIDAR_TOP/{self.logfile}__LIDAR_TOP__{self._timestamp(t)}.pcd.bin"
        points.tofile(self.job.root / filename)
        self._add_sample_data("LIDAR_TOP", t, key, filename, pose_token, (0, 0))
        if key is not None:
            visible, area = self._images(t, key)
            self._annotate(t, key, points, boxes, lidar2global, ego2global, visible, area)

    def _images(self, t: float, key: int) -> tuple[np.ndarray, np.ndarray]:
        """Each camera's image of the keyframe at LiDAR time t. A camera fires at its own time (when the
        LiDAR beam crosses its field of view, `Camera.fire_offset`), and its image shows the ego and the
        agents where they are then, with that time's ego pose in its own ego_pose record. Returns per
        agent its visible and its projected pixel area."""
        visible = np.zeros(len(self.agents))
        area = np.zeros(len(self.agents))
        for cam, renderer in zip(self.cameras, self.renderers):
            t_cam = t + cam.fire_offset
            pose_token, ego2global = self._ego_pose(t_cam)
            seen = {}
            if self.condition is not None:
                seen = {"condition": self.condition, "noise": self.study_rng[2],
                        "exposure": float(self.study_rng[2].uniform(*EXPOSURE))}
            image, ids, areas = renderer.render(self.town, ego2global, _boxes_at(self.agents, t_cam), self.colours,
                                                **seen)
            filename = f"samples/{cam.channel}/{self.logfile}__{cam.channel}__{self._timestamp(t_cam)}.jpg"
            Image.fromarray(image).save(self.job.root / filename, quality=self.opts.jpeg_quality)
            self._add_sample_data(cam.channel, t_cam, key, filename, pose_token, (cam.width, cam.height))
            visible += np.bincount(ids.ravel(), minlength=len(self.agents) + 1)[1:]
            area += areas
        return visible, area

    def _annotate(self, t: float, key: int, points: np.ndarray, boxes: np.ndarray, lidar2global: np.ndarray,
                  ego2global: np.ndarray, visible: np.ndarray, area: np.ndarray) -> None:
        """The keyframe's sample_annotation rows: agents in range, with LiDAR point counts and visibility."""
        global2lidar = np.linalg.inv(lidar2global)
        boxes_lidar = boxes.copy()
        boxes_lidar[:, :3] = boxes[:, :3] @ global2lidar[:3, :3].T + global2lidar[:3, 3]
        boxes_lidar[:, 6] = boxes[:, 6] - np.arctan2(lidar2global[1, 0], lidar2global[0, 0])
        counts = points_in_boxes(points, boxes_lidar).sum(0)
        in_range = np.hypot(boxes[:, 0] - ego2global[0, 3], boxes[:, 1] - ego2global[1, 3]) < ANNOTATION_RANGE
        for b in np.flatnonzero(in_range):
            attr = self.agents[b].attribute(t)
            fraction = visible[b] / area[b] if area[b] > 0 else 0.0
            self.annotations.setdefault(b, []).append({
                "token": self.tok("sample_annotation"), "sample_token": self.sample_tokens[key], "instance_token": "",
                "visibility_token": visibility_token(min(fraction, 1.0)),
                "attribute_tokens": [self.fixed(f"attribute/{attr}")] if attr else [],
                "translation": [float(c) for c in boxes[b, :3]], "size": [float(c) for c in boxes[b, 3:6]],
                "rotation": quaternion_list(yaw_rotation(float(boxes[b, 6]))), "prev": "", "next": "",
                "num_lidar_pts": int(counts[b]), "num_radar_pts": 0})

    def _link_sample_data(self) -> None:
        for chain in self.chains.values():
            for a, b in zip(chain[:-1], chain[1:]):
                a["next"], b["prev"] = b["token"], a["token"]
            self.tables["sample_data"].extend(chain)

    def _instances(self) -> None:
        """One instance per annotated agent, its annotations linked in time."""
        for b, anns in self.annotations.items():
            inst = self.tok("instance")
            for a, nxt in zip(anns[:-1], anns[1:]):
                a["next"], nxt["prev"] = nxt["token"], a["token"]
            for a in anns:
                a["instance_token"] = inst
            self.tables["instance"].append({
                "token": inst, "category_token": self.fixed(f"category/{self.agents[b].category}"),
                "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                "last_annotation_token": anns[-1]["token"]})
            self.tables["sample_annotation"].extend(anns)

    def _samples_and_scene(self) -> None:
        tokens = self.sample_tokens
        for i, s in enumerate(tokens):
            self.tables["sample"].append({"token": s, "timestamp": self._timestamp(i * SAMPLE_PERIOD),
                                          "prev": tokens[i - 1] if i > 0 else "",
                                          "next": tokens[i + 1] if i + 1 < len(tokens) else "",
                                          "scene_token": self.scene_token})
        self.tables["scene"].append({
            "token": self.scene_token, "log_token": self.log_token, "nbr_samples": len(tokens),
            "first_sample_token": tokens[0], "last_sample_token": tokens[-1], "name": self.job.name,
            "description": self.description()})

    def description(self) -> str:
        """The scene's description; with varied camera conditions it ends in "condition=<name>"."""
        text = f"synthetic drive in {self.job.location}, {len(self.agents)} agents"
        return text if self.condition is None else f"{text}, condition={self.condition.name}"


def simulate_scene(job: SceneJob) -> dict[str, list]:
    """The worker's entry point: one scene's table rows (its files are written as it goes)."""
    return SceneSimulator(job).run()
