"""TensorRT backend: a serialised engine run through Polygraphy's `TrtRunner` (which owns the
device buffers and the stream), after the sidecar check that refuses an engine built for another
TensorRT version or GPU. Thin on purpose: everything it feeds and reads is tested through the other
backends; this file needs TensorRT and an NVIDIA GPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from fuller.config import config_from_dict
from fuller.errors import UserInputError

from ..artifacts import check_sidecar
from ..nvidia import TENSORRT_MISSING, current_gpu, register_plugins


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        try:
            import tensorrt as trt
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        except (ImportError, OSError) as exc:
            raise UserInputError(f"{path}: {TENSORRT_MISSING}") from exc
        self.path = Path(path)
        self.gpu, _ = current_gpu()
        self.record = check_sidecar(self.path, trt.__version__, self.gpu)
        self.config = config_from_dict(yaml.safe_load(self.record["config"]))
        self.precision = self.record["precision"]
        self.trt_version = trt.__version__
        register_plugins()
        self.runner = TrtRunner(EngineFromBytes(self.path.read_bytes()))
        self.runner.activate()
        self.input_names = set(self.runner.get_input_metadata().keys())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.runner.infer({k: v for k, v in feeds.items() if k in self.input_names})
        return {name: np.asarray(value) for name, value in outputs.items()}

    def describe(self) -> str:
        return f"TensorRT {self.trt_version} ({self.gpu}, {self.precision})"
