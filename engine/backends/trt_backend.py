"""TensorRT backend: a serialised engine run with TensorRT's Python API on memory the backend owns,
after the sidecar check that refuses an engine built for another TensorRT version or GPU.

Memory. Every engine input and output gets one device buffer and one pinned host buffer, allocated
once at its largest shape (for the BEV-pool geometry inputs, whose length is dynamic, the
optimisation profile's maximum) and bound to the execution context once, plus one non-blocking
stream. A run copies the inputs into their pinned buffers, and `_enqueue` uploads them, runs the
engine (``execute_async_v3``), downloads the outputs and synchronises. The addresses never change
between runs, so a later CUDA-graph capture of `_enqueue` needs no change to the allocation. The
geometry inputs are uploaded only when they change: the engine feeds the arrays
`update_calibration` made on every frame until the calibration changes (`GeometryUploads`). The
outputs come back as views of the pinned buffers, valid until the next run, as the `Backend`
contract allows; `Engine.run` copies them.

Binding: NVIDIA's cuda-python (``cuda.bindings.runtime``: the CUDA runtime API call for call, each
call returning its error code first), not pycuda. NVIDIA maintains cuda-python with every CUDA
release and TensorRT's own Python samples use it; pycuda is a third-party wrapper built from source
against a CUDA toolkit. Neither needs torch.

Thin on purpose: the buffer sizing (`TensorSpec`, `buffer_shape`), the feed check, the CUDA error
check and the upload decision are plain Python, tested without TensorRT; the rest needs TensorRT,
cuda-python and an NVIDIA GPU.
"""
from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from fuller.config import config_from_dict
from fuller.errors import UserInputError

from .. import contract
from ..artifacts import REBUILD, check_sidecar
from ..nvidia import TENSORRT_MISSING, current_gpu, register_plugins

CUDA_BINDINGS_MISSING = ("the TensorRT backend needs cuda-python's CUDA runtime bindings: "
                         "pip install 'cuda-bindings>=12.8,<13' (part of fuller's vehicle extra)")


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output as the backend allocates it."""

    name: str
    is_input: bool
    engine_shape: tuple[int, ...]  # as the engine states it, -1 where dynamic
    shape: tuple[int, ...]  # the largest it can be: what the buffers hold
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of its buffers: at least one element, since TensorRT needs a valid address even
        for an empty tensor."""
        return max(int(np.prod(self.shape, dtype=np.int64)), 1) * self.dtype.itemsize

    def check(self, array: np.ndarray) -> None:
        """Raise ValueError unless ``array`` is what the engine takes here: its dtype (another one
        would be read as reinterpreted bits), its rank, its static dimensions, and dynamic ones
        within the buffer."""
        if array.dtype != self.dtype:
            raise ValueError(f"input {self.name!r}: expected {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.engine_shape) or any(
                n > most if stated < 0 else n != stated
                for n, stated, most in zip(array.shape, self.engine_shape, self.shape)):
            want = [f"<={most}" if stated < 0 else stated for stated, most in zip(self.engine_shape, self.shape)]
            raise ValueError(f"input {self.name!r}: expected shape {want}, got {list(array.shape)}")


def buffer_shape(name: str, shape, profile_max=None) -> tuple[int, ...]:
    """The largest shape of a tensor the engine states as ``shape`` (-1 where dynamic): itself when
    static, else the optimisation profile's maximum (``profile_max``, inputs only). An output still
    dynamic once every input has its largest shape is data-dependent, which the exported graph's
    outputs never are."""
    shape = tuple(int(n) for n in shape)
    if all(n >= 0 for n in shape):
        return shape
    if profile_max is None:
        raise ValueError(f"output {name!r}: data-dependent shape {list(shape)}; the exported graph's outputs are "
                         "static (engine/contract.py)")
    return tuple(int(n) for n in profile_max)


def cuda_result(result: tuple, call: str):
    """The outputs of a cuda-python call, which returns its error code first (0 is success): None,
    the one value, or a tuple of them. A failure raises RuntimeError naming the call and the error."""
    error, *values = result
    if int(error) != 0:
        name = getattr(error, "name", None)
        raise RuntimeError(f"{call} failed: CUDA error {int(error)}" + (f" ({name})" if name else ""))
    return None if not values else values[0] if len(values) == 1 else tuple(values)


class GeometryUploads:
    """Which geometry inputs a run must upload: those whose array is not the one uploaded last.
    Identity, not content: the engine feeds the very arrays `update_calibration` made on every
    frame, and hashing up to millions of indices per frame would cost what skipping the upload
    saves. The last uploaded arrays are held, so no new array can take a held one's id; a fed array
    must not be changed in place (the preprocessor makes new ones for a new calibration)."""

    def __init__(self, names) -> None:
        self.names = tuple(names)
        self._uploaded: dict[str, np.ndarray] = {}

    def pending(self, feeds: dict[str, np.ndarray]) -> list[str]:
        return [name for name in self.names if feeds[name] is not self._uploaded.get(name)]

    def uploaded(self, feeds: dict[str, np.ndarray], names) -> None:
        self._uploaded.update({name: feeds[name] for name in names})


def _pinned_array(cudart, spec: TensorSpec) -> np.ndarray:
    """A flat array over new pinned host memory, freed when the last view of it goes."""
    pointer = cuda_result(cudart.cudaMallocHost(spec.nbytes), "cudaMallocHost")
    memory = (ctypes.c_uint8 * spec.nbytes).from_address(pointer)
    weakref.finalize(memory, cudart.cudaFreeHost, pointer)
    return np.frombuffer(memory, spec.dtype)


