"""The official nuScenes detection score (mAP, NDS, TP errors) from the devkit, as a plain dict.

The devkit does the matching, filtering and scoring; this module only checks the inputs the
devkit would reject with a bare assert, runs it quietly and reshapes its metrics. Things to know
about the devkit: it drops ground-truth boxes with no LiDAR or radar point and boxes beyond each
class's range (predictions too), and it scores every one of its ten classes, so a config with
fewer classes still averages over ten (the missing ones score AP 0).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import get_samples_of_custom_split
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.utils.splits import create_splits_scenes, is_predefined_split

from .results import EvaluationError

DETECTION_CONFIG = "detection_cvpr_2019"
# The devkit's TP metric names and the short names the nuScenes leaderboard prints.
# Which release each predefined split belongs to (the devkit asserts on a mismatch).
SPLIT_VERSIONS = {"mini": ("mini_train", "mini_val"), "trainval": ("train", "val", "train_detect", "train_track"),
                  "test": ("test",)}
TP_NAMES = {"trans_err": "ATE", "scale_err": "ASE", "orient_err": "AOE", "vel_err": "AVE", "attr_err": "AAE"}


def split_sample_tokens(nusc: NuScenes, eval_set: str) -> list[str]:
    """Sample tokens of a devkit split (predefined, or custom), as the devkit selects them."""
    if is_predefined_split(split_name=eval_set):
        version = next((v for v, splits in SPLIT_VERSIONS.items() if eval_set in splits), None)
        if version is not None and not nusc.version.endswith(version):
            raise EvaluationError(f"eval_set: split {eval_set!r} expects a v1.0-{version} root, "
                                  f"got version {nusc.version}")
        scenes = set(create_splits_scenes()[eval_set])
        return [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]
    try:
        return list(get_samples_of_custom_split(split_name=eval_set, nusc=nusc))
    except (ValueError, OSError) as exc:
        raise EvaluationError(f"eval_set: expected a nuScenes split, got {eval_set!r} ({exc})") from None


def _number(x) -> float | None:
    """A metric as a float, NaN (the devkit's "not defined for this class") as None."""
    x = float(x)
    return None if x != x else x


def run_detection_eval(nusc: NuScenes, result_path: str | Path, eval_set: str, out_dir: str | Path) -> dict:
    """Score a results file on `eval_set`; writes the devkit's metrics_summary.json and
    metrics_details.json (PR data) into `out_dir` and returns the metrics as a plain dict."""
    result_path, out_dir = Path(result_path), Path(out_dir)
    if not result_path.is_file():
        raise EvaluationError(f"result_path: expected a results JSON file, got {result_path} (missing)")
    submitted = set(json.loads(result_path.read_text())["results"])
    expected = set(split_sample_tokens(nusc, eval_set))
    if submitted != expected:
        raise EvaluationError(
            f"{result_path}: expected exactly the {len(expected)} samples of split {eval_set!r}, got "
            f"{len(submitted)} ({len(expected - submitted)} missing, {len(submitted - expected)} not in the split)")
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator = DetectionEval(nusc, config_factory(DETECTION_CONFIG), str(result_path), eval_set=eval_set,
                              output_dir=str(out_dir), verbose=False)
    metrics, metric_data = evaluator.evaluate()
    summary = metrics.serialize()
    summary["meta"] = dict(evaluator.meta)
    (out_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "metrics_details.json").write_text(json.dumps(metric_data.serialize()))

    gt_counts = Counter(box.detection_name for box in evaluator.gt_boxes.all)
    classes = list(evaluator.cfg.class_names)
    return {
        "mAP": _number(summary["mean_ap"]),
        "NDS": _number(summary["nd_score"]),
        "tp_errors": {"m" + short: _number(summary["tp_errors"][name]) for name, short in TP_NAMES.items()},
        "class_ap": {c: _number(summary["mean_dist_aps"][c]) for c in classes},
        "class_ap_by_distance": {c: {str(d): _number(ap) for d, ap in summary["label_aps"][c].items()}
                                 for c in classes},
        "class_tp_errors": {c: {short: _number(summary["label_tp_errors"][c][name])
                                for name, short in TP_NAMES.items()} for c in classes},
        "class_gt_boxes": {c: int(gt_counts.get(c, 0)) for c in classes},
        "num_predictions": len(evaluator.pred_boxes.all),
        "eval_set": eval_set,
        "eval_time_s": _number(summary["eval_time"]),
    }
