"""Inference backends behind one interface (Polygraphy's runner idea, kept small).

A backend knows its artefact and config and maps graph inputs to graph outputs by name
(`fuller.engine.contract`): ``run(feeds) -> outputs``. `load_backend` picks one of the runtime's
own from the artefact: ``.engine`` -> TensorRT, ``.onnx`` -> ONNX Runtime with the fuller custom-op
kernels. A training checkpoint runs on the PyTorch backend, which lives with the exporter
(`fuller.export.torch_backend`: it needs torch and the training package) and is handed to `Engine`
by the tools that accept checkpoints; any object with this interface can be.
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

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph outputs for ``feeds`` (graph inputs the graph does not take are ignored). The
        arrays are valid until the next call: a backend may return views of buffers it reuses
        (the TensorRT backend returns its pinned host buffers, as Polygraphy's runner does), so
        nothing may keep them. `Engine.run` copies them into arrays the caller owns; callers go
        through it."""
        ...

    def describe(self) -> str: ...


CHECKPOINT_SUFFIXES = (".pt", ".pth")


def load_backend(path: str | Path) -> Backend:
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
    if suffix in CHECKPOINT_SUFFIXES:
        raise UserInputError(f"{path}: a training checkpoint runs on the PyTorch backend, which the runtime does not "
                             "include; export it (fuller export) or use a command that takes checkpoints "
                             "(fuller infer, fuller replay)")
    raise UserInputError(f"{path}: unknown model artefact {suffix!r} (expected .engine for TensorRT or .onnx for "
                         "ONNX Runtime)")
