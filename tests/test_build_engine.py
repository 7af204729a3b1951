"""export/build_engine.py: the script's failure without TensorRT, its arguments, the ONNX metadata and
profile it reads, the sidecar and its mismatch errors; and, where TensorRT, a GPU and Triton are
present, an engine built from a graph with every fuller plugin, run and compared with the float64
references (the same graph runs in ONNX Runtime everywhere)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fuller.export as export_package
from fuller.engine import artifacts, nvidia, tensorrt_build
from fuller.engine.artifacts import DEFAULT_ENGINE, DEFAULT_ONNX, sidecar_path
from fuller.engine.contract import GEOMETRY_INPUTS, META_CONFIG_HASH, META_MAX_POINTS
from fuller.errors import UserInputError
from fuller.export import build_engine as be
from fuller.plugins.sparse_conv.reference import ConvGeometry

SCRIPT = Path(export_package.__file__).parent / "build_engine.py"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("command, prefix", [([str(SCRIPT)], "build_engine: "),
                                             (["-m", "fuller.export.build_engine"], "build_engine: "),
                                             (["-m", "fuller", "build-engine"], "fuller build-engine: ")])
def test_script_fails_in_one_line(tmp_path, command, prefix):
    """As users call it, in a folder with no export: non-zero, one line on stderr, no traceback;
    without TensorRT that line says what to install."""
    done = subprocess.run([sys.executable, *command, "--fp16"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(prefix)
    if not HAS_TENSORRT:
        assert "TensorRT is not installed" in lines[0] and "pip install tensorrt" in lines[0]
    else:
        assert str(DEFAULT_ONNX) in lines[0]


def test_arguments_and_default_paths():
    args = be.parse_args([])
    assert (args.onnx, args.out, args.fp16, args.timing_cache) == (DEFAULT_ONNX, DEFAULT_ENGINE, False, None)
    assert DEFAULT_ENGINE == Path("exports/fuller.engine")
    args = be.parse_args(["--onnx", "m/model.onnx", "--fp16", "--workspace-gib", "1.5", "--timing-cache", "t.cache"])
    assert (args.out, args.fp16, args.workspace_gib, args.timing_cache) == (Path("m/model.engine"), True, 1.5,
                                                                            Path("t.cache"))
    assert be.parse_args(["--out", "x.plan"]).out == Path("x.plan")
    assert sidecar_path("a/b.engine") == Path("a/b.engine.json")
    with pytest.raises(SystemExit):
        be.parse_args(["--workspace-gib", "0"])


def geometry_model(max_points: str | None = "1234", extra_dynamic: bool = False) -> onnx.ModelProto:
    """A graph with the exporter's input layout: static images, dynamic BEV-pool geometry."""
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 2, 3, 16, 32])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.INT32, ["points" if "ranks" in name else "intervals"])
               for name in GEOMETRY_INPUTS]
    if extra_dynamic:
        inputs.append(helper.make_tensor_value_info("voxel_features", TensorProto.FLOAT, ["voxels", 5]))
    weight = onnx.numpy_helper.from_array(np.ones(1, np.float32), "weight")
    inputs.append(helper.make_tensor_value_info("weight", TensorProto.FLOAT, [1]))  # an initializer listed as input
    node = helper.make_node("Mul", ["images", "weight"], ["out"])
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                                  [1, 2, 3, 16, 32])], [weight])
    model = helper.make_model(graph)
    props = {META_CONFIG_HASH: "abc123"}
    if max_points is not None:
        props[META_MAX_POINTS] = max_points
    helper.set_model_props(model, props)
    return model


def test_metadata_and_profile_shapes():
    model = geometry_model()
    metadata = artifacts.read_metadata(model)
    assert metadata == {META_CONFIG_HASH: "abc123", META_MAX_POINTS: "1234"}
    assert tensorrt_build.max_frustum_points(metadata) == 1234
    shapes = tensorrt_build.profile_shapes(model, metadata)
    assert set(shapes) == set(GEOMETRY_INPUTS)
    assert all(shape == ((0,), (1234,), (1234,)) for shape in shapes.values())  # 0: no frustum point in the grid


@pytest.mark.parametrize("value", [None, "many", "0"])
def test_missing_or_bad_frustum_size_is_an_error(value):
    model = geometry_model(max_points=value)
    with pytest.raises(UserInputError, match=META_MAX_POINTS):
        tensorrt_build.profile_shapes(model, artifacts.read_metadata(model))


