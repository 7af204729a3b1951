"""PyTorch backend: the trained network from a checkpoint, behind the runtime's `Backend` interface
and fed the same graph inputs as the exported graph (`run_graph`), so parity compares the networks,
not two preprocessing paths. It lives with the exporter because it needs both sides: the training
package's model and the runtime's contract. Tools that take checkpoints build it through `fuller.export.models.open_engine`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fuller.train.predict import load_model

from .graph import run_graph


class TorchBackend:
    name = "pytorch"

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.config, self.model = load_model(path, self.device)
        self.model.eval()

    @torch.no_grad()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        named = {name: torch.from_numpy(array).to(self.device) for name, array in feeds.items()}
        out = run_graph(self.model, named)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in out.items()}

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"PyTorch {torch.__version__} ({where}, {torch.get_num_threads()} threads)"

