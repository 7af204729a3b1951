"""Evaluation against independent references: the devkit's own annotation records, a naive
float64 IoU, closed-form augmentations, and the devkit scoring ground truth as perfect."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import transform_matrix
from PIL import Image
from pyquaternion import Quaternion

from fuller.config import load_config
from fuller.data import NuScenesDataset
from fuller.evaluation import (EvaluationError, MapIoU, Prediction, attribute_names, draw_prediction,
                                     evaluate, format_table, to_devkit_boxes, write_results_json)

VAL = "mini_val"


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


@pytest.fixture(scope="module")
def val(tiny, synth_root, nusc):
    return NuScenesDataset(tiny, synth_root, VAL, nusc=nusc)


@pytest.fixture(scope="module")
def val_samples(val):
    return [val[i] for i in range(len(val))]


def _gt_prediction(sample, with_map: bool) -> Prediction:
    n = len(sample.gt_boxes)
    return Prediction(boxes=sample.gt_boxes.astype(np.float64), scores=np.ones(n), labels=sample.gt_labels,
                      map_probs=sample.map_masks.astype(np.float32) if with_map else None)


def _annotation_tokens(nusc, token: str) -> list[str]:
    """The annotations the dataset keeps as boxes, in its order (mapped class, at least one point)."""
    anns = [nusc.get("sample_annotation", a) for a in nusc.get("sample", token)["anns"]]
    return [a["token"] for a in anns if category_to_detection_name(a["category_name"]) is not None
            and a["num_lidar_pts"] + a["num_radar_pts"] >= 1]


def _augment(boxes: np.ndarray, angle: float, scale: float, flip: bool, shift: np.ndarray):
    """Boxes after rotation about z, uniform scaling, a y flip and a shift, in closed form, with the
    4x4 matrix of the same augmentation (original LiDAR frame -> augmented)."""
    b = boxes.astype(np.float64).copy()
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    b[:, :2] = b[:, :2] @ rot.T
    b[:, 7:9] = b[:, 7:9] @ rot.T
    b[:, 6] += angle
    b[:, [0, 1, 2, 3, 4, 5, 7, 8]] *= scale
    if flip:
        b[:, [1, 8]] *= -1
        b[:, 6] *= -1
    b[:, :3] += shift
    r = np.eye(4)
    r[:2, :2] = rot
    f = np.diag([1.0, -1.0 if flip else 1.0, 1.0, 1.0])
    t = np.eye(4)
    t[:3, 3] = shift
    return b, t @ f @ np.diag([scale, scale, scale, 1.0]) @ r


@pytest.mark.parametrize("augmented", [False, True])
def test_gt_boxes_convert_back_to_the_annotation_records(val, val_samples, nusc, tiny, augmented):
    checked = 0
    rng = np.random.default_rng(1)
    for sample in val_samples[:3]:
        tokens = _annotation_tokens(nusc, sample.token)
        assert len(tokens) == len(sample.gt_boxes) > 5
        boxes = sample.gt_boxes.astype(np.float64)
        if augmented:
            boxes, sample.lidar_aug = _augment(boxes, rng.uniform(-np.pi, np.pi), rng.uniform(0.9, 1.1), True,
                                               rng.normal(0.0, 0.5, 3))
        scores = np.linspace(1.0, 0.5, len(boxes))  # distinct, so the output keeps the annotation order
        pred = Prediction(boxes=boxes, scores=scores, labels=sample.gt_labels, map_probs=None)
        try:
            out = to_devkit_boxes(sample, pred, tiny.geometry.classes)
        finally:
            sample.lidar_aug = np.eye(4)
        assert len(out) == len(tokens)
        for res, token in zip(out, tokens):
            ann = nusc.get("sample_annotation", token)
            assert res["sample_token"] == sample.token
            assert res["detection_name"] == category_to_detection_name(ann["category_name"])
            np.testing.assert_allclose(res["translation"], ann["translation"], atol=1e-4)
            np.testing.assert_allclose(res["size"], ann["size"], atol=1e-4)
            q, q_ref = Quaternion(res["rotation"]), Quaternion(ann["rotation"])
            assert abs(q.norm - 1.0) < 1e-9
            np.testing.assert_allclose(q.rotation_matrix, q_ref.rotation_matrix, atol=1e-4)
            np.testing.assert_allclose(res["velocity"], np.nan_to_num(nusc.box_velocity(token)[:2]), atol=1e-4)
            checked += 1
    assert checked > 20


def test_conversion_matches_devkit_box_transforms_under_tilted_poses(tiny):
    """Poses with pitch and roll (real ego poses have them) make the quaternion order matter: the
    reference is the devkit's Box moved LiDAR -> ego -> global with its own rotate/translate."""
    rng = np.random.default_rng(5)
    classes = tiny.geometry.classes
    for _ in range(5):
        q_l2e, q_e2g = Quaternion.random(), Quaternion.random()
        t_l2e, t_e2g = rng.normal(0, 2, 3), rng.normal(0, 300, 3)
        sample = SimpleNamespace(token="tok", lidar_aug=np.eye(4),
                                 lidar2ego=transform_matrix(t_l2e, q_l2e), ego2global=transform_matrix(t_e2g, q_e2g))
        k = 8
        boxes = np.concatenate([rng.uniform(-40, 40, (k, 3)), rng.uniform(0.5, 5, (k, 3)),
                                rng.uniform(-np.pi, np.pi, (k, 1)), rng.normal(0, 3, (k, 2))], 1)
        pred = Prediction(boxes=boxes, scores=np.linspace(0.9, 0.1, k), labels=rng.integers(0, len(classes), k))
        out = to_devkit_boxes(sample, pred, classes)
        for res, b in zip(out, boxes):
            ref = Box(b[:3], b[3:6], Quaternion(axis=[0, 0, 1], radians=b[6]), velocity=(b[7], b[8], 0.0))
            ref.rotate(q_l2e)
            ref.translate(t_l2e)
            ref.rotate(q_e2g)
            ref.translate(t_e2g)
            np.testing.assert_allclose(res["translation"], ref.center, atol=1e-6)
            np.testing.assert_allclose(res["size"], ref.wlh, atol=1e-9)
            np.testing.assert_allclose(Quaternion(res["rotation"]).rotation_matrix, ref.rotation_matrix, atol=1e-9)
            np.testing.assert_allclose(res["velocity"], ref.velocity[:2], atol=1e-9)