def test_other_dynamic_inputs_are_an_error():
    with pytest.raises(UserInputError, match="voxel_features"):
        tensorrt_build.profile_shapes(geometry_model(extra_dynamic=True), {META_MAX_POINTS: "10"})


def test_static_graph_needs_no_frustum_size():
    model = geometry_model(max_points=None)
    del model.graph.input[1:6]  # no geometry inputs: nothing dynamic
    assert tensorrt_build.profile_shapes(model, artifacts.read_metadata(model)) == {}


def record(tmp_path, **changes) -> tuple[Path, dict]:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    fields = dict(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H200", compute_capability="9.0", precision="fp16",
                  precision_flags=tensorrt_build.precision_flags(True), metadata={META_CONFIG_HASH: "abc123"},
                  onnx_bytes=b"onnx bytes")
    fields.update(changes)
    rec = artifacts.sidecar_record(**fields)
    artifacts.write_sidecar(engine, rec)
    return engine, rec


def test_sidecar_record_and_matching_check(tmp_path):
    engine, rec = record(tmp_path)
    assert set(rec) == set(artifacts.SIDECAR_KEYS)
    assert rec["onnx_sha256"] == hashlib.sha256(b"onnx bytes").hexdigest() and rec["config_hash"] == "abc123"
    assert datetime.fromisoformat(rec["built_at"]).tzinfo is not None
    assert json.loads(sidecar_path(engine).read_text()) == rec
    assert artifacts.check_sidecar(engine, "10.13.0.35", "NVIDIA H200") == rec


@pytest.mark.parametrize("trt_version,gpu,expected", [
    ("10.14.1", "NVIDIA H200", ["TensorRT 10.13.0.35", "TensorRT 10.14.1"]),
    ("10.13.0.35", "NVIDIA L4", ["NVIDIA H200", "NVIDIA L4"]),
    ("11.0.0", "NVIDIA L4", ["TensorRT 10.13.0.35", "TensorRT 11.0.0", "NVIDIA H200", "NVIDIA L4"]),
])
def test_sidecar_mismatch_names_what_differs(tmp_path, trt_version, gpu, expected):
    engine, _ = record(tmp_path)
    with pytest.raises(artifacts.EngineMismatchError) as info:
        artifacts.check_sidecar(engine, trt_version, gpu)
    assert isinstance(info.value, UserInputError)
    message = str(info.value)
    assert all(text in message for text in expected), message
    assert "--fp16" in message and str(engine) in message


