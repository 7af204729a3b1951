"""Run a model over a split and evaluate it: the body of `fuller eval` (and of the ablation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fuller.config import FullerConfig

from .batching import Collator
from .checkpoint import load_checkpoint
from .data import NuScenesDataset, open_nuscenes
from .evaluation import Prediction, evaluate
from .model import FullerModel, build_model


@torch.no_grad()
def predict(model: FullerModel, cfg: FullerConfig, dataset, device: torch.device, batch_size: int = 2,
            progress: bool = True) -> dict[str, Prediction]:
    """Model outputs for every sample of ``dataset``, keyed by sample token, as NumPy."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collator(cfg))
    predictions = {}
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress, dynamic_ncols=True):
        out = {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
               for k, v in model(batch.inputs.to(device)).items()}
        empty = {"boxes": np.zeros((len(batch.samples), 0, 9), np.float32),
                 "scores": np.zeros((len(batch.samples), 0), np.float32),
                 "labels": np.zeros((len(batch.samples), 0), np.int64)}
        out = {**empty, **out}
        for i, sample in enumerate(batch.samples):
            predictions[sample.token] = Prediction(
                boxes=out["boxes"][i], scores=out["scores"][i], labels=out["labels"][i],
                map_probs=out["map_probs"][i] if "map_probs" in out else None)
    return predictions


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[FullerConfig, FullerModel]:
    cfg, payload = load_checkpoint(checkpoint, map_location=device)
    model = build_model(cfg).to(device)
    model.load_state_dict(payload["model"])
    return cfg, model


def evaluate_model(model: FullerModel, cfg: FullerConfig, data_root: str | Path, split: str, out: str | Path,
                   device: torch.device, pictures: int = 4, progress: bool = True, nusc=None) -> dict:
    """Predict a split, write results JSON, metrics.json and pictures to ``out``; return the metrics."""
    nusc = nusc or open_nuscenes(data_root, cfg.data.version)
    dataset = NuScenesDataset(cfg, data_root, split, nusc=nusc)
    predictions = predict(model, cfg, dataset, device, progress=progress)
    step = max(1, len(dataset.samples) // max(pictures, 1))
    picture_tokens = dataset.samples[::step][:pictures]
    modality = {m: m in cfg.model.modalities for m in ("camera", "lidar")}
    return evaluate(nusc, dataset, predictions, cfg, out, eval_set=split, modality=modality,
                    picture_tokens=picture_tokens)
