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


# A network small enough for a CPU training step in well under a second: two cameras at 64x160,
# narrow widths everywhere (multiples of 8 so model.norm=gn works too). Same code as tiny.
SMALL_NETWORK = [
    "geometry.cameras=[CAM_FRONT,CAM_BACK]", "geometry.image_size=[64,160]", "geometry.sweeps=2",
    "model.backbone_width=8", "model.fpn_channels=16", "model.camera_channels=8",
    "model.lidar_channels=[8,16]", "model.lidar_out_channels=8", "model.fuser_channels=16",
    "model.decoder_layers=[1,1]", "model.decoder_channels=[16,16]", "model.decoder_out_channels=16",
    "model.head_channels=16", "model.det_max_boxes=100",
    "train.batch_size=2", "train.log_every=1", "train.warmup_steps=2", "train.lr=1e-3",
]


@pytest.fixture(scope="session")
def small_cfg():
    from fuller.config import load_config

    return load_config("tiny", SMALL_NETWORK)


@pytest.fixture(scope="session")
def small_samples(small_cfg, synth_root, nusc):
    """Four training samples of the synthetic set, loaded once."""
    from fuller.data import NuScenesDataset

    dataset = NuScenesDataset(small_cfg, synth_root, small_cfg.data.train_split, nusc=nusc)
    return [dataset[i] for i in range(4)]


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, synth_root):
    """A small network trained for 30 steps (BatchNorm statistics and heads no longer at their
    initial values), saved as a training checkpoint; shared by the export and engine tests."""
    from fuller.config import load_config
    from fuller.train.trainer import train

    cfg = load_config("tiny", [*SMALL_NETWORK, "train.steps=30", "train.checkpoint_every=30"])
    out = tmp_path_factory.mktemp("small_run")
    return train(cfg, synth_root, out, progress=False)


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory, small_checkpoint):
    """The small checkpoint exported to ONNX (skips where the export extra is not installed)."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install fuller[export])")
    import torch

    from fuller.export.graph import export_model
    from fuller.train.predict import load_model

    cfg, model = load_model(small_checkpoint, torch.device("cpu"))
    path = tmp_path_factory.mktemp("export") / "small.onnx"
    export_model(model, cfg, path)
    return path