def test_results_json_holds_every_token_and_at_most_500_boxes(val, val_samples, tiny, tmp_path):
    rng = np.random.default_rng(0)
    boxes_by_token = {}
    for sample in val_samples[:2]:
        k = 700
        boxes = np.concatenate([rng.uniform(-40, 40, (k, 3)), rng.uniform(0.5, 5, (k, 3)),
                                rng.uniform(-np.pi, np.pi, (k, 1)), rng.normal(0, 3, (k, 2))], 1)
        pred = Prediction(boxes=boxes.astype(np.float32), scores=rng.uniform(0, 1, k).astype(np.float32),
                          labels=rng.integers(0, tiny.geometry.num_classes, k), map_probs=None)
        out = to_devkit_boxes(sample, pred, tiny.geometry.classes, score_threshold=0.05)
        assert len(out) == 500
        scores = [b["detection_score"] for b in out]
        assert scores == sorted(scores, reverse=True) and scores[-1] >= 0.05
        assert scores[0] == pytest.approx(float(np.max(pred.scores)))
        boxes_by_token[sample.token] = out
    path = write_results_json(tmp_path / "results.json", boxes_by_token, val.samples,
                              {"camera": True, "use_lidar": True})
    data = _strict_json(path.read_text())
    assert data["meta"] == {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False,
                            "use_external": False}
    assert list(data["results"]) == list(val.samples)
    assert [len(v) for v in data["results"].values()] == [500, 500] + [0] * (len(val) - 2)
    for box in data["results"][val.samples[0]]:
        assert all(type(v) is float for key in ("translation", "size", "rotation", "velocity") for v in box[key])
        assert len(box["velocity"]) == 2 and type(box["detection_score"]) is float
    with pytest.raises(EvaluationError, match="boxes_by_token"):
        write_results_json(tmp_path / "bad.json", {"not-a-token": []}, val.samples, {"use_lidar": True})
    with pytest.raises(EvaluationError, match="modality"):
        write_results_json(tmp_path / "bad.json", {}, val.samples, {"use_sonar": True})


