"""The training dataset class against the devkit and closed-form references."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from PIL import Image

from fuller.config import load_config
from fuller.geometry import project
from fuller.data import DatasetError, NuScenesDataset, open_nuscenes


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


@pytest.fixture(scope="module")
def dataset(tiny, synth_root, nusc):
    return NuScenesDataset(tiny, synth_root, "mini_train", nusc=nusc)


def test_sample_layout_follows_the_config(dataset, tiny, nusc, synth_options):
    g = tiny.geometry
    assert len(dataset) == 8 * synth_options.samples_per_scene
    s = dataset[4]
    assert s.images.shape == (len(g.cameras), *g.image_size, 3) and s.images.dtype == np.uint8
    assert s.points.dtype == np.float32 and s.points.shape[1] == 5
    assert s.gt_boxes.shape[1] == 9 and len(s.gt_boxes) == len(s.gt_labels) > 5
    assert s.map_masks.shape == (len(g.map_classes), *g.map_grid.shape) and s.map_masks.dtype == bool
    # Time lags are the sweeps' timestamp differences, the keyframe's points are the file's.
    lidar = nusc.get("sample_data", nusc.get("sample", s.token)["data"]["LIDAR_TOP"])
    lags, sd = [0.0], lidar
    while sd["prev"] and len(lags) < g.sweeps:
        sd = nusc.get("sample_data", sd["prev"])
        lags.append((lidar["timestamp"] - sd["timestamp"]) * 1e-6)
    assert np.allclose(np.unique(s.points[:, 4]), sorted(lags), atol=1e-6)
    key = LidarPointCloud.from_file(nusc.get_sample_data_path(lidar["token"]))
    key.remove_close(1.0)
    np.testing.assert_allclose(s.points[s.points[:, 4] == 0, :4], key.points.T, atol=1e-4)


def test_boxes_project_through_resize_onto_the_same_image_content(dataset, nusc):
    """`lidar2image` (intrinsics, camera2lidar, img_aug) against the devkit's own projection of the
    annotation in the camera frame, followed by the resize/crop in closed form; and the resized image
    at the projected pixel shows what the original showed there."""
    raw = dataset.load(dataset.samples[3])
    s = dataset[3]
    h0, w0 = raw.images.shape[1:3]
    h1, w1 = s.images.shape[1:3]
    scale = max(w1 / w0, h1 / h0)
    lidar_token = nusc.get("sample", s.token)["data"]["LIDAR_TOP"]
    _, lidar_boxes, _ = nusc.get_sample_data(lidar_token)
    centres = np.array([[*b.center, 1.0] for b in lidar_boxes])
    checked = 0
    for i, channel in enumerate(dataset.geometry.cameras):
        token = nusc.get("sample", s.token)["data"][channel]
        _, cam_boxes, k = nusc.get_sample_data(token, box_vis_level=BoxVisibility.NONE)
        for lidar_centre, box in zip(centres, cam_boxes):
            if box.center[2] < 2.0:
                continue
            u, v = view_points(box.center[:, None], k, normalize=True)[:2, 0]
            expected = np.array([u * scale - (w0 * scale - w1) / 2, v * scale - (h0 * scale - h1)])
            uv, _ = project(lidar_centre[None, :3], s.lidar2image[i], s.img_aug[i])
            np.testing.assert_allclose(uv[0], expected, atol=1e-3)
            checked += 1
    assert checked > 20
    rng = np.random.default_rng(0)
    uv1 = rng.uniform([5, 5], [w1 - 6, h1 - 6], size=(400, 2))
    uv0 = (uv1 + [(w0 * scale - w1) / 2, h0 * scale - h1]) / scale
    for i in range(len(s.images)):
        warped = s.images[i][np.round(uv1[:, 1]).astype(int), np.round(uv1[:, 0]).astype(int)].astype(float)
        orig = raw.images[i][np.round(uv0[:, 1]).astype(int), np.round(uv0[:, 0]).astype(int)].astype(float)
        assert np.median(np.abs(warped - orig)) < 6


def test_box_centres_light_up_the_expected_map_cells(synth_root, nusc):
    """End to end axis convention: cars drive on roads, so the map cell at each moving car's centre,
    found with the config grid's `index`, is drivable (a transposed or flipped mask would fail)."""
    for config in ("tiny", "base"):
        cfg = load_config(config)
        ds = NuScenesDataset(cfg, synth_root, "mini_val", transforms=[], nusc=nusc)
        drivable = cfg.geometry.map_classes.index("drivable_area")
        car = cfg.geometry.classes.index("car")
        hits = []
        for index in range(len(ds)):
            s = ds[index]
            moving = (s.gt_labels == car) & (np.hypot(s.gt_boxes[:, 7], s.gt_boxes[:, 8]) > 2.0)
            ix, iy = cfg.geometry.map_grid.index(s.gt_boxes[moving, 0], s.gt_boxes[moving, 1])
            nx, ny = cfg.geometry.map_grid.shape
            ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            hits.extend(s.map_masks[drivable, ix[ok], iy[ok]])
        assert len(hits) > 10 and all(hits)


def test_velocity_in_lidar_frame_matches_heading(dataset, tiny):
    """Moving vehicles move along their heading (vx, vy rotated into the LiDAR frame with the box)."""
    s = dataset[5]
    v = s.gt_boxes[:, 7:9]
    moving = np.hypot(v[:, 0], v[:, 1]) > 3.0
    assert moving.sum() >= 2
    heading = np.stack([np.cos(s.gt_boxes[moving, 6]), np.sin(s.gt_boxes[moving, 6])], -1)
    cosine = np.sum(heading * v[moving], 1) / np.hypot(v[moving, 0], v[moving, 1])
    assert np.all(cosine > 0.9)


def test_bad_dataroot_errors_name_the_path(tmp_path, tiny, synth_root):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(missing)):
        open_nuscenes(missing, "v1.0-mini")
    with pytest.raises(DatasetError, match="no table folder for version 'v1.0-mini'"):
        open_nuscenes(tmp_path, "v1.0-mini")
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "scene.json").write_text("[]")
    with pytest.raises(DatasetError, match="missing tables .*sample.json"):
        open_nuscenes(tmp_path, "v1.0-mini")
    with pytest.raises(DatasetError, match="neither a nuScenes split"):
        NuScenesDataset(tiny, synth_root, "mini_test")


def test_cli_show_sample_writes_a_picture_and_reports_bad_input(synth_root, tmp_path):
    out = tmp_path / "sample.png"
    done = subprocess.run([sys.executable, "-m", "fuller", "show-sample", "--data", synth_root, "--index", "2",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    width, height = Image.open(out).size
    assert width > 1000 and height > 500
    bad = subprocess.run([sys.executable, "-m", "fuller", "show-sample", "--data", str(tmp_path / "none"),
                          "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and str(tmp_path / "none") in bad.stderr