def _release(cudart, stream, device_pointers: list[int]) -> None:
    for pointer in device_pointers:
        cudart.cudaFree(pointer)
    cudart.cudaStreamDestroy(stream)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            import tensorrt as trt
        except (ImportError, OSError) as exc:
            raise UserInputError(f"{self.path}: {TENSORRT_MISSING}") from exc
        try:
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise UserInputError(f"{self.path}: {CUDA_BINDINGS_MISSING}") from exc
        self.gpu, _ = current_gpu()
        self.record = check_sidecar(self.path, trt.__version__, self.gpu)
        self.config = config_from_dict(yaml.safe_load(self.record["config"]))
        self.precision = self.record["precision"]
        self.trt_version = trt.__version__
        register_plugins()
        self._cudart = cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # held for as long as the engine it deserialised
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise UserInputError(f"{self.path}: TensorRT could not deserialise this engine (its log above says "
                                 f"why); {REBUILD}")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise UserInputError(f"{self.path}: TensorRT could not create an execution context for this engine "
                                 "(out of GPU memory?)")
        self.specs = self._tensor_specs(trt)
        self._stream = cuda_result(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                   "cudaStreamCreateWithFlags")
        device_pointers: list[int] = []
        weakref.finalize(self, _release, cudart, self._stream, device_pointers)
        self._device, self._host = {}, {}
        for spec in self.specs.values():
            device_pointers.append(cuda_result(cudart.cudaMalloc(spec.nbytes), "cudaMalloc"))
            self._device[spec.name] = device_pointers[-1]
            self._host[spec.name] = _pinned_array(cudart, spec)
            self._context.set_tensor_address(spec.name, self._device[spec.name])
        inputs = [spec.name for spec in self.specs.values() if spec.is_input]
        self._per_frame = [name for name in inputs if name not in contract.GEOMETRY_INPUTS]
        self._geometry = GeometryUploads(name for name in inputs if name in contract.GEOMETRY_INPUTS)
        self._shapes = {name: self.specs[name].shape for name in inputs}  # as set on the context
        self._output_shapes = self._read_output_shapes()

    def _tensor_specs(self, trt) -> dict[str, TensorSpec]:
        """Every input and output at its largest shape: dynamic inputs set to the profile's maximum
        first, so the context states the outputs' largest shapes."""
        engine, context = self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        stated = {name: tuple(engine.get_tensor_shape(name)) for name in names}
        largest = {}
        for name in inputs:
            dynamic = any(n < 0 for n in stated[name])
            largest[name] = buffer_shape(name, stated[name],
                                         engine.get_tensor_profile_shape(name, 0)[2] if dynamic else None)
            if dynamic:
                context.set_input_shape(name, largest[name])
        for name in names:
            if name not in largest:
                try:
                    largest[name] = buffer_shape(name, context.get_tensor_shape(name))
                except ValueError as exc:
                    raise UserInputError(f"{self.path}: {exc}; re-export and rebuild the engine") from None
        return {name: TensorSpec(name, name in inputs, stated[name], largest[name],
                                 np.dtype(trt.nptype(engine.get_tensor_dtype(name)))) for name in names}

    def _read_output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {spec.name: tuple(self._context.get_tensor_shape(spec.name))
                for spec in self.specs.values() if not spec.is_input}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self._per_frame + list(self._geometry.names) if name not in feeds]
        if missing:
            raise UserInputError(f"{self.path}: the engine takes inputs {missing}, which the feeds lack")
        uploads = self._per_frame + self._geometry.pending(feeds)
        shape_changed = False
        for name in uploads:
            shape_changed |= self._stage(name, np.asarray(feeds[name]))
        if shape_changed:
            self._output_shapes = self._read_output_shapes()
        self._enqueue(uploads)
        self._geometry.uploaded(feeds, [name for name in uploads if name in self._geometry.names])
        return {name: self._host[name][:int(np.prod(shape, dtype=np.int64))].reshape(shape)
                for name, shape in self._output_shapes.items()}

    def _stage(self, name: str, array: np.ndarray) -> bool:
        """Copy one input into its pinned buffer, setting its shape on the context if it changed;
        returns whether it did."""
        spec = self.specs[name]
        try:
            spec.check(array)
        except ValueError as exc:
            raise UserInputError(f"{self.path}: {exc} (was the engine built from another export?)") from None
        np.copyto(self._host[name][:array.size].reshape(array.shape), array)
        if array.shape == self._shapes[name]:
            return False
        if not self._context.set_input_shape(name, array.shape):
            raise UserInputError(f"{self.path}: input {name!r} of shape {list(array.shape)} is outside the engine's "
                                 "optimisation profile; rebuild it from the export that goes with this model")
        self._shapes[name] = array.shape
        return True

    def _enqueue(self, uploads: list[str]) -> None:
        """The stream's work for one run, on fixed addresses: uploads, the engine, downloads, sync."""
        cudart, stream = self._cudart, self._stream
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in uploads:
            nbytes = int(np.prod(self._shapes[name], dtype=np.int64)) * self.specs[name].dtype.itemsize
            if nbytes:
                cuda_result(cudart.cudaMemcpyAsync(self._device[name], self._host[name].ctypes.data, nbytes, to_device,
                                                   stream), "cudaMemcpyAsync")
        if not self._context.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.path}: TensorRT could not enqueue the engine (its log above says why)")
        for name, shape in self._output_shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self.specs[name].dtype.itemsize
            if nbytes:
                cuda_result(cudart.cudaMemcpyAsync(self._host[name].ctypes.data, self._device[name], nbytes, to_host,
                                                   stream), "cudaMemcpyAsync")
        cuda_result(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def describe(self) -> str:
        tf32 = "TF32 on" if self.record["precision_flags"]["tf32"] else "TF32 off"
        return f"TensorRT {self.trt_version} ({self.gpu}, {self.precision}, {tf32})"