def test_missing_or_broken_sidecar(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(artifacts.EngineMismatchError, match="no sidecar"):
        artifacts.check_sidecar(engine, "10.13.0.35", "NVIDIA H200")
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(artifacts.EngineMismatchError, match="unreadable"):
        artifacts.check_sidecar(engine, "10.13.0.35", "NVIDIA H200")
    sidecar_path(engine).write_text(json.dumps({"tensorrt_version": "10.13.0.35"}))
    with pytest.raises(artifacts.EngineMismatchError, match="gpu_name"):
        artifacts.check_sidecar(engine, "10.13.0.35", "NVIDIA H200")


class FakeError:
    def __init__(self, name, op, desc, index):
        self._values = name, op, desc, index

    def node_name(self):
        return self._values[0]

    def node_operator(self):
        return self._values[1]

    def desc(self):
        return self._values[2]

    def node(self):
        return self._values[3]


class FakeParser:
    def __init__(self, errors):
        self.errors = errors
        self.num_errors = len(errors)

    def get_error(self, i):
        return self.errors[i]


def test_parser_errors_name_the_nodes():
    text = tensorrt_build.format_parser_errors(FakeParser([FakeError("pool", "BevPool", "Plugin not found", 3),
                                               FakeError("", "", "bad model", 0)]))
    assert text == "node 'pool' (BevPool): Plugin not found; node #0: bad model"
    assert "\n" not in text


# ---------------------------------------------------------------------------------------------
# The TensorRT build itself: where TensorRT, an NVIDIA GPU, Triton and PyTorch with CUDA are present.


def _tensorrt_ready() -> str | None:
    """Why the TensorRT build tests cannot run here, or None."""
    for module in ("tensorrt", "triton", "torch"):
        if importlib.util.find_spec(module) is None:
            return f"needs {module}"
    import torch

    return None if torch.cuda.is_available() else "needs an NVIDIA GPU (torch.cuda.is_available() is False)"


needs_tensorrt = pytest.mark.skipif(_tensorrt_ready() is not None, reason=_tensorrt_ready() or "")


SPARSE_SHAPE, SPARSE_ROWS, SPARSE_SITES = (6, 5, 4), 30, 24


def plugin_model(path: Path, rng) -> dict[str, np.ndarray]:
    """A graph with every fuller plugin: one BevPool node feeding a Relu, and one submanifold sparse
    layer as the exporter writes it (SparseSites, SparseRulebook, then Concat, Gather, Reshape,
    MatMul, Add) whose data-dependent rows are scattered into a dense (cells, 16) grid, so the
    graph's outputs have static shapes as the network's do. Written to ``path`` with the
    exporter's metadata; returns its feeds."""
    bn, d, h, w, c, bev = 2, 4, 3, 5, 8, (1, 6, 7)
    cells = rng.choice(int(np.prod(bev)), 20, replace=False)
    ranks_bev = np.sort(rng.choice(cells, 200)).astype(np.int32)
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]]).astype(np.int32)
    feeds = {"depth": rng.random((bn, d, h, w), dtype=np.float32),
             "feat": rng.standard_normal((bn, h, w, c)).astype(np.float32),
             "ranks_depth": rng.integers(0, bn * d * h * w, 200).astype(np.int32),
             "ranks_feat": rng.integers(0, bn * h * w, 200).astype(np.int32), "ranks_bev": ranks_bev,
             "interval_starts": starts, "interval_lengths": np.diff(np.r_[starts, 200]).astype(np.int32)}
    n, shape, m = SPARSE_ROWS, SPARSE_SHAPE, SPARSE_SITES
    keys = np.sort(rng.choice(int(np.prod(shape)), m, replace=False))  # key order, as the voxeliser lists them
    coords = np.full((n, 4), -1, np.int32)
    coords[:m, 1], rest = np.divmod(keys, shape[1] * shape[2])
    coords[:m, 2], coords[:m, 3] = np.divmod(rest, shape[2])
    coords[:m, 0] = 0
    feeds.update({"voxel_features": rng.standard_normal((n, 5)).astype(np.float32), "voxel_coords": coords,
                  "voxel_count": np.array([m], np.int32)})
    geom = ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), shape, True, n)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((27 * 5, 16)).astype(np.float32), "sp_weight"),
             onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "sp_bias"),
             onnx.numpy_helper.from_array(np.zeros((1, 5), np.float32), "zero_row"),
             onnx.numpy_helper.from_array(np.array([-1, 27 * 5], np.int64), "flat_shape"),
             *(onnx.numpy_helper.from_array(np.array(v, np.int32), name) for name, v in
               (("col_x", 1), ("col_y", 2), ("col_z", 3), ("stride_x", shape[1] * shape[2]), ("stride_y", shape[2]))),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "last_axis"),
             onnx.numpy_helper.from_array(np.zeros((int(np.prod(shape)), 16), np.float32), "empty_grid")]
    nodes = [
        helper.make_node("BevPool", ["depth", "feat", *GEOMETRY_INPUTS], ["pooled"], domain="fuller", name="pool",
                         batch_size=bev[0], grid_x=bev[1], grid_y=bev[2], plugin_namespace="fuller", aot=1),
        helper.make_node("Relu", ["pooled"], ["bev"], name="relu"),
        helper.make_node("SparseSites", ["voxel_coords", "voxel_count"], ["sites", "sites_count"], domain="fuller",
                         name="sites", plugin_namespace="fuller", aot=1, **geom.attributes()),
        helper.make_node("SparseRulebook", ["voxel_coords", "voxel_count", "sites"], ["neighbours"],
                         domain="fuller", name="rulebook", plugin_namespace="fuller", aot=1,
                         **geom.attributes(sites=False)),
        helper.make_node("Concat", ["voxel_features", "zero_row"], ["rows"], name="rows", axis=0),
        helper.make_node("Gather", ["rows", "neighbours"], ["gathered"], name="gather", axis=0),
        helper.make_node("Reshape", ["gathered", "flat_shape"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "sp_weight"], ["product"], name="matmul"),
        helper.make_node("Add", ["product", "sp_bias"], ["sp_rows"], name="bias"),
        *(helper.make_node("Gather", ["sites", f"col_{a}"], [a], name=f"site_{a}", axis=1) for a in "xyz"),
        helper.make_node("Mul", ["x", "stride_x"], ["x_part"], name="x_part"),
        helper.make_node("Mul", ["y", "stride_y"], ["y_part"], name="y_part"),
        helper.make_node("Add", ["x_part", "y_part"], ["xy_part"], name="xy_part"),
        helper.make_node("Add", ["xy_part", "z"], ["cell"], name="cell"),
        helper.make_node("Cast", ["cell"], ["cell64"], name="cell64", to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["cell64", "last_axis"], ["cell_index"], name="cell_index"),
        helper.make_node("ScatterND", ["empty_grid", "cell_index", "sp_rows"], ["sp_grid"], name="scatter"),
    ]
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    inputs = [helper.make_tensor_value_info(k, types[v.dtype], ["points"] if k.startswith("ranks") else
                                            ["intervals"] if k.startswith("interval") else list(v.shape))
              for k, v in feeds.items()]
    outputs = [helper.make_tensor_value_info("bev", TensorProto.FLOAT, [bev[0], c, bev[1], bev[2]]),
               helper.make_tensor_value_info("sp_grid", TensorProto.FLOAT, [int(np.prod(shape)), 16])]
    model = helper.make_model(helper.make_graph(nodes, "plugins", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("fuller", 1)])
    helper.set_model_props(model, {META_MAX_POINTS: "400", META_CONFIG_HASH: "test"})
    onnx.save(model, path)
    return feeds


