"""PyTorch backend: the trained network from a checkpoint, fed the same graph inputs as the
exported graph (so parity compares the networks, not two preprocessing paths). Needs torch and
``fuller.train``; it is loaded only when asked for."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fuller.export import contract
from fuller.train.model.camera_encoder import PoolGeometry
from fuller.train.model.fuller_model import ModelInputs
from fuller.train.predict import load_model


class TorchBackend:
    name = "pytorch"

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.config, self.model = load_model(path, self.device)
        self.model.eval()

    @torch.no_grad()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = ModelInputs(batch_size=1)
        if "images" in feeds and self.model.camera is not None:
            inputs.images = torch.from_numpy(feeds["images"])
            inputs.pool = PoolGeometry(*(torch.from_numpy(feeds[n]) for n in contract.GEOMETRY_INPUTS))
        if "voxel_count" in feeds and self.model.lidar is not None:
            n = int(feeds["voxel_count"][0])
            inputs.voxel_features = torch.from_numpy(feeds["voxel_features"][:n])
            inputs.voxel_coords = torch.from_numpy(feeds["voxel_coords"][:n])
        out = self.model(inputs.to(self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        result = {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in out.items()}
        if "labels" in result:
            result["labels"] = result["labels"].astype(np.int32)
        return result

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"PyTorch {torch.__version__} ({where}, {torch.get_num_threads()} threads)"
