"""The TensorRT backend without TensorRT: its plain parts (buffer sizing, feed checks, the CUDA error
convention, which geometry to upload), and its whole run path on stand-ins for ``tensorrt`` and
``cuda.bindings.runtime`` that keep "device" memory in host buffers. What only a GPU can show (the
real calls, the plugins, the speed) is in test_engine.py::test_tensorrt_engine_matches_pytorch and
test_build_engine.py::test_engine_build_and_run, which skip without TensorRT."""
from __future__ import annotations

import ctypes
import sys
import types
from enum import IntEnum

import numpy as np
import pytest

from fuller.config import config_to_yaml, load_config
from fuller.engine import Engine, artifacts, tensorrt_build
from fuller.engine.backends import trt_backend
from fuller.engine.backends.trt_backend import GeometryUploads, TensorSpec, buffer_shape, cuda_result
from fuller.engine.contract import GEOMETRY_INPUTS, META_CONFIG, META_CONFIG_HASH, META_MAX_POINTS
from fuller.errors import UserInputError


def test_buffers_hold_the_largest_shape_and_never_nothing():
    assert buffer_shape("images", (1, 6, 3, 32, 88)) == (1, 6, 3, 32, 88)
    assert buffer_shape("ranks_bev", (-1,), (5000,)) == (5000,)
    with pytest.raises(ValueError, match="'boxes'.*data-dependent"):
        buffer_shape("boxes", (1, -1, 9))
    assert TensorSpec("ranks_bev", True, (-1,), (5000,), np.dtype(np.int32)).nbytes == 20000
    assert TensorSpec("ranks_bev", True, (-1,), (0,), np.dtype(np.int32)).nbytes == 4  # an address for an empty tensor


@pytest.mark.parametrize("array,message", [
    (np.zeros(7, np.int64), "expected int32, got int64"),
    (np.zeros(11, np.int32), r"expected shape \['<=10'\], got \[11\]"),
    (np.zeros((2, 5), np.int32), r"expected shape \['<=10'\], got \[2, 5\]"),
])
def test_feeds_the_engine_cannot_take_are_named(array, message):
    spec = TensorSpec("ranks_bev", True, (-1,), (10,), np.dtype(np.int32))
    spec.check(np.zeros(0, np.int32))
    spec.check(np.zeros(10, np.int32))
    with pytest.raises(ValueError, match=message):
        spec.check(array)
    static = TensorSpec("voxel_count", True, (1,), (1,), np.dtype(np.int32))
    with pytest.raises(ValueError, match=r"expected shape \[1\], got \[0\]"):
        static.check(np.zeros(0, np.int32))


def test_cuda_results_follow_cuda_python_convention():
    class Error(IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    assert cuda_result((Error.cudaSuccess,), "cudaStreamSynchronize") is None
    assert cuda_result((Error.cudaSuccess, 1234), "cudaMalloc") == 1234
    assert cuda_result((Error.cudaSuccess, 1, 2), "call") == (1, 2)
    with pytest.raises(RuntimeError, match=r"cudaMalloc failed: CUDA error 2 \(cudaErrorMemoryAllocation\)"):
        cuda_result((Error.cudaErrorMemoryAllocation, None), "cudaMalloc")


def test_real_cuda_python_returns_errors_first():
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (fuller[vehicle])")
    result = runtime.cudaGetDeviceCount()
    if int(result[0]) == 0:
        assert cuda_result(result, "cudaGetDeviceCount") >= 1
    else:  # no GPU or driver here: the convention's failure branch
        with pytest.raises(RuntimeError, match="cudaGetDeviceCount failed: CUDA error"):
            cuda_result(result, "cudaGetDeviceCount")


def test_geometry_is_uploaded_when_the_arrays_change():
    uploads = GeometryUploads(["ranks_bev", "interval_starts"])
    geometry = {"ranks_bev": np.arange(4, dtype=np.int32), "interval_starts": np.arange(2, dtype=np.int32)}
    assert uploads.pending(geometry) == ["ranks_bev", "interval_starts"]
    uploads.uploaded(geometry, ["ranks_bev", "interval_starts"])
    assert uploads.pending(dict(geometry)) == []
    recalibrated = {**geometry, "ranks_bev": geometry["ranks_bev"].copy()}  # equal values, a new calibration's array
    assert uploads.pending(recalibrated) == ["ranks_bev"]


def test_precision_flags_recorded_in_the_sidecar(tmp_path):
    for fp16, int8, precision in ((False, False, "fp32"), (True, False, "fp16"), (False, True, "int8")):
        flags = tensorrt_build.precision_flags(fp16, int8)
        assert flags == {"strongly_typed": True, "fp16": fp16, "int8_qdq": int8, "tf32": False}
        record = artifacts.sidecar_record(tensorrt_version="10.16.1.11", gpu_name="NVIDIA H200",
                                          compute_capability="9.0", precision=precision,
                                          precision_flags=flags, metadata={}, onnx_bytes=b"")
        engine = tmp_path / f"{precision}.engine"
        artifacts.write_sidecar(engine, record)
        assert artifacts.check_sidecar(engine, "10.16.1.11", "NVIDIA H200")["precision_flags"] == flags
    del record["precision_flags"]
    artifacts.write_sidecar(engine, record)
    with pytest.raises(artifacts.EngineMismatchError, match="precision_flags"):
        artifacts.check_sidecar(engine, "10.16.1.11", "NVIDIA H200")


class FakeBuilderConfig:
    def __init__(self) -> None:
        self.flags = {"TF32"}  # TensorRT's default
        self.profiles = []

    def set_memory_pool_limit(self, pool, size):
        pass

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)