def test_attribute_guesses_follow_mmdet3d():
    names = ["car", "car", "bus", "bus", "bicycle", "motorcycle", "pedestrian", "pedestrian", "barrier",
             "traffic_cone", "trailer", "construction_vehicle", "truck"]
    speeds = np.array([0.0, 3.0, 0.1, 5.0, 2.0, 0.0, 0.0, 1.2, 1.0, 0.0, 0.0, 0.5, 0.1])
    assert attribute_names(names, speeds) == [
        "vehicle.parked", "vehicle.moving", "vehicle.stopped", "vehicle.moving", "cycle.with_rider",
        "cycle.without_rider", "pedestrian.standing", "pedestrian.moving", "", "", "vehicle.parked",
        "vehicle.moving", "vehicle.parked"]


def _naive_iou(batches, thresholds):
    """Per class and threshold, IoU from dataset-level sums, with plain loops in float64."""
    c = batches[0][0].shape[-3]
    iou = np.full((c, len(thresholds)), np.nan)
    for ci in range(c):
        for ti, t in enumerate(thresholds):
            tp = fp = fn = 0.0
            for probs, gt in batches:
                p = probs.reshape(-1, *probs.shape[-3:])[:, ci].astype(np.float64) >= t
                g = gt.reshape(-1, *gt.shape[-3:])[:, ci]
                tp += float(np.sum(p & g))
                fp += float(np.sum(p & ~g))
                fn += float(np.sum(~p & g))
            if tp + fp + fn > 0:
                iou[ci, ti] = tp / (tp + fp + fn)
    return iou


@pytest.mark.parametrize("thresholds", [(0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65), (0.3, 0.62)])
def test_map_iou_equals_naive_dataset_level_counts(thresholds):
    rng = np.random.default_rng(3)
    classes = ["drivable_area", "ped_crossing", "walkway", "divider"]
    batches = []
    for shape in [(4, 20, 16), (3, 4, 20, 16), (2, 4, 20, 16)]:
        gt = rng.uniform(size=shape) < np.array([0.6, 0.05, 0.3, 0.0])[:, None, None]
        noise = np.round(rng.uniform(size=shape), 2)  # hits the thresholds exactly now and then
        probs = np.where(gt, np.clip(noise + 0.3, 0, 1), noise * 0.7).astype(np.float32)
        batches.append((probs, gt))
    meter = MapIoU(classes, thresholds)
    for probs, gt in batches:
        meter.update(probs, gt)
    got = meter.compute()
    ref = _naive_iou(batches, list(thresholds))
    ref_05 = _naive_iou(batches, [0.5])[:, 0]
    for ci, name in enumerate(classes):
        row = np.array([np.nan if v is None else v for v in got["iou"][name]])
        np.testing.assert_allclose(row, ref[ci], rtol=1e-12, atol=0)
        expect_max = None if np.isnan(ref[ci]).all() else np.nanmax(ref[ci])
        assert got["iou_max"][name] == pytest.approx(expect_max, abs=1e-12)
        assert got["iou_at_0.5"][name] == pytest.approx(None if np.isnan(ref_05[ci]) else ref_05[ci], abs=1e-12)
        assert got["gt_pixels"][name] == sum(int(gt.reshape(-1, *gt.shape[-3:])[:, ci].sum()) for _, gt in batches)
    # The absent class ("divider", no pixels) is predicted at low thresholds: IoU 0, not undefined.
    assert got["iou_max"]["divider"] == 0.0
    maxes = np.array([np.nanmax(r) for r in ref])
    assert got["mean_iou_max"] == pytest.approx(maxes.mean(), abs=1e-12)
    assert got["mean_iou_at_0.5"] == pytest.approx(np.nanmean(ref_05), abs=1e-12)


