"""Inference backends behind one interface (Polygraphy's runner idea, kept small).

A backend knows its artefact and config and maps graph inputs to graph outputs by name
(`fuller.export.contract`): ``run(feeds) -> outputs``. `load_backend` picks one from the artefact:
``.engine`` -> TensorRT, ``.onnx`` -> ONNX Runtime with the fuller custom-op kernels, a training
checkpoint (``.pt``) -> PyTorch (the only one that needs torch and ``fuller.train``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from fuller.config import FullerConfig
from fuller.errors import UserInputError


class Backend(Protocol):
    name: str
    config: FullerConfig

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> str: ...


def load_backend(path: str | Path, device: str = "cpu") -> Backend:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: model artefact not found")
    suffix = path.suffix.lower()
    if suffix == ".engine":
        from .trt_backend import TensorRTBackend
        return TensorRTBackend(path)
    if suffix == ".onnx":
        from .ort_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(path)
    if suffix in (".pt", ".pth"):
        from .torch_backend import TorchBackend
        return TorchBackend(path, device)
    raise UserInputError(f"{path}: unknown model artefact {suffix!r} (expected .engine for TensorRT, .onnx for "
                         "ONNX Runtime, or a training checkpoint .pt for PyTorch)")