def plugin_model_references(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The plugin graph's outputs from the float64 references: BEV pooling, and the sparse layer
    scattered into its grid (cell ``(x * Y + y) * Z + z``)."""
    from fuller.plugins.bev_pool.reference import bev_pool_reference
    from fuller.plugins.sparse_conv.reference import sparse_conv3d_reference

    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    ranks = [feeds[name] for name in GEOMETRY_INPUTS]
    geom = ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), SPARSE_SHAPE, True, SPARSE_ROWS)
    weight = arrays["sp_weight"].reshape(3, 3, 3, 5, 16)
    out, coords, count = sparse_conv3d_reference(feeds["voxel_features"], feeds["voxel_coords"], feeds["voxel_count"],
                                                 weight, arrays["sp_bias"], geom)
    grid = np.zeros((int(np.prod(SPARSE_SHAPE)), 16))
    m = int(count[0])
    _, y, z = SPARSE_SHAPE
    grid[(coords[:m, 1] * y + coords[:m, 2]) * z + coords[:m, 3]] = out[:m]
    return {"bev": np.maximum(bev_pool_reference(feeds["depth"], feeds["feat"], *ranks, [1, 6, 7]), 0),
            "sp_grid": grid}


def test_plugin_model_runs_in_onnxruntime(tmp_path):
    """The graph the TensorRT test builds is valid ONNX that computes what the references say (here
    in ONNX Runtime with the fuller CPU kernels), so a TensorRT failure on it is TensorRT's."""
    import onnxruntime

    from fuller.plugins import ort_session_options, register_onnx_schemas

    path = tmp_path / "plugins.onnx"
    feeds = plugin_model(path, np.random.default_rng(0))
    register_onnx_schemas()
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = onnxruntime.InferenceSession(str(path), ort_session_options(), providers=["CPUExecutionProvider"])
    got = dict(zip(["bev", "sp_grid"], session.run(["bev", "sp_grid"], feeds)))
    for name, want in plugin_model_references(path, feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_tensorrt
@pytest.mark.slow
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_build_and_run(tmp_path, fp16):
    import tensorrt as trt
    import torch

    onnx_path, engine_path = tmp_path / "plugins.onnx", tmp_path / "plugins.engine"
    feeds = plugin_model(onnx_path, np.random.default_rng(0))
    argv = ["--onnx", str(onnx_path), "--out", str(engine_path), "--timing-cache", str(tmp_path / "timing.cache")]
    assert be.main(argv + (["--fp16"] if fp16 else [])) == 0
    gpu_name, _ = nvidia.current_gpu()
    assert artifacts.check_sidecar(engine_path, trt.__version__, gpu_name)["precision"] == ("fp16" if fp16 else "fp32")
    assert (tmp_path / "timing.cache").stat().st_size > 0

    nvidia.register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    tensors = {name: torch.from_numpy(array).cuda() for name, array in feeds.items()}
    for name, tensor in tensors.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    for name in ("bev", "sp_grid"):
        tensors[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(name, tensors[name].data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()

    tol = 2e-2 if fp16 else 1e-4  # float16 weights and activations vs float64; float32 throughout
    for name, want in plugin_model_references(onnx_path, feeds).items():
        np.testing.assert_allclose(tensors[name].cpu().numpy(), want, rtol=tol, atol=tol * np.abs(want).max())
