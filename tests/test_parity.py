"""The parity comparison (engine/parity.py) on outputs shaped like the graph's: every box attribute
is bounded, so a backend wrong in one attribute only fails on it; yaw is compared modulo 2π; a split
without a single compared box fails instead of passing vacuously."""
from __future__ import annotations

import numpy as np
import pytest

from fuller.engine.parity import (BOX_ATTRIBUTES, FP16_BOX_TOLERANCE, FP16_MAP_MAX_ABS, FP16_SCORE_TIE, INT8_BOX_TOLERANCE,
                                  BoxTolerance, Comparison, format_parity)

K, CLASSES, MAP_SHAPE = 40, 10, (1, 6, 20, 20)


def graph_outputs(seed: int = 0) -> dict[str, np.ndarray]:
    """One frame of the graph's outputs: (1, K, 9) boxes x, y, z, w, l, h, yaw, vx, vy within the
    detection range, descending scores, int32 labels, map probabilities."""
    rng = np.random.default_rng(seed)
    boxes = np.concatenate([rng.uniform(-50, 50, (K, 2)), rng.uniform(-3, 1, (K, 1)), rng.uniform(0.4, 12, (K, 3)),
                            rng.uniform(-np.pi, np.pi, (K, 1)), rng.uniform(-15, 15, (K, 2))], axis=1)
    return {"boxes": boxes[None].astype(np.float32),
            "scores": np.sort(rng.uniform(0.15, 0.95, K))[::-1][None].astype(np.float32),
            "labels": rng.integers(0, CLASSES, (1, K)).astype(np.int32),
            "map_probs": rng.random(MAP_SHAPE).astype(np.float32)}