class FakeProfile(dict):
    def set_shape(self, name, low, opt, high):
        self[name] = (low, opt, high)


class FakeBuilder:
    """What `_build_serialized` asks of ``tensorrt.Builder``; keeps the config it builds with."""

    def __init__(self, logger) -> None:
        self.config = FakeBuilderConfig()

    def create_network(self, flags):
        return "network"

    def create_builder_config(self):
        return self.config

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        FakeBuilder.last_config = config
        return b"engine"


def test_engine_build_clears_tf32_and_profiles_from_zero():
    trt = types.SimpleNamespace(
        Logger=type("Logger", (), {"VERBOSE": 0, "WARNING": 1, "__init__": lambda self, level: None}),
        Builder=FakeBuilder, NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
        OnnxParser=lambda network, logger: types.SimpleNamespace(parse=lambda data: True),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0), BuilderFlag=types.SimpleNamespace(TF32="TF32"))
    model = types.SimpleNamespace(SerializeToString=lambda: b"onnx")
    shapes = tensorrt_build.profile_shapes(geometry_model(), {META_MAX_POINTS: "400"})
    assert shapes["ranks_bev"] == ((0,), (400,), (400,))
    flags = tensorrt_build.precision_flags(False)
    assert tensorrt_build._build_serialized(trt, model, shapes, flags, "m.onnx", 1.0, None, False) == b"engine"
    assert "TF32" not in FakeBuilder.last_config.flags and FakeBuilder.last_config.profiles == [shapes]


