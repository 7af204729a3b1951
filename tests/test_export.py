"""The exported graph: its custom nodes, schema check, Polygraphy lint, TensorRT op coverage,
metadata, and outputs equal to the PyTorch network's on synthetic samples."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install fuller[export])")

from fuller.config import config_from_dict, config_hash, load_config  # noqa: E402
from fuller.engine import contract  # noqa: E402
from fuller.train.predict import load_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(small_onnx, small_checkpoint):
    cfg, model = load_model(small_checkpoint, torch.device("cpu"))
    return onnx.load(str(small_onnx)), cfg, model.eval()


def test_graph_has_exactly_the_expected_fuller_nodes(exported):
    """The custom nodes are BEV pooling and the sparse index ops only: per LiDAR stage one strided
    SparseSites and two rulebooks (the strided layer's and the one its submanifold layers share),
    plus the first level's compaction and two rulebooks (from the padded list, then shared) and the
    output layer's sites and rulebook."""
    proto, cfg, model = exported
    stages = len(cfg.model.lidar_channels)
    custom = Counter(n.op_type for n in proto.graph.node if n.domain == "fuller")
    assert custom == {"BevPool": 1, "SparseSites": stages + 1, "SparseRulebook": 2 * stages + 1}
    assert {o.domain: o.version for o in proto.opset_import} == {"": 17, "fuller": 1}
    assert [i.name for i in proto.graph.input] == contract.input_names(cfg.model.modalities)
    assert [o.name for o in proto.graph.output] == contract.output_names(cfg.model.tasks)
    sites = [n for n in proto.graph.node if n.op_type == "SparseSites"]
    assert [next(a.i for a in n.attribute if a.name == "subm") for n in sites] == [1] + [0] * stages
    assert all(next(a.i for a in n.attribute if a.name == "aot") == 1
               for n in proto.graph.node if n.domain == "fuller")


def test_graph_passes_the_full_checker_with_the_schemas(exported):
    from fuller.export.graph import check_graph

    check_graph(exported[0])  # raises on failure
    broken = onnx.ModelProto()
    broken.CopyFrom(exported[0])
    node = next(n for n in broken.graph.node if n.op_type == "SparseRulebook")
    del node.attribute[:]
    with pytest.raises(onnx.checker.ValidationError, match="kernel_x"):
        check_graph(broken)


def test_graph_passes_polygraphy_lint(small_onnx, tmp_path):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install fuller[export])")
    pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is not installed (polygraphy lint needs it)")
    tool = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    assert tool, "the polygraphy command is not on PATH"
    report = tmp_path / "lint.json"
    run = subprocess.run([tool, "check", "lint", str(small_onnx), "-o", str(report)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lint = json.loads(report.read_text())
    assert lint["summary"]["failing"] == []
    # custom ops are reported as warnings (polygraphy cannot run them); nothing else may be
    others = [e for e in lint["lint_entries"] if "fuller:" not in e.get("message", "")]
    assert others == []


def test_every_standard_op_is_one_tensorrt_parses(exported):
    from fuller.export.tensorrt_ops import tensorrt_onnx_ops

    allowed = tensorrt_onnx_ops()
    used = {n.op_type for n in exported[0].graph.node if n.domain in ("", "ai.onnx")}
    assert used <= allowed, f"ops TensorRT's parser lacks: {sorted(used - allowed)}"
    # the restrictions that bite: Conv weights and TopK's K must be initializers or constants
    constants = {i.name for i in exported[0].graph.initializer} | {
        o for n in exported[0].graph.node if n.op_type == "Constant" for o in n.output}
    for n in exported[0].graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            assert n.input[1] in constants, n.name
        if n.op_type == "TopK":
            assert n.input[1] in constants, n.name


def test_metadata_holds_the_config(exported):
    proto, cfg, _ = exported
    import yaml

    meta = {p.key: p.value for p in proto.metadata_props}
    assert config_from_dict(yaml.safe_load(meta[contract.META_CONFIG])) == cfg
    assert meta[contract.META_CONFIG_HASH] == config_hash(cfg)
    g = cfg.geometry
    assert int(meta[contract.META_MAX_POINTS]) == len(g.cameras) * g.num_depth_bins * (g.image_size[0] // 8) * (
        g.image_size[1] // 8)


@pytest.fixture(scope="module")
def frames(exported, synth_root, nusc):
    """Preprocessed inputs of the mini_val samples, through the engine's preprocessing."""
    from fuller.data import NuScenesDataset
    from fuller.engine.offline import frames as read_frames
    from fuller.engine.preprocess import Preprocessor

    cfg = exported[1]
    pre = Preprocessor(cfg)
    out = []
    for _, calibration, sample in read_frames(NuScenesDataset(cfg, synth_root, "mini_val", nusc=nusc), progress=False):
        pre.calibrate(calibration)
        out.append({**pre.images(sample.images), **pre.geometry_feeds, **pre.voxels(sample.points)})
    return out


def test_onnxruntime_outputs_match_pytorch(small_onnx, small_checkpoint, frames):
    """Map probabilities within 1e-4, scores within 1e-5, and every box above 0.05 matched by a box
    of the same class within 1 mm."""
    from fuller.engine.backends.ort_backend import OnnxRuntimeBackend
    from fuller.export.torch_backend import TorchBackend
    from fuller.engine.parity import Comparison

    ort, ref = OnnxRuntimeBackend(small_onnx), TorchBackend(small_checkpoint)
    comparison = Comparison(score_threshold=0.05)
    for feeds in frames:
        comparison.add(ref.run(feeds), ort.run(feeds))
    assert comparison.outputs["map_probs"].max_abs <= 1e-4
    assert comparison.outputs["scores"].max_abs <= 1e-5
    assert comparison.boxes.reference > 0, "no box above 0.05: the comparison would be empty"
    assert comparison.boxes.matched(1e-3) == comparison.boxes.reference, comparison.boxes
    assert comparison.failures() == []


def test_onnxruntime_fuses_every_sparse_layer_and_agrees_with_the_standard_ops(small_onnx, frames):
    """The in-memory rewrite for ONNX Runtime replaces each sparse layer's Gather + MatMul + Add by
    the fused kernel, and the rewritten graph computes what the exported one does."""
    import onnxruntime

    from fuller.plugins import ort_session_options, prepare_for_onnxruntime

    proto = onnx.load(str(small_onnx))
    fused, count = prepare_for_onnxruntime(proto)
    cfg = config_from_dict(__import__("yaml").safe_load(
        next(p.value for p in proto.metadata_props if p.key == contract.META_CONFIG)))
    layers = 1 + 2 + 3 * (len(cfg.model.lidar_channels) - 1) + 1
    assert count == layers == sum(n.op_type == "SparseGatherGemm" for n in fused.graph.node)
    assert not any(n.op_type == "MatMul" and "lidar" in n.name for n in fused.graph.node)
    sessions = [onnxruntime.InferenceSession(m.SerializeToString(), ort_session_options(),
                                             providers=["CPUExecutionProvider"]) for m in (proto, fused)]
    for feeds in frames[:2]:
        wanted = {i.name for i in sessions[0].get_inputs()}
        standard, rewritten = (s.run(None, {k: v for k, v in feeds.items() if k in wanted}) for s in sessions)
        for a, b in zip(standard, rewritten):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_folded_sparse_encoder_equals_spconv(exported, frames, monkeypatch):
    """Same BEV as the trained spconv encoder, computing one rulebook per (input sites, output
    sites, kernel) as spconv's ``indice_key`` does (the exporter would also merge repeated
    identical nodes, so the graph's node count cannot show this)."""
    from fuller.export.lidar import ExportSparseEncoder

    _, cfg, model = exported
    folded = ExportSparseEncoder(model.lidar, cfg.geometry.max_voxels)
    rulebook, calls = torch.ops.fuller.sparse_rulebook, []
    monkeypatch.setattr(torch.ops.fuller, "sparse_rulebook", lambda *a: calls.append(1) or rulebook(*a))
    stages = len(cfg.model.lidar_channels)
    for feeds in frames[:2]:
        calls.clear()
        n = int(feeds["voxel_count"][0])
        with torch.no_grad():
            want = model.lidar(torch.from_numpy(feeds["voxel_features"][:n]),
                               torch.from_numpy(feeds["voxel_coords"][:n]), 1)
            got = folded(*(torch.from_numpy(feeds[k]) for k in contract.LIDAR_INPUTS))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert len(calls) == 2 * stages + 1  # of 1 + 2 + 3 * (stages - 1) + 1 layers


def test_groupnorm_lidar_encoder_is_refused_with_the_reason():
    from fuller.export.lidar import ExportError, ExportSparseEncoder
    from fuller.train.model import build_model

    from conftest import SMALL_NETWORK

    cfg = load_config("tiny", [*SMALL_NETWORK, "model.norm=gn"])
    with pytest.raises(ExportError, match="model.norm=bn"):
        ExportSparseEncoder(build_model(cfg).lidar, cfg.geometry.max_voxels)


def test_cli_export(small_checkpoint, tmp_path, capsys):
    from fuller.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(small_checkpoint), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "1 fuller::BevPool" in text and "fuller::SparseRulebook" in text