def test_map_iou_is_dataset_level_not_a_mean_of_samples():
    meter = MapIoU(["walkway", "stop_line"])
    small = np.zeros((2, 10, 10), bool)
    small[0, 0, 0] = True  # one walkway pixel, found: per-sample IoU 1
    big = np.zeros((2, 10, 10), bool)
    big[0] = True  # 100 walkway pixels, half found: per-sample IoU 0.5
    found = big.astype(np.float32)
    found[0, 5:] = 0.0
    meter.update(small.astype(np.float32), small)
    meter.update(found, big)
    out = meter.compute()
    assert out["iou_max"]["walkway"] == pytest.approx(51 / 101)  # not (1 + 0.5) / 2
    assert out["iou_at_0.5"]["walkway"] == pytest.approx(51 / 101)
    assert out["iou_max"]["stop_line"] is None and out["iou"]["stop_line"] == [None] * 7
    assert out["mean_iou_max"] == pytest.approx(51 / 101)  # the undefined class is skipped
    meter.reset()
    assert meter.compute()["mean_iou_max"] is None


def test_map_iou_rejects_bad_input():
    meter = MapIoU(["a", "b"])
    with pytest.raises(EvaluationError, match="probs"):
        meter.update(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), bool))
    with pytest.raises(EvaluationError, match="gt"):
        meter.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))
    with pytest.raises(EvaluationError, match="boolean"):
        meter.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(EvaluationError, match="thresholds"):
        MapIoU(["a"], (0.5, 0.4))


