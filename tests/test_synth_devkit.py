"""The synthetic dataset against the nuScenes devkit itself: loading, evaluation, LiDAR counts."""
from __future__ import annotations

import json

import numpy as np
import pytest
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import create_splits_scenes

from fuller.synth.rig import CAMERAS


def test_devkit_loads_tables_maps_and_files(nusc, synth_root, synth_options):
    SMALL = synth_options
    splits = create_splits_scenes()
    names = {s["name"] for s in nusc.scene}
    assert names == set(splits["mini_train"]) | set(splits["mini_val"])
    assert len(nusc.sample) == SMALL.scenes * SMALL.samples_per_scene
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP", *CAMERAS}
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        assert lidar["timestamp"] == sample["timestamp"]
        # Every keyframe has at least `sweeps_per_sample` earlier sweeps to aggregate.
        prev, depth = lidar["prev"], 0
        while prev and depth < SMALL.sweeps_per_sample:
            prev, depth = nusc.get("sample_data", prev)["prev"], depth + 1
        assert depth == SMALL.sweeps_per_sample
    for log in nusc.log:
        nmap = NuScenesMap(synth_root, log["location"])
        for layer in ("drivable_area", "road_segment", "lane", "ped_crossing", "walkway", "stop_line",
                      "carpark_area", "road_divider", "lane_divider"):
            assert len(getattr(nmap, layer)) > 0, layer
    # The basemap prior the devkit attaches to each map record says the ego drives on road.
    for sample in nusc.sample[::5]:
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        log = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])
        mask = nusc.get("map", log["map_token"])["mask"]
        assert mask.is_on_mask(pose["translation"][0], pose["translation"][1])[0]


def _gt_submission(nusc, split: str, rng: np.random.Generator | None = None, noise: float = 0.0) -> dict:
    """A results file made from the GT annotations (the devkit's own test pattern), optionally noisy."""
    scenes = set(create_splits_scenes()[split])
    results = {}
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in scenes:
            continue
        boxes = []
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            name = category_to_detection_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue  # the evaluator drops such GT boxes, so predicting them would be a false positive
            translation = np.array(ann["translation"])
            if rng is not None:
                translation[:2] += rng.normal(0.0, noise, 2)
            attr = nusc.get("attribute", ann["attribute_tokens"][0])["name"] if ann["attribute_tokens"] else ""
            boxes.append({"sample_token": sample["token"], "translation": [float(v) for v in translation],
                          "size": ann["size"], "rotation": ann["rotation"],
                          "velocity": [float(v) for v in np.nan_to_num(nusc.box_velocity(token)[:2])],
                          "detection_name": name, "detection_score": 1.0, "attribute_name": attr})
        results[sample["token"]] = boxes
    return {"meta": {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False,
                     "use_external": False}, "results": results}


@pytest.mark.parametrize("noise, lo, hi", [(0.0, 0.99, 1.0 + 1e-9), (1.5, 0.0, 0.6)])
def test_detection_eval_scores_gt_as_perfect_and_noise_as_worse(nusc, tmp_path, noise, lo, hi):
    submission = _gt_submission(nusc, "mini_val", np.random.default_rng(0), noise)
    assert sum(len(b) for b in submission["results"].values()) > 20
    path = tmp_path / "results.json"
    path.write_text(json.dumps(submission))
    evaluator = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), eval_set="mini_val",
                              output_dir=str(tmp_path), verbose=False)
    metrics, _ = evaluator.evaluate()
    assert lo <= metrics.mean_ap <= hi
    if noise == 0.0:
        # Every scene holds all ten classes, so each one is scored, and perfectly.
        assert min(metrics.mean_dist_aps.values()) >= 0.99


def test_num_lidar_pts_equals_devkit_points_in_box(nusc):
    checked = nonzero = 0
    for sample in nusc.sample:
        token = sample["data"]["LIDAR_TOP"]
        cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(token))
        _, boxes, _ = nusc.get_sample_data(token)
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            assert int(points_in_box(box, cloud.points[:3]).sum()) == ann["num_lidar_pts"], ann["category_name"]
            checked += 1
            nonzero += ann["num_lidar_pts"] > 0
    assert checked > 500 and nonzero > 300


def test_lidar_points_have_nuscenes_layout(nusc):
    token = nusc.sample[0]["data"]["LIDAR_TOP"]
    raw = np.fromfile(nusc.get_sample_data_path(token), dtype=np.float32).reshape(-1, 5)
    assert len(raw) > 3000
    assert set(np.unique(raw[:, 4])) <= set(range(32))  # ring index
    assert 0 <= raw[:, 3].min() and raw[:, 3].max() <= 255
    # Most returns are ground at the sensor height below the LiDAR (1.84 m).
    assert np.median(raw[:, 2]) == pytest.approx(-1.84023, abs=0.05)
