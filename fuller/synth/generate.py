"""`fuller make-data`: simulate scenes in the synthetic towns and write them as a nuScenes dataset.

Layout and tables follow the devkit's schema, so `NuScenes(version, dataroot)`, `NuScenesMap` and
`DetectionEval` load the result unchanged. Scenes are simulated in parallel, each from its own seed
derived from (seed, scene index), and tokens are hashes of what they name: the same seed gives the
same bytes whatever the number of workers.
"""
from __future__ import annotations

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
from .camera import OBJECT_COLOURS, CameraRenderer
from .lidar import OBJECT_INTENSITY, cast
from .map_json import town_to_map_json
from .motion import RoadGraph
from .rig import make_cameras, make_lidar, pose_matrix, quaternion_list, yaw_rotation
from .schema import ATTRIBUTES, CATEGORIES, LOCATIONS, VERSIONS, VISIBILITY, scene_names, visibility_token
from .town import ASPHALT, CARPARK, WHITE_PAINT, YELLOW_PAINT, Town, generate_town

SAMPLE_PERIOD = 0.5  # keyframes at 2 Hz, as in nuScenes
ANNOTATION_RANGE = 70.0
START_TIMESTAMP_US = 1_532_402_927_647_951


@dataclass(frozen=True)
class SynthOptions:
    """What `make-data` writes. The defaults make a set for CI and the demo (about 200 samples)."""

    scenes: int = 10
    samples_per_scene: int = 20
    seed: int = 0
    sweeps_per_sample: int = 2  # non-key LiDAR sweeps between keyframes (sweep rate 2 Hz x (this + 1))
    image_scale: float = 0.5  # of the native 1600 x 900
    azimuth_step_deg: float = 0.5
    version: str = "v1.0-mini"
    density: float = 1.0
    jpeg_quality: int = 90

    def validate(self) -> None:
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
    jobs = [(i, name, LOCATIONS[i % len(LOCATIONS)]) for i, name in enumerate(names)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(towns, options, str(root))) as pool:
        results = pool.map(_simulate_scene, jobs)
        for part in tqdm(results, total=len(jobs), desc="scenes", unit="scene", disable=not progress):
            for table, rows in part.items():
                tables[table].extend(rows)

    _write_maps(root, towns, tables, options.seed)
    for table, rows in tables.items():
        with open(root / options.version / f"{table}.json", "w") as f:
            json.dump(rows, f, indent=0)
    return {"dataroot": str(root), "version": options.version, "scenes": len(names),
            "samples": len(tables["sample"]), "annotations": len(tables["sample_annotation"]),
            "options": asdict(options)}


def town_for(seed: int, location: str) -> Town:
    """The town a dataset of this seed holds at `location` (a pure function of both)."""
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


_WORKER: dict = {}


def _init_worker(towns: dict[str, Town], options: SynthOptions, root: str) -> None:
    _WORKER.update(towns=towns, options=options, root=Path(root))


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


