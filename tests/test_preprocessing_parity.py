"""The engine's graph inputs equal the tensors the network was trained and evaluated on, for the
same sample: a deployment runs the network that was scored only if its preprocessing (resize-crop,
RGB order, normalisation, voxels, BEV-pool geometry from the calibration) is the training batch's.

The engine side is what `fuller infer` and `fuller parity` do: the raw sample and its calibration
(`engine.offline.frames`) through `Engine.feeds`. The training side is the evaluation pipeline,
the training one without augmentation: `NuScenesDataset` with its default transforms (resize-crop
only), `TrainingSet` and `Collator`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fuller.config import FullerConfig
from fuller.data import NuScenesDataset
from fuller.engine import Engine
from fuller.engine.contract import GEOMETRY_INPUTS
from fuller.engine.offline import frames

FRAMES = 2


@dataclass
class InputsOnly:
    """A backend with a config and no network: `Engine.feeds` is all these tests run."""

    config: FullerConfig
    name: str = "inputs-only"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("the preprocessing tests run no network")

    def describe(self) -> str:
        return self.name


@pytest.fixture(scope="module")
def pairs(small_cfg, synth_root, nusc):
    """(engine feeds, training batch inputs) of the first mini_val samples."""
    from fuller.train.batching import Collator
    from fuller.train.dataset import TrainingSet

    dataset = NuScenesDataset(small_cfg, synth_root, "mini_val", nusc=nusc)
    training, collate = TrainingSet(dataset), Collator(small_cfg)
    engine = Engine(InputsOnly(small_cfg))
    out = []
    for index, (token, calibration, raw) in zip(range(FRAMES), frames(dataset, progress=False)):
        sample = training[index]
        assert sample.token == token
        engine.update_calibration(calibration)
        out.append((engine.feeds(raw.images, raw.points), collate([sample]).inputs))
    return out


def test_images_are_the_training_batch_images(pairs):
    """Same pixels after the resize-crop, same channel order, same normalisation: bit for bit."""
    for feeds, inputs in pairs:
        want = inputs.images.numpy()
        assert feeds["images"].dtype == np.float32 and feeds["images"].shape == want.shape
        np.testing.assert_array_equal(feeds["images"], want)


def by_site(features: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel rows ordered by (batch, ix, iy, iz): the comparison does not depend on the listing order."""
    order = np.lexsort(coords.T[::-1])
    return features[order], coords[order]


def test_voxels_are_the_training_batch_voxels(pairs):
    """The same set of voxels (site and mean point), whatever order either side lists them in; the
    engine's rows past voxel_count are padding."""
    for feeds, inputs in pairs:
        n = int(feeds["voxel_count"][0])
        want_features, want_coords = by_site(inputs.voxel_features.numpy(), inputs.voxel_coords.numpy())
        assert n == len(want_coords) > 0
        assert len(np.unique(want_coords, axis=0)) == n
        got_features, got_coords = by_site(feeds["voxel_features"][:n], feeds["voxel_coords"][:n])
        np.testing.assert_array_equal(got_coords, want_coords)
        np.testing.assert_array_equal(got_features, want_features)
        assert (feeds["voxel_coords"][n:] == -1).all() and not feeds["voxel_features"][n:].any()


def test_pool_geometry_is_the_camera_branch_geometry(pairs):
    """The engine's BEV-pool index arrays, computed from the calibration alone, are those the
    training batch gives the camera encoder (from the sample's lidar2image and img_aug)."""
    for feeds, inputs in pairs:
        for name in GEOMETRY_INPUTS:
            want = getattr(inputs.pool, name).numpy()
            assert feeds[name].dtype == np.int32, name
            np.testing.assert_array_equal(feeds[name], want, err_msg=name)
        assert len(feeds["ranks_bev"]) > 0
