"""The map prior (`train.map_prior`): class frequencies and their score, against closed forms, and
the masks it reads against the training pipeline's."""
from __future__ import annotations

import numpy as np
import pytest

from train.map_prior import class_frequency, score_prior, split_masks

CLASSES = ("everywhere", "halves", "corner", "absent")


def _masks() -> list[np.ndarray]:
    """Two 4 x 6 samples: class 0 fills both, class 1 the left half of one and the right half of the
    other, class 2 one cell of the first only, class 3 nothing."""
    a, b = np.zeros((4, 4, 6), dtype=bool), np.zeros((4, 4, 6), dtype=bool)
    a[0] = b[0] = True
    a[1, :, :3] = True
    b[1, :, 3:] = True
    a[2, 0, 0] = True
    return [a, b]


def test_class_frequency_is_the_share_of_samples_per_cell():
    prior = class_frequency(iter(_masks()))
    assert prior.dtype == np.float64 and prior.shape == (4, 4, 6)
    assert np.all(prior[0] == 1.0) and np.all(prior[1] == 0.5) and np.all(prior[3] == 0.0)
    assert prior[2, 0, 0] == 0.5 and prior[2].sum() == 0.5
    with pytest.raises(ValueError, match="at least one sample"):
        class_frequency(iter([]))


def test_prior_scores_follow_the_closed_form():
    """Class 0: IoU 1. Class 1: the prior 0.5 everywhere is positive at thresholds up to 0.5 and
    covers both samples' halves, tp = 24 of 48 predicted, IoU 1/2; above 0.5 nothing, IoU 0. Class 2:
    one cell at 0.5, positive in both samples, tp 1, fp 1, IoU 1/2. Class 3: no ground truth and
    nothing predicted, undefined."""
    score = score_prior(class_frequency(_masks()), _masks(), CLASSES)
    iou = score["iou_max"]
    assert iou["everywhere"] == 1.0 and iou["halves"] == 0.5 and iou["corner"] == 0.5 and iou["absent"] is None
    thresholds = np.array(score["thresholds"])
    assert score["iou"]["halves"] == [0.5 if t <= 0.5 else 0.0 for t in thresholds]
    assert score["mean_iou_max"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)


def test_split_masks_are_the_training_samples_masks(small_cfg, synth_root, nusc, small_samples):
    """Read without the image transforms, the masks are those of the samples training reads."""
    from fuller.data import NuScenesDataset

    dataset = NuScenesDataset(small_cfg, synth_root, small_cfg.data.train_split, nusc=nusc)
    masks = [m for m, _ in zip(split_masks(dataset), range(len(small_samples)))]
    assert len(masks) == len(small_samples)
    for mask, sample in zip(masks, small_samples):
        assert mask.dtype == bool and mask.any()
        np.testing.assert_array_equal(mask, sample.map_masks)
