"""The paper-scale config end to end on CPU: build `base`, train two steps (its default loader
workers included), evaluate with the devkit, export, and run the ONNX graph in ONNX Runtime against
the PyTorch backend on a frame. Minutes on 2 cores: one case, marked slow."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fuller.config import load_config


@pytest.mark.slow
def test_base_trains_evaluates_exports_and_runs_in_onnx_runtime(synth_root, nusc, tmp_path):
    from fuller.data import NuScenesDataset
    from fuller.engine.offline import frames
    from fuller.engine.parity import Comparison
    from fuller.export.graph import export_model
    from fuller.export.models import open_engine
    from fuller.train.predict import evaluate_model, load_model
    from fuller.train.run_log import read_metrics
    from fuller.train.trainer import train

    cfg = load_config("base", ["train.steps=2", "train.checkpoint_every=2", "train.log_every=1"])
    assert cfg.train.num_workers > 0 and cfg.geometry.sparse_shape == (1440, 1440, 41)
    checkpoint = train(cfg, synth_root, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [0, 1]
    assert all(math.isfinite(r["loss/det"]) and math.isfinite(r["loss/map"]) for r in records)

    cfg, model = load_model(checkpoint, torch.device("cpu"))
    metrics = evaluate_model(model, cfg, synth_root, cfg.data.val_split, tmp_path / "eval", torch.device("cpu"),
                             pictures=0, progress=False, nusc=nusc)
    assert 0.0 <= metrics["detection"]["mAP"] <= 1.0 and 0.0 <= metrics["map"]["mean_iou_max"] <= 1.0

    export_model(model, cfg, tmp_path / "base.onnx", step=2)
    onnx_engine, torch_engine = open_engine(tmp_path / "base.onnx"), open_engine(checkpoint)
    _, calibration, sample = next(frames(NuScenesDataset(cfg, synth_root, cfg.data.val_split, nusc=nusc),
                                         progress=False))
    comparison = Comparison(score_threshold=0.05)
    for engine in (onnx_engine, torch_engine):
        engine.update_calibration(calibration)
    feeds = torch_engine.feeds(sample.images, sample.points)
    assert 0 < int(feeds["voxel_count"][0]) <= cfg.geometry.max_voxels
    reference, other = torch_engine.backend.run(feeds), onnx_engine.backend.run(feeds)
    assert other["map_probs"].shape == (1, 6, 200, 200) and other["boxes"].shape[-1] == 9
    comparison.add(reference, other)
    assert comparison.failures() == []
    assert np.isfinite(other["scores"]).all()
