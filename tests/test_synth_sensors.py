"""Cameras and map against independent references: devkit projection, the generator's polygons."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import shapely
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from PIL import Image
from pyquaternion import Quaternion
from shapely import contains_xy
from shapely.geometry import MultiPoint
from shapely.ops import unary_union

from fuller.config import load_config
from fuller.synth.camera import OBJECT_COLOURS
from fuller.synth.generate import SynthOptions, make_dataset, town_for

GREY_CLASSES = {"movable_object.barrier"}  # drawn grey-white, like paint: not separable by colour


def test_projected_box_corners_land_on_rendered_pixels(nusc):
    fractions = []
    for sample in nusc.sample:
        for channel in ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"):
            token = sample["data"][channel]
            _, boxes, k = nusc.get_sample_data(token, box_vis_level=BoxVisibility.ALL)
            image = np.asarray(Image.open(nusc.get_sample_data_path(token)).convert("RGB"), dtype=np.float64)
            h, w = image.shape[:2]
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                if ann["visibility_token"] != "4" or ann["category_name"] in GREY_CLASSES:
                    continue
                hull = MultiPoint(view_points(box.corners(), k, normalize=True)[:2].T).convex_hull
                inner = hull.buffer(-2.0)
                if inner.is_empty or inner.area < 60:
                    continue
                v, u = np.mgrid[0:h, 0:w]
                inside = contains_xy(inner, u.ravel(), v.ravel()).reshape(h, w)
                colour = np.array(OBJECT_COLOURS[ann["category_name"]], dtype=np.float64)
                pixels = image[inside]
                cosine = pixels @ colour / (np.linalg.norm(pixels, axis=1) * np.linalg.norm(colour) + 1e-9)
                fractions.append(np.mean(cosine > 0.97))
    # The object is drawn in its class colour (shaded): inside its projected outline nearly every
    # pixel has that hue (less where another object in front hides part of it in this camera).
    assert len(fractions) >= 15
    assert np.median(fractions) > 0.95 and np.min(fractions) > 0.5, sorted(fractions)[:5]


def _lidar2global(nusc, sample) -> np.ndarray:
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    m = np.eye(4)
    m[:3, :3] = Quaternion(pose["rotation"]).rotation_matrix @ Quaternion(cs["rotation"]).rotation_matrix
    m[:3, 3] = Quaternion(pose["rotation"]).rotation_matrix @ np.array(cs["translation"]) + pose["translation"]
    return m


@functools.lru_cache(maxsize=32)
def _town_layer(seed: int, location: str, name: str):
    """The union of a map class's generator geometry in the world (dividers: both line layers)."""
    town = town_for(seed, location)
    if name == "divider":
        return unary_union(town.layer_lines("road_divider") + town.layer_lines("lane_divider"))
    return unary_union(town.layer_polygons(name))


@pytest.mark.parametrize("config", ["tiny", "base"])
def test_map_masks_agree_with_generator_polygons(nusc, synth_root, synth_options, config):
    """The dataset's masks (devkit `get_map_mask`) against the town's own shapely polygons, rasterised
    here at cell centres transformed to the global frame with the tables' poses."""
    from fuller.data import NuScenesDataset

    cfg = load_config(config)
    dataset = NuScenesDataset(cfg, synth_root, "mini_val", transforms=[], nusc=nusc)
    grid = cfg.geometry.map_grid
    xs, ys = grid.cell_centers()
    cx, cy = np.meshgrid(xs, ys, indexing="ij")  # (X, Y), the mask layout
    for index in range(0, len(dataset), 2):
        sample = dataset[index]
        rec = nusc.get("sample", sample.token)
        location = nusc.get("log", nusc.get("scene", rec["scene_token"])["log_token"])["location"]
        m = _lidar2global(nusc, rec)
        gx = m[0, 0] * cx + m[0, 1] * cy + m[0, 3]
        gy = m[1, 0] * cx + m[1, 1] * cy + m[1, 3]
        # Geometry beyond 5 m of the grid decides no cell's test below: clip it away (the dividers and
        # kerbs are curves of thousands of nodes).
        near = shapely.box(gx.min() - 5.0, gy.min() - 5.0, gx.max() + 5.0, gy.max() + 5.0)
        for c, name in enumerate(cfg.geometry.map_classes):
            mask = sample.map_masks[c]
            if name == "divider":
                lines = _town_layer(synth_options.seed, location, name).intersection(near)
                dist = shapely.distance(lines, shapely.points(gx, gy))
                assert mask[dist < 0.25 * grid.resolution].all(), name
                assert not mask[dist > 2.5 * grid.resolution].any(), name
                continue
            region = _town_layer(synth_options.seed, location, name).intersection(near)
            truth = contains_xy(region, gx, gy)
            edge = shapely.distance(region.boundary, shapely.points(gx, gy)) < 1.5 * grid.resolution
            assert truth.any() or name in ("stop_line", "carpark_area", "ped_crossing")
            # cv2's fill rounds vertices to whole pixels and fills touched pixels: allow 1.5 cells.
            disagree = (mask != truth) & ~edge
            assert not disagree.any(), (name, int(disagree.sum()))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    opts = SynthOptions(scenes=2, samples_per_scene=2, sweeps_per_sample=1, image_scale=0.1, azimuth_step_deg=2.0)
    make_dataset(tmp_path / "a", opts, workers=1, progress=False)
    make_dataset(tmp_path / "b", opts, workers=2, progress=False)
    make_dataset(tmp_path / "c", SynthOptions(**{**opts.__dict__, "seed": 1}), workers=2, progress=False)
    a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
    assert len(a) > 20 and a == b
    assert a.keys() != c.keys() or a != c


def test_make_data_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        make_dataset(tmp_path, SynthOptions(scenes=1, samples_per_scene=2), progress=False)
    with pytest.raises(ValueError, match="scenes"):
        SynthOptions(scenes=11).validate()
