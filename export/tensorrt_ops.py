"""The standard ONNX operators TensorRT's ONNX parser imports, read from ``tensorrt_onnx_ops.txt``
next to this module (package data), so every checkout and install can check a graph against it:
an exported node outside the ``fuller`` domain must be one of these, or TensorRT cannot build it."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")


@lru_cache(maxsize=1)
def tensorrt_onnx_ops() -> frozenset[str]:
    """The operator names of the list (whitespace-separated; lines starting with '#' are notes)."""
    return frozenset(op for line in OPS_FILE.read_text().splitlines() if not line.startswith("#")
                     for op in line.split())