def _simulate_scene(job: tuple[int, str, str]) -> dict[str, list]:
    index, name, location = job
    opts: SynthOptions = _WORKER["options"]
    root: Path = _WORKER["root"]
    town: Town = _WORKER["towns"][location]
    rng = np.random.default_rng([opts.seed, index])
    tok = Tokens(opts.seed, name)
    out: dict[str, list] = {k: [] for k in ("instance", "calibrated_sensor", "ego_pose", "log", "scene", "sample",
                                             "sample_data", "sample_annotation")}

    graph = RoadGraph(town)
    duration = (opts.samples_per_scene - 1) * SAMPLE_PERIOD
    start, heading = graph.random_leg(rng, np.array([town.width, town.height]) / 2, 1e9)
    ego_speed = float(rng.uniform(5.0, 10.0))
    ego = graph.random_route(rng, start, heading, 0, ego_speed * duration + 20.0, float(rng.uniform(0.0, 0.5)))
    ego.speed, ego.wobble, ego.omega = ego_speed, 0.15 * ego_speed / 0.3, 0.3
    agents = populate(town, graph, ego, duration, rng, opts.density)
    colours = np.array([np.array(OBJECT_COLOURS[a.category]) * a.shade for a in agents]).reshape(-1, 3)
    intensity = np.array([OBJECT_INTENSITY[a.category] for a in agents])

    scene_offset_us = index * 3_600_000_000 + opts.seed % 1000 * 1_000_000
    vehicle = "n015" if location.startswith("singapore") else "n008"
    logfile = f"{vehicle}-2018-{7 + index // 28:02d}-{1 + index % 28:02d}-11-22-45{'+0800' if vehicle == 'n015' else '-0400'}"
    log_token = tok("log")
    out["log"].append({"token": log_token, "logfile": logfile, "vehicle": vehicle,
                       "date_captured": logfile[5:15], "location": location})

    lidar = make_lidar(opts.azimuth_step_deg)
    cameras = make_cameras(opts.image_scale)
    renderers = [CameraRenderer(c) for c in cameras]
    fixed = Tokens(opts.seed, "static").fixed
    calib = {}
    for channel, rot, trans, k in [("LIDAR_TOP", lidar.rotation, lidar.translation, [])] + [
            (c.channel, c.rotation, c.translation, c.intrinsic.tolist()) for c in cameras]:
        calib[channel] = tok("calibrated_sensor")
        out["calibrated_sensor"].append({"token": calib[channel], "sensor_token": fixed(f"sensor/{channel}"),
                                         "translation": [float(c) for c in trans],
                                         "rotation": quaternion_list(rot), "camera_intrinsic": k})
    lidar2ego = pose_matrix(lidar.rotation, lidar.translation)

    sample_tokens = [tok("sample") for _ in range(opts.samples_per_scene)]
    scene_token = tok("scene")
    sweeps = opts.sweeps_per_sample + 1
    chains: dict[str, list[dict]] = {}

    def timestamp(t: float) -> int:
        return START_TIMESTAMP_US + scene_offset_us + int(round(t * 1e6))

    def ego_pose(t: float) -> tuple[str, np.ndarray]:
        x, y, yaw = ego.pose(t)
        pose_token = tok("ego_pose")
        rot = yaw_rotation(float(yaw))
        out["ego_pose"].append({"token": pose_token, "timestamp": timestamp(t), "rotation": quaternion_list(rot),
                                "translation": [float(x), float(y), 0.0]})
        return pose_token, pose_matrix(rot, [float(x), float(y), 0.0])

    def add_sample_data(channel: str, t: float, key: int | None, filename: str, pose_token: str, size) -> None:
        sample = sample_tokens[key if key is not None else min(int(np.ceil(t / SAMPLE_PERIOD - 1e-9)),
                                                                   len(sample_tokens) - 1)]
        chains.setdefault(channel, []).append({
            "token": tok("sample_data"), "sample_token": sample, "ego_pose_token": pose_token,
            "calibrated_sensor_token": calib[channel], "timestamp": timestamp(t),
            "fileformat": "pcd" if channel == "LIDAR_TOP" else "jpg", "is_key_frame": key is not None,
            "height": size[1], "width": size[0], "filename": filename, "prev": "", "next": ""})

    annotations: dict[int, list[dict]] = {}
    # Sweeps before the first keyframe too, so every sample has its full history of sweeps.
    for k in range(-opts.sweeps_per_sample, (opts.samples_per_scene - 1) * sweeps + 1):
        t = k * SAMPLE_PERIOD / sweeps
        key = k // sweeps if k >= 0 and k % sweeps == 0 else None
        pose_token, ego2global = ego_pose(t)
        lidar2global = ego2global @ lidar2ego
        boxes = _boxes_at(agents, t)
        points, _ = cast(lidar, lidar2global, boxes, intensity, town, rng)
        folder = "samples" if key is not None else "sweeps"
        filename = f"{folder}/LIDAR_TOP/{logfile}__LIDAR_TOP__{timestamp(t)}.pcd.bin"
        points.tofile(root / filename)
        add_sample_data("LIDAR_TOP", t, key, filename, pose_token, (0, 0))
        if key is None:
            continue

        visible = np.zeros(len(agents))
        area = np.zeros(len(agents))
        for cam, renderer in zip(cameras, renderers):
            pose_token, _ = ego_pose(t)
            image, ids, areas = renderer.render(town, ego2global, boxes, colours)
            filename = f"samples/{cam.channel}/{logfile}__{cam.channel}__{timestamp(t)}.jpg"
            Image.fromarray(image).save(root / filename, quality=opts.jpeg_quality)
            add_sample_data(cam.channel, t, key, filename, pose_token, (cam.width, cam.height))
            visible += np.bincount(ids.ravel(), minlength=len(agents) + 1)[1:]
            area += areas

        global2lidar = np.linalg.inv(lidar2global)
        boxes_lidar = boxes.copy()
        boxes_lidar[:, :3] = boxes[:, :3] @ global2lidar[:3, :3].T + global2lidar[:3, 3]
        boxes_lidar[:, 6] = boxes[:, 6] - np.arctan2(lidar2global[1, 0], lidar2global[0, 0])
        counts = points_in_boxes(points, boxes_lidar).sum(0)
        in_range = np.hypot(boxes[:, 0] - ego2global[0, 3], boxes[:, 1] - ego2global[1, 3]) < ANNOTATION_RANGE
        for b in np.flatnonzero(in_range):
            attr = agents[b].attribute(t)
            fraction = visible[b] / area[b] if area[b] > 0 else 0.0
            annotations.setdefault(b, []).append({
                "token": tok("sample_annotation"), "sample_token": sample_tokens[key], "instance_token": "",
                "visibility_token": visibility_token(min(fraction, 1.0)),
                "attribute_tokens": [fixed(f"attribute/{attr}")] if attr else [],
                "translation": [float(c) for c in boxes[b, :3]], "size": [float(c) for c in boxes[b, 3:6]],
                "rotation": quaternion_list(yaw_rotation(float(boxes[b, 6]))), "prev": "", "next": "",
                "num_lidar_pts": int(counts[b]), "num_radar_pts": 0})

    for channel, chain in chains.items():
        for a, b in zip(chain[:-1], chain[1:]):
            a["next"], b["prev"] = b["token"], a["token"]
        out["sample_data"].extend(chain)
    for b, anns in annotations.items():
        inst = tok("instance")
        for a, nxt in zip(anns[:-1], anns[1:]):
            a["next"], nxt["prev"] = nxt["token"], a["token"]
        for a in anns:
            a["instance_token"] = inst
        out["instance"].append({"token": inst, "category_token": fixed(f"category/{agents[b].category}"),
                                "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                                "last_annotation_token": anns[-1]["token"]})
        out["sample_annotation"].extend(anns)
    for i, s in enumerate(sample_tokens):
        out["sample"].append({"token": s, "timestamp": timestamp(i * SAMPLE_PERIOD),
                              "prev": sample_tokens[i - 1] if i > 0 else "",
                              "next": sample_tokens[i + 1] if i + 1 < len(sample_tokens) else "",
                              "scene_token": scene_token})
    out["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": len(sample_tokens),
                         "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                         "name": name, "description": f"synthetic drive in {location}, {len(agents)} agents"})
    return out
