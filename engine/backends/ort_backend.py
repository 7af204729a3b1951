"""ONNX Runtime backend: the exported graph with the fuller custom-op CPU kernels registered and
their rewrites applied in memory (`fuller.plugins.prepare_for_onnxruntime`: the sparse layers'
fused gather-GEMM); the config comes from the graph's metadata, so the artefact is self-describing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from fuller.config import ConfigError, FullerConfig, config_from_dict
from fuller.errors import UserInputError
from fuller.plugins import ort_session_options, prepare_for_onnxruntime

from .. import contract
from ..artifacts import graph_precision, read_metadata


def read_config(model: onnx.ModelProto, path: Path) -> FullerConfig:
    import yaml

    meta = {p.key: p.value for p in model.metadata_props}
    if contract.META_CONFIG not in meta:
        raise UserInputError(f"{path}: no {contract.META_CONFIG!r} in the ONNX metadata; export it with fuller export")
    try:
        return config_from_dict(yaml.safe_load(meta[contract.META_CONFIG]))
    except (yaml.YAMLError, ConfigError) as exc:
        raise UserInputError(f"{path}: metadata {contract.META_CONFIG!r}: {' '.join(str(exc).split())}") from None


# An INT8 graph has one Q/DQ pair per consumer (fuller quantize): ONNX Runtime fuses a quantised
# Conv into QLinearConv only when each DequantizeLinear feeding it feeds nothing else. Its
# common-subexpression pass would merge those identical pairs back into shared ones, so it is off
# for INT8 graphs. On the tiny model, 37 of its 43 INT8 convolutions fuse this way, against 21 with
# the pass on.
INT8_DISABLED_OPTIMIZERS = ("CommonSubexpressionElimination",)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file, or a truncated one
            raise UserInputError(f"{self.path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        self.config = read_config(model, self.path)
        self.precision = graph_precision(read_metadata(model))
        if self.precision != "fp32":
            self.name = f"onnxruntime-{self.precision}"  # rows and folders beside the float graph's
        try:
            if not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
                model, self.fused_layers = prepare_for_onnxruntime(model)
                source = model.SerializeToString()
            else:  # external weights: ONNX Runtime reads them next to the file itself, unrewritten
                source, self.fused_layers = str(self.path), 0
            self.session = onnxruntime.InferenceSession(
                source, ort_session_options(), providers=providers or ["CPUExecutionProvider"],
                disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS) if self.precision == contract.INT8 else None)
        except Exception as exc:  # onnxruntime's InvalidGraph, Fail, ... (pybind11 types, no common base)
            raise UserInputError(f"{self.path}: ONNX Runtime cannot load this graph ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())})") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {i.name for i in self.session.get_inputs()}
        outputs = self.session.run(self.output_names, {k: v for k, v in feeds.items() if k in wanted})
        return dict(zip(self.output_names, outputs))

    def describe(self) -> str:
        fused = f", {self.fused_layers} sparse layers fused" if self.fused_layers else ""
        precision = ", INT8 Q/DQ graph" if self.precision == contract.INT8 else ""
        return f"ONNX Runtime {onnxruntime.__version__} ({', '.join(self.session.get_providers())}{precision}{fused})"
