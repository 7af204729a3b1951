"""A checkpoint's model over a split, batched as in training, scored by the shared evaluation:
the body of `fuller eval` and of the ablation."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fuller.config import FullerConfig
from fuller.data import NuScenesDataset
from fuller.evaluation import Prediction, evaluate_split

from .batching import Collator
from .checkpoint import load_checkpoint
from .dataset import TrainingSet
from .model import FullerModel, build_model


@torch.no_grad()
def predict(model: FullerModel, cfg: FullerConfig, dataset: NuScenesDataset, device: torch.device,
            batch_size: int = 2, progress: bool = True) -> dict[str, Prediction]:
    """Model outputs for every sample of ``dataset``, keyed by sample token, as NumPy."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collator(cfg))
    predictions = {}
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress, dynamic_ncols=True):
        out = {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
               for k, v in model(batch.inputs.to(device)).items()}
        for i, sample in enumerate(batch.samples):
            predictions[sample.token] = Prediction.from_outputs(out, i)
    return predictions


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[FullerConfig, FullerModel]:
    cfg, payload = load_checkpoint(checkpoint, map_location=device)
    return cfg, model_from_checkpoint(cfg, payload, device)


def model_from_checkpoint(cfg: FullerConfig, payload: dict, device: torch.device) -> FullerModel:
    """The model of a loaded checkpoint (``load_checkpoint``'s config and payload) on ``device``."""
    model = build_model(cfg).to(device)
    model.load_state_dict(payload["model"])
    return model


def evaluate_model(model: FullerModel, cfg: FullerConfig, data_root: str | Path, split: str, out: str | Path,
                   device: torch.device, pictures: int = 4, progress: bool = True, nusc=None,
                   zeroed_modality: str | None = None, dataset: NuScenesDataset | TrainingSet | None = None) -> dict:
    """Predict a split, write results JSON, metrics.json and pictures to ``out``; return the metrics.

    ``zeroed_modality`` ("camera" or "lidar") zeroes that sensor's BEV at the fuser input for this
    evaluation only (the modality ablation); the model's own setting is restored afterwards.
    ``dataset``, when given, is the split's reader (made with ``cfg``'s geometry) and is used
    instead of opening ``data_root``/``split`` again."""
    if dataset is None:
        dataset = NuScenesDataset(cfg, data_root, split, nusc=nusc)
    saved = model.zeroed_modality
    model.zeroed_modality = zeroed_modality
    try:
        predictions = predict(model, cfg, dataset, device, progress=progress)
    finally:
        model.zeroed_modality = saved
    return evaluate_split(dataset, predictions, cfg, out, pictures)
