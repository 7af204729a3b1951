"""Session fixtures: one small synthetic nuScenes-format dataset, made once and shared."""
from __future__ import annotations

import pytest

from fuller.synth.generate import SynthOptions, make_dataset

# All ten mini scenes (so mini_val exists), three keyframes each, low resolution for speed.
SMALL = SynthOptions(scenes=10, samples_per_scene=3, sweeps_per_sample=1, image_scale=0.3, azimuth_step_deg=0.8)


@pytest.fixture(scope="session")
def synth_options() -> SynthOptions:
    return SMALL


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synth") / "nuscenes"
    make_dataset(root, SMALL, progress=False)
    return str(root)


@pytest.fixture(scope="session")
def nusc(synth_root):
    from nuscenes import NuScenes

    return NuScenes(version=SMALL.version, dataroot=synth_root, verbose=False)