def other_backend(ref: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    """The reference's outputs as another float32 backend gives them: the top-K in another order
    and every value off by float32 rounding of a slightly different computation."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(K)
    out = {}
    for name, value in ref.items():
        value = value[:, order] if name != "map_probs" else value
        if value.dtype == np.float32:
            value = value * (1 + rng.uniform(-2e-7, 2e-7, value.shape)).astype(np.float32)
        out[name] = value
    return out


def compare(ref, other, score_tie: float | None = None) -> Comparison:
    c = Comparison(score_threshold=0.1, **({"score_tie": score_tie} if score_tie is not None else {}))
    c.add(ref, other)
    return c


def test_a_float32_backend_in_another_order_passes_and_every_attribute_is_reported():
    ref = graph_outputs()
    c = compare(ref, other_backend(ref))
    assert c.failures() == []
    assert (c.boxes.reference, c.boxes.tied) == (K - 1, 1)  # the last box is at the other side's cut
    record = c.boxes.record(BoxTolerance())
    assert record["checked"] == K - 1 and record["label_mismatches"] == 0
    for name in BOX_ATTRIBUTES:
        assert 0 <= record[name]["max_abs_error"] < record[name]["tolerance"] / 10, name
        assert record[name]["over_tolerance"] == 0
    table = format_parity(c, {}, "pytorch", "onnxruntime", 1)
    for title in [*BOX_ATTRIBUTES.values(), "label"]:
        assert f"| {title} |" in table


def perturbed(ref: dict[str, np.ndarray], change) -> dict[str, np.ndarray]:
    """``ref`` with box 3 (not at the top-K cut) changed by ``change(boxes, scores, labels)``."""
    other = {name: value.copy() for name, value in ref.items()}
    change(other["boxes"][0, 3], other["scores"][0, 3:4], other["labels"][0, 3:4])
    return other


def _add(index: int, delta: float):
    def change(box, score, label):
        box[index] += delta
    return change


def _scale_size(box, score, label):
    box[3:6] *= 1.01


def _score(box, score, label):
    score += 1e-3


def _relabel(box, score, label):
    label[:] = (label + 1) % CLASSES


def failed_checks(failures: list[str]) -> list[str]:
    """The checks named by failure messages: BOX_ATTRIBUTES keys, "label", "map_probs", "boxes"."""
    titles = {f"boxes {title}": name for name, title in BOX_ATTRIBUTES.items()}
    titles.update({"boxes label": "label", "map_probs": "map_probs", "boxes": "boxes"})
    return [titles[f.split(":")[0]] for f in failures]


@pytest.mark.parametrize("change, failing", [
    (_add(0, 0.01), ["centre_m"]),
    (_add(2, -0.01), ["centre_m"]),
    (_scale_size, ["size_m"]),
    (_add(5, 0.01), ["size_m"]),
    (_add(6, 0.01), ["yaw_rad"]),
    (_add(6, -0.01), ["yaw_rad"]),
    (_add(7, 0.01), ["velocity_m_s"]),
    (_add(8, 0.01), ["velocity_m_s"]),
    (_score, ["score"]),
    (_relabel, ["centre_m", "label"]),  # no box of its own class there, one of another class
])
def test_each_attribute_alone_fails(change, failing):
    ref = graph_outputs()
    failures = compare(ref, perturbed(ref, change)).failures()
    assert failed_checks(failures) == failing, failures


@pytest.mark.parametrize("delta", [2 * np.pi, -2 * np.pi, 4 * np.pi])
def test_yaw_is_compared_modulo_two_pi(delta):
    ref = graph_outputs()
    other = perturbed(ref, _add(6, delta))
    assert compare(ref, other).failures() == []


def test_yaw_across_the_pi_seam_is_a_small_difference():
    ref = graph_outputs()
    ref["boxes"][0, 3, 6] = np.float32(np.pi - 2e-4)
    other = {name: value.copy() for name, value in ref.items()}
    other["boxes"][0, 3, 6] = np.float32(-np.pi + 2e-4)
    c = compare(ref, other)
    assert c.failures() == []
    assert 3e-4 < c.boxes.summary(BoxTolerance())["yaw_rad"]["max_abs_error"] < 5e-4


def test_map_difference_fails():
    ref = graph_outputs()
    other = {**ref, "map_probs": ref["map_probs"] + np.float32(2e-4)}
    assert failed_checks(compare(ref, other).failures()) == ["map_probs"]


def test_a_split_without_compared_boxes_fails():
    """A model that detects nothing (every score under the threshold) cannot pass on its boxes."""
    c = Comparison(score_threshold=0.1)
    for seed in range(3):
        ref = graph_outputs(seed)
        ref["scores"] *= np.float32(0.1 / 0.96)
        c.add(ref, other_backend(ref, seed))
    failures = c.failures()
    assert failed_checks(failures) == ["boxes"] and "no boxes compared over 3 frames" in failures[0], failures
    assert "| score | 0 |" in format_parity(c, {}, "pytorch", "onnxruntime", 3)


def test_a_model_without_a_detection_head_has_no_box_check():
    ref = {"map_probs": graph_outputs()["map_probs"]}
    c = compare(ref, dict(ref))
    assert c.failures() == [] and c.boxes.frames == 0


def test_float16_rounding_passes_the_float16_tolerances_only():
    """Outputs rounded to float16 (a float16 engine's last step) are within FP16_BOX_TOLERANCE and
    outside the float32 bounds (float16's steps: 0.03 m at 50 m, 8 mm at 12 m, 2.4e-4 below 1)."""
    ref = graph_outputs()
    half = {name: value.astype(np.float16).astype(value.dtype) for name, value in ref.items()}
    assert compare(ref, half, FP16_SCORE_TIE).failures(FP16_MAP_MAX_ABS, FP16_BOX_TOLERANCE) == []
    failing = set(failed_checks(compare(ref, half).failures()))
    assert {"centre_m", "size_m", "velocity_m_s", "score", "map_probs"} <= failing


def test_box_matching_exempts_only_ties_at_the_cut():
    """Hand-made outputs: a reordered list matches; a box swapped for another at the cut's score is
    exempt; a moved box above the cut fails; map differences are measured."""
    boxes = np.zeros((1, 3, 9), np.float32)
    boxes[0, :, 0] = [1.0, 2.0, 3.0]
    ref = {"boxes": boxes, "scores": np.array([[0.9, 0.5, 0.3]], np.float32), "labels": np.array([[1, 2, 2]], np.int32),
           "map_probs": np.full((1, 1, 2, 2), 0.5, np.float32)}
    reordered = {k: v[:, [1, 0, 2]] if k != "map_probs" else v for k, v in ref.items()}
    swapped = {k: v.copy() for k, v in ref.items()}
    swapped["boxes"][0, 2, 0] = 7.0  # another box kept at the cut's score
    moved = {k: v.copy() for k, v in ref.items()}
    moved["boxes"][0, 0, 0] += 0.01
    moved["map_probs"] = ref["map_probs"] + 2e-4
    for other, failures in ((reordered, 0), (swapped, 0), (moved, 2)):
        c = Comparison(score_threshold=0.1)
        c.add(ref, other)
        assert len(c.failures()) == failures, c.failures()
    c = Comparison(score_threshold=0.1)
    c.add(ref, swapped)
    assert c.boxes.tied == 1 and c.boxes.reference == 2


def test_int8_thresholds_bound_mean_errors_and_report_boxes_without_failing_on_them():
    """INT8's gate: the mean error of the dense outputs (INT8_MEAN_ABS), not each box. A box moved
    0.5 m is still in the record, but it fails only under the float thresholds."""
    from fuller.engine.parity import INT8_BOX_TOLERANCE, INT8_MAP_MAX_ABS, INT8_MEAN_ABS

    ref = graph_outputs()
    other = perturbed(ref, _add(0, 0.6))
    int8 = {"map_max_abs": INT8_MAP_MAX_ABS, "box_tolerance": INT8_BOX_TOLERANCE, "gate_boxes": False,
            "mean_abs": INT8_MEAN_ABS}
    c = compare(ref, other)
    assert c.failures(**int8) == [] and failed_checks(c.failures()) == ["centre_m"]
    assert c.boxes.record(INT8_BOX_TOLERANCE)["centre_m"]["over_tolerance"] > 0
    shifted = {**other, "map_probs": ref["map_probs"] + np.float32(0.03)}
    assert [f.split(":")[0] for f in compare(ref, shifted).failures(**int8)] == ["map_probs"]
    assert "mean abs diff 0.03 > 0.02" in compare(ref, shifted).failures(**int8)[0]


def test_box_tolerance_flags_set_their_fields():
    """Each `fuller parity` box flag sets the field it names; an absent one keeps the float or INT8 default."""
    from dataclasses import replace

    from fuller.cli import build_parser
    from fuller.commands.infer_cmd import box_tolerance_of

    base = ["parity", "--checkpoint", "c.pt", "--model", "m.onnx", "--data", "d"]
    args = build_parser().parse_args([*base, "--box-tolerance", "1.5", "--size-tolerance", "2.5", "--yaw-tolerance",
                                      "3.5", "--velocity-tolerance", "4.5", "--score-tolerance", "5.5"])
    expected = BoxTolerance(centre_m=1.5, size_m=2.5, yaw_rad=3.5, velocity_m_s=4.5, score=5.5)
    assert box_tolerance_of(args, int8=False) == expected == box_tolerance_of(args, int8=True)
    only_yaw = build_parser().parse_args([*base, "--yaw-tolerance", "0.7"])
    assert box_tolerance_of(only_yaw, int8=False) == replace(BoxTolerance(), yaw_rad=0.7)
    assert box_tolerance_of(only_yaw, int8=True) == replace(INT8_BOX_TOLERANCE, yaw_rad=0.7)
