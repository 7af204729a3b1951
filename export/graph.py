"""A trained checkpoint -> one ONNX graph, from preprocessed tensors to boxes and map probabilities.

`ExportModule` is the trained `FullerModel` with flat tensor inputs (`fuller.engine.contract`, the
runtime's names), run through `run_graph`, the PyTorch backend's path too: the camera
branch runs as trained (its BEV pooling is already ``torch.ops.fuller.bev_pool``), the LiDAR branch
is the folded `ExportSparseEncoder`, and fuser, decoder and heads are the trained modules. The
TorchScript exporter traces it once; the custom ops become ``fuller::BevPool``,
``fuller::SparseSites`` and ``fuller::SparseRulebook`` nodes through their symbolics, and the
config goes into the metadata.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import torch
from torch import nn

import fuller.plugins.bev_pool.torch_op as bev_pool_op
import fuller.plugins.sparse_conv.torch_op as sparse_conv_op
from fuller.config import FullerConfig, config_hash, config_to_yaml
from fuller.engine import contract
from fuller.plugins import DOMAIN, register_onnx_schemas
from fuller.bev_pool_geometry import FEATURE_STRIDE
from fuller.train.model.camera_encoder import PoolGeometry
from fuller.train.model.fuller_model import FullerModel, ModelInputs
from fuller.train.model.lidar_encoder import POINT_FEATURES

from .lidar import ExportSparseEncoder

OPSET = 17
IR_VERSION = 10  # what ONNX Runtime >= 1.18 and TensorRT 10's parser read


def run_graph(model: FullerModel, named: Mapping[str, torch.Tensor],
              sparse_encoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The graph's computation on its named inputs (`contract`, batch 1) through `FullerModel.forward`,
    outputs as the graph types them (int32 labels). The export traces it with the folded sparse
    encoder; the PyTorch backend runs it with the trained one."""
    inputs = ModelInputs(batch_size=1)
    if model.camera is not None:
        inputs.images = named["images"]
        inputs.pool = PoolGeometry(*(named[n] for n in contract.GEOMETRY_INPUTS))
    if model.lidar is not None:
        inputs.voxel_features, inputs.voxel_coords, inputs.voxel_count = (named[n] for n in contract.LIDAR_INPUTS)
    out = model(inputs, sparse_encoder)
    if "labels" in out:
        out["labels"] = out["labels"].to(torch.int32)
    return out


class ExportModule(nn.Module):
    """``forward(*inputs in contract order)`` -> outputs in contract order, batch 1."""

    def __init__(self, model: FullerModel, cfg: FullerConfig) -> None:
        super().__init__()
        self.model = model.eval()
        self.modalities, self.tasks = list(cfg.model.modalities), list(cfg.model.tasks)
        self.lidar = ExportSparseEncoder(model.lidar, cfg.geometry.max_voxels) if model.lidar is not None else None
        self.input_names = contract.input_names(self.modalities)
        self.output_names = contract.output_names(self.tasks)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = run_graph(self.model, dict(zip(self.input_names, inputs)), self.lidar)
        return tuple(out[n] for n in self.output_names)


def max_frustum_points(cfg: FullerConfig) -> int:
    """Upper bound of the BEV-pool geometry's point count: every frustum point of every camera."""
    g = cfg.geometry
    return len(g.cameras) * g.num_depth_bins * (g.image_size[0] // FEATURE_STRIDE) * (g.image_size[1] // FEATURE_STRIDE)


def example_inputs(cfg: FullerConfig, module: ExportModule, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Valid inputs to trace with: any geometry and voxels that satisfy the ops' contracts will do,
    since the geometry dimensions are dynamic and the voxel list has a fixed capacity."""
    g, rng = cfg.geometry, np.random.default_rng(seed)
    tensors = {}
    if "camera" in module.modalities:
        tensors["images"] = torch.zeros(1, len(g.cameras), 3, *g.image_size)
        one = torch.zeros(1, dtype=torch.int32)
        tensors.update(ranks_depth=one, ranks_feat=one, ranks_bev=one, interval_starts=one,
                       interval_lengths=torch.ones(1, dtype=torch.int32))
    if "lidar" in module.modalities:
        nx, ny, nz = g.sparse_shape
        count = min(64, g.max_voxels)
        keys = np.sort(rng.choice(nx * ny * nz, count, replace=False))  # the voxeliser's key order
        coords = np.full((g.max_voxels, 4), -1, np.int32)
        coords[:count, 1], rest = keys // (ny * nz), keys % (ny * nz)
        coords[:count, 2], coords[:count, 3] = rest // nz, rest % nz
        coords[:count, 0] = 0
        features = np.zeros((g.max_voxels, POINT_FEATURES), np.float32)
        features[:count] = rng.normal(size=(count, POINT_FEATURES))
        tensors.update(voxel_features=torch.from_numpy(features), voxel_coords=torch.from_numpy(coords),
                       voxel_count=torch.tensor([count], dtype=torch.int32))
    return tuple(tensors[n] for n in module.input_names)


def export_model(model: FullerModel, cfg: FullerConfig, out: str | Path, step: int | None = None) -> onnx.ModelProto:
    """Trace, export, annotate and check; writes ``out`` and returns the model."""
    module = ExportModule(model, cfg)
    bev_pool_op.register_onnx_symbolic(OPSET)
    sparse_conv_op.register_onnx_symbolic(OPSET)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer notes on Python-side checks and the exporter's deprecation
        torch.onnx.export(module, example_inputs(cfg, module), buffer, opset_version=OPSET, dynamo=False,
                          input_names=module.input_names, output_names=module.output_names,
                          dynamic_axes={n: {0: d} for n, d in contract.DYNAMIC_DIMS.items() if n in module.input_names},
                          custom_opsets={DOMAIN: 1}, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = IR_VERSION
    metadata = {contract.META_CONFIG: config_to_yaml(cfg), contract.META_CONFIG_HASH: config_hash(cfg),
                contract.META_MAX_POINTS: str(max_frustum_points(cfg))}
    if module.lidar is not None:
        metadata[contract.META_SPARSE_CAPACITIES] = ",".join(map(str, module.lidar.capacities))
    if step is not None:
        metadata[contract.META_CHECKPOINT_STEP] = str(step)
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name = "fuller"
    check_graph(proto)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return proto


def check_graph(proto: onnx.ModelProto) -> None:
    """``onnx.checker`` full check (shape inference included) with the fuller schemas registered."""
    register_onnx_schemas()
    onnx.checker.check_model(proto, full_check=True)