def geometry_model():
    """A graph with the exporter's dynamic geometry inputs (the profile reads nothing else)."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32, ["points"]) for name in GEOMETRY_INPUTS]
    outputs = [helper.make_tensor_value_info("out", TensorProto.INT32, ["points"])]
    graph = helper.make_graph([helper.make_node("Identity", ["ranks_bev"], ["out"])], "g", inputs, outputs)
    return helper.make_model(graph)


# ---------------------------------------------------------------------------------------------
# The backend's run path on stand-ins: "device" memory is host memory, the engine adds its inputs.


class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime's calls the backend makes, each returning (error, *values)."""

    class cudaError_t(IntEnum):
        cudaSuccess = 0

    class cudaMemcpyKind(IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.memory, self.copies, self.freed = {}, [], []

    def _allocate(self, nbytes):
        buffer = (ctypes.c_uint8 * nbytes)()
        self.memory[ctypes.addressof(buffer)] = buffer
        return self.cudaError_t.cudaSuccess, ctypes.addressof(buffer)

    cudaMalloc = cudaMallocHost = _allocate

    def cudaFree(self, pointer):
        self.freed.append(pointer)
        return (self.cudaError_t.cudaSuccess,)

    cudaFreeHost = cudaFree

    def cudaStreamCreateWithFlags(self, flags):
        assert flags == self.cudaStreamNonBlocking
        return self.cudaError_t.cudaSuccess, 77

    def cudaStreamDestroy(self, stream):
        return (self.cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert stream == 77 and nbytes > 0
        ctypes.memmove(dst, src, nbytes)
        self.copies.append((kind, nbytes))
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        return (self.cudaError_t.cudaSuccess,)


class FakeEngine:
    """An engine with the exporter's kind of inputs: a dynamic geometry input (profile 0..10) and a
    static per-frame one; its one output is their sum, (1,) float32."""

    num_io_tensors = 3
    names = ("ranks_bev", "voxel_count", "total")

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "output" if name == "total" else "input"

    def get_tensor_shape(self, name):
        return {"ranks_bev": (-1,), "voxel_count": (1,), "total": (1,)}[name]

    def get_tensor_profile_shape(self, name, profile):
        assert name == "ranks_bev" and profile == 0
        return [(0,), (10,), (10,)]

    def get_tensor_dtype(self, name):
        return np.float32 if name == "total" else np.int32

    def create_execution_context(self):
        return FakeContext()


class FakeContext:
    def __init__(self) -> None:
        self.shapes, self.addresses, self.shape_sets, self.runs = {}, {}, [], 0

    def set_input_shape(self, name, shape):
        self.shape_sets.append((name, tuple(shape)))
        if name == "ranks_bev" and not 0 <= shape[0] <= 10:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (1,) if name == "total" else self.shapes.get(name, (1,))

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        assert stream == 77
        self.runs += 1
        n = self.shapes["ranks_bev"][0]
        ranks = np.ctypeslib.as_array((ctypes.c_int32 * max(n, 1)).from_address(self.addresses["ranks_bev"]))[:n]
        count = (ctypes.c_int32 * 1).from_address(self.addresses["voxel_count"])[0]
        (ctypes.c_float * 1).from_address(self.addresses["total"])[0] = float(ranks.sum() + count)
        return True


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    """A `.engine` with its sidecar and the stand-ins in place of tensorrt and cuda-python."""
    cudart = FakeCudart()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.16.1.11"
    trt.Logger = type("Logger", (), {"WARNING": 1, "__init__": lambda self, level: None})
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: FakeEngine())
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input")
    trt.nptype = lambda dtype: dtype
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    for name, module in (("tensorrt", trt), ("cuda", types.ModuleType("cuda")), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(trt_backend, "current_gpu", lambda: ("NVIDIA H200", "9.0"))
    monkeypatch.setattr(trt_backend, "register_plugins", lambda: None)
    cfg = load_config("tiny", ["model.modalities=[lidar]"])
    path = tmp_path / "model.engine"
    path.write_bytes(b"engine")
    artifacts.write_sidecar(path, artifacts.sidecar_record(
        tensorrt_version="10.16.1.11", gpu_name="NVIDIA H200", compute_capability="9.0", precision="fp32",
        precision_flags=tensorrt_build.precision_flags(False),
        metadata={META_CONFIG: config_to_yaml(cfg), META_CONFIG_HASH: "abc"}, onnx_bytes=b""))
    return path, cudart


def test_backend_binds_fixed_buffers_and_uploads_geometry_only_when_it_changes(fake_tensorrt):
    path, cudart = fake_tensorrt
    backend = trt_backend.TensorRTBackend(path)
    context = backend._context
    assert context.shape_sets == [("ranks_bev", (10,))]  # the profile's maximum, to size the outputs
    assert backend.specs["ranks_bev"].shape == (10,) and backend.specs["total"].shape == (1,)
    addresses = dict(context.addresses)
    assert set(addresses) == {"ranks_bev", "voxel_count", "total"}
    assert backend.describe() == "TensorRT 10.16.1.11 (NVIDIA H200, fp32, TF32 off)"

    geometry = np.arange(4, dtype=np.int32)
    out = backend.run({"ranks_bev": geometry, "voxel_count": np.array([10], np.int32), "unused": np.zeros(3)})
    assert out["total"].tolist() == [16.0]
    to_device = [n for kind, n in cudart.copies if kind == cudart.cudaMemcpyKind.cudaMemcpyHostToDevice]
    assert sorted(to_device) == [4, 16]

    cudart.copies.clear()
    second = backend.run({"ranks_bev": geometry, "voxel_count": np.array([20], np.int32)})
    assert second["total"].tolist() == [26.0]
    assert [n for kind, n in cudart.copies if kind == cudart.cudaMemcpyKind.cudaMemcpyHostToDevice] == [4]
    assert out["total"].tolist() == [26.0]  # a view of the pinned buffer, as the Backend contract says
    assert context.shape_sets == [("ranks_bev", (10,)), ("ranks_bev", (4,))] and context.addresses == addresses

    empty = backend.run({"ranks_bev": np.zeros(0, np.int32), "voxel_count": np.array([5], np.int32)})
    assert empty["total"].tolist() == [5.0] and context.shapes["ranks_bev"] == (0,)


def test_engine_run_owns_what_the_tensorrt_backend_returns(fake_tensorrt):
    path, _ = fake_tensorrt
    engine = Engine(trt_backend.TensorRTBackend(path))
    geometry = np.arange(4, dtype=np.int32)
    first = engine.run({"ranks_bev": geometry, "voxel_count": np.array([10], np.int32)})
    engine.run({"ranks_bev": geometry, "voxel_count": np.array([20], np.int32)})
    assert first["total"].tolist() == [16.0]


def test_backend_names_what_it_cannot_run(fake_tensorrt):
    path, _ = fake_tensorrt
    backend = trt_backend.TensorRTBackend(path)
    with pytest.raises(UserInputError, match=r"model.engine: the engine takes inputs \['voxel_count'\]"):
        backend.run({"ranks_bev": np.zeros(2, np.int32)})
    with pytest.raises(UserInputError, match=r"model.engine: input 'voxel_count': expected int32, got int64"):
        backend.run({"ranks_bev": np.zeros(2, np.int32), "voxel_count": np.array([1])})
    with pytest.raises(UserInputError, match=r"model.engine: input 'ranks_bev': expected shape \['<=10'\]"):
        backend.run({"ranks_bev": np.zeros(11, np.int32), "voxel_count": np.array([1], np.int32)})


def test_device_memory_and_stream_are_released_with_the_backend(fake_tensorrt):
    path, cudart = fake_tensorrt
    backend = trt_backend.TensorRTBackend(path)
    device = set(backend._device.values())
    del backend
    assert device <= set(cudart.freed)


def test_missing_cuda_python_is_named(fake_tensorrt, monkeypatch):
    path, _ = fake_tensorrt
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(UserInputError, match="model.engine: the TensorRT backend needs cuda-python"):
        trt_backend.TensorRTBackend(path)
