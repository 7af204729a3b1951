"""`open_engine`: an `Engine` over any model file, for the tools that take checkpoints as well as
deployment artefacts (``fuller infer``, ``parity``, ``bench infer``, ``replay``, the demo).

A training checkpoint runs on the PyTorch backend (`torch_backend`, imported only then); a TensorRT
engine or an ONNX graph on the runtime's own backends, so a runtime-only install (no torch) opens
those through here too.
"""
from __future__ import annotations

from pathlib import Path

from fuller.engine import Engine
from fuller.engine.backends import CHECKPOINT_SUFFIXES


def open_engine(path: str | Path, device: str = "cpu", **kwargs) -> Engine:
    """``device`` places the PyTorch backend (the others choose their own); ``kwargs`` go to `Engine`."""
    path = Path(path)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        return Engine.load(path, **kwargs)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    from .torch_backend import TorchBackend

    return Engine(TorchBackend(path, device), **kwargs)