def test_perfect_predictions_score_perfectly_and_noise_scores_lower(nusc, val, val_samples, tiny, tmp_path):
    perfect = {s.token: _gt_prediction(s, with_map=True) for s in val_samples}
    picture = val.samples[1]
    result = evaluate(nusc, val, perfect, tiny, tmp_path / "perfect", VAL, picture_tokens=[picture])
    det, seg = result["detection"], result["map"]
    # Ground truth back through the results conversion: boxes exact up to float32 rounding. The
    # attributes are the results' guess from class and speed (`attribute_names`), which cannot tell a
    # stopped vehicle from a parked one: a class whose annotations the guess all gets has AAE 0; for
    # one with misses (counted here from the annotations themselves) the devkit reports its running
    # error at the interpolated confidence, which with equal scores is that of whichever box it ranks
    # first, so only 0 <= AAE <= 1 holds.
    missed: dict[str, int] = {}
    for s in val_samples:
        for token, box, label in zip(_annotation_tokens(nusc, s.token), s.gt_boxes, s.gt_labels):
            ann = nusc.get("sample_annotation", token)
            if ann["attribute_tokens"]:
                name = tiny.geometry.classes[label]
                guess = attribute_names([name], np.array([np.hypot(box[7], box[8])]))[0]
                truth = nusc.get("attribute", ann["attribute_tokens"][0])["name"]
                missed[name] = missed.get(name, 0) + (truth != guess)
    assert det["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert all(ap == pytest.approx(1.0, abs=1e-12) for ap in det["class_ap"].values())  # every class is present
    for name, errors in det["class_tp_errors"].items():  # undefined (None): cones' and barriers' AOE, AVE, AAE
        assert all(errors[k] is None or errors[k] <= 1e-5 for k in ("ATE", "ASE", "AOE", "AVE")), (name, errors)
        if name not in missed:
            assert errors["AAE"] is None, (name, errors)
        else:
            assert (errors["AAE"] == 0.0) if missed[name] == 0 else (0.0 <= errors["AAE"] <= 1.0), (name, errors)
    assert all(det["tp_errors"][k] <= 1e-5 for k in ("mATE", "mASE", "mAOE", "mAVE")), det["tp_errors"]
    tp_score = sum(1 - min(1.0, err) for err in det["tp_errors"].values())
    assert det["NDS"] == pytest.approx((5 * det["mAP"] + tp_score) / 10, abs=1e-12)
    present = [name for name, n in seg["gt_pixels"].items() if n > 0]
    assert len(present) >= 4
    for name in present:
        assert seg["iou_max"][name] == 1.0 and seg["iou_at_0.5"][name] == 1.0
    assert seg["mean_iou_max"] == 1.0 and seg["mean_iou_at_0.5"] == 1.0

    written = _strict_json((tmp_path / "perfect" / "metrics.json").read_text())
    assert written == result and written["eval_set"] == VAL and written["num_samples"] == len(val)
    summary = json.loads((tmp_path / "perfect" / "detection" / "metrics_summary.json").read_text())
    assert summary["mean_ap"] == pytest.approx(det["mAP"])
    results = _strict_json((tmp_path / "perfect" / "results_nusc.json").read_text())
    assert set(results["results"]) == set(val.samples)
    assert (tmp_path / "perfect" / "pictures" / f"{picture}.png").stat().st_size > 20_000
    table = format_table(written)
    assert "NDS" in table and "drivable_area" in table and "traffic_cone" in table

    rng = np.random.default_rng(0)
    noisy = {}
    for s in val_samples:
        boxes = s.gt_boxes.astype(np.float64).copy()
        boxes[:, :2] += rng.normal(0.0, 1.5, (len(boxes), 2))
        noisy[s.token] = Prediction(boxes=boxes, scores=rng.uniform(0.1, 1.0, len(boxes)), labels=s.gt_labels,
                                    map_probs=None)
    worse = evaluate(nusc, val, noisy, tiny, tmp_path / "noisy", VAL)
    assert worse["map"] is None and "Map segmentation" not in format_table(worse)
    assert worse["detection"]["mAP"] < 0.6
    assert worse["detection"]["tp_errors"]["mATE"] > 0.3


def test_evaluate_rejects_predictions_that_do_not_match_the_dataset(nusc, val, val_samples, tiny, tmp_path):
    preds = {s.token: _gt_prediction(s, with_map=False) for s in val_samples}
    missing = dict(list(preds.items())[1:])
    with pytest.raises(EvaluationError, match="missing"):
        evaluate(nusc, val, missing, tiny, tmp_path, VAL)
    mixed = dict(preds)
    mixed[val.samples[0]] = _gt_prediction(val_samples[0], with_map=True)
    with pytest.raises(EvaluationError, match="map_probs"):
        evaluate(nusc, val, mixed, tiny, tmp_path, VAL)
    with pytest.raises(EvaluationError, match="mini_train"):
        from fuller.evaluation import run_detection_eval
        path = write_results_json(tmp_path / "r.json", {}, val.samples, {"use_lidar": True})
        run_detection_eval(nusc, path, "mini_train", tmp_path / "det")


def test_prediction_picture_is_written(val_samples, tiny, tmp_path):
    sample = val_samples[0]
    g = tiny.geometry
    rng = np.random.default_rng(0)
    pred = _gt_prediction(sample, with_map=True)
    pred.boxes = pred.boxes + np.r_[rng.normal(0, 1.0, 2), np.zeros(7)]
    pred.scores = rng.uniform(0, 1, len(pred.scores))
    pred.map_probs = np.clip(pred.map_probs * 0.8 + rng.uniform(0, 0.3, pred.map_probs.shape), 0, 1)
    out = draw_prediction(sample, pred, g.classes, g.map_classes, tmp_path / "p" / "pred.png", g.map_grid)
    assert out.stat().st_size > 20_000
    image = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert image.shape[0] > 400 and image.shape[1] > 800
    left, right = image[:, : image.shape[1] // 2], image[:, image.shape[1] // 2:]
    assert left.std() > 10 and right.std() > 10
    assert np.abs(left - right).mean() > 1  # the panels show different things
    with pytest.raises(EvaluationError, match="map_probs"):
        pred.map_probs = pred.map_probs[:, :-1]
        draw_prediction(sample, pred, g.classes, g.map_classes, tmp_path / "bad.png", g.map_grid)
