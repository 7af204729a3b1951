"""Build the TensorRT engine of the exported graph: ``python export/build_engine.py --fp16``.

Steps: register the ``fuller`` plugins (``plugins/*/trt_plugin.py``), optionally cast the graph to
float16 (:func:`fuller.export.fp16.cast_to_fp16`), parse it with TensorRT's ONNX parser into a
**strongly-typed** network (TensorRT 10 and 11: the graph's types are the engine's precision; 11
has no weakly-typed ``--fp16`` builder flag), give the dynamic BEV-pool geometry inputs an
optimisation profile (1 to the frustum size the exporter wrote in the metadata), build with the
requested workspace and timing cache, and write the engine with a sidecar JSON that records what it
was built with. TensorRT engines run only on the TensorRT version and GPU they were built for;
:func:`check_sidecar` is what the runtime calls before deserialising one, so a mismatch is a clear
message instead of a deserialisation failure.

Without TensorRT (or without an NVIDIA GPU) the script prints one line saying what is missing and
exits with status 2. Everything but the build itself (arguments, metadata, profile shapes, sidecar,
parser messages) is plain Python, importable and tested without TensorRT; the module imports only
the standard library and torch-free project modules at import time.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: its folder (export/) is sys.path[0], where contract.py, graph.py, ... would
    # shadow top-level modules of those names. The package is imported as fuller.export instead.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

from fuller.errors import UserInputError  # noqa: E402
from fuller.export import contract  # noqa: E402
from fuller.export.paths import DEFAULT_ONNX, sidecar_path  # noqa: E402

TENSORRT_MISSING = ("TensorRT is not installed; install it from NVIDIA's index: pip install tensorrt "
                    "(needs an NVIDIA GPU, CUDA 12)")
# "config" is the exported config YAML: the TensorRT runtime's source of geometry, as the ONNX
# metadata is for ONNX Runtime.
SIDECAR_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "config_hash", "config",
                "onnx_sha256", "built_at")


class EngineMismatchError(UserInputError):
    """The engine was built for another TensorRT version or GPU (or its sidecar is missing)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_engine.py", description="Build a TensorRT engine (strongly typed) from the exported ONNX graph.")
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX,
                        help=f"exported graph (default: {DEFAULT_ONNX}, where fuller export writes it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="engine to write (default: the ONNX path with the suffix .engine)")
    parser.add_argument("--fp16", action="store_true",
                        help="cast the graph to float16 first (inputs and outputs keep their types)")
    parser.add_argument("--workspace-gib", type=float, default=4.0,
                        help="workspace memory pool limit in GiB (default: 4)")
    parser.add_argument("--timing-cache", type=Path, default=None, metavar="PATH",
                        help="timing cache to read if it exists and to write after the build")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    args = parser.parse_args(argv)
    if args.workspace_gib <= 0:
        parser.error(f"--workspace-gib: expected a positive number, got {args.workspace_gib}")
    if args.out is None:
        args.out = args.onnx.with_suffix(".engine")
    return args


def read_metadata(model) -> dict[str, str]:
    """The ONNX model's ``metadata_props`` as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def max_frustum_points(metadata: dict[str, str]) -> int:
    """The upper bound of the BEV-pool ``points`` dimension the exporter recorded."""
    value = metadata.get(contract.META_MAX_POINTS)
    if value is None:
        raise UserInputError(f"ONNX metadata: no {contract.META_MAX_POINTS!r} (the frustum size that bounds the "
                             "dynamic BEV-pool inputs); export the model again with fuller export")
    try:
        points = int(value)
    except ValueError:
        points = 0
    if points < 1:
        raise UserInputError(f"ONNX metadata: {contract.META_MAX_POINTS!r}: expected a positive integer, got {value!r}")
    return points


def _dims(value_info) -> list[int | None]:
    """Static extents of a graph input, None where the dimension is dynamic."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def profile_shapes(model, metadata: dict[str, str]
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of the graph inputs that have dynamic dimensions. Only the BEV-pool
    geometry inputs may (P points, I <= P intervals): their dynamic dimension ranges from 1 to the
    frustum size recorded in the metadata (:func:`max_frustum_points`), tuned for that size; static
    dimensions keep their recorded value."""
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value_info in model.graph.input:
        if value_info.name in initializers:
            continue
        dims = _dims(value_info)
        if all(d is not None for d in dims):
            continue
        if value_info.name not in contract.GEOMETRY_INPUTS:
            raise UserInputError(f"ONNX input {value_info.name!r}: dynamic dimensions are only supported on the "
                                 f"BEV-pool geometry inputs {list(contract.GEOMETRY_INPUTS)}, got shape "
                                 f"{[d if d is not None else '?' for d in dims]}")
        max_points = max_frustum_points(metadata)
        shapes[value_info.name] = tuple(tuple(d if d is not None else n for d in dims)
                                        for n in (1, max_points, max_points))
    return shapes


def format_parser_errors(parser) -> str:
    """One line for TensorRT's ONNX parser errors, each with its node's name and operator."""
    messages = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        name, op = error.node_name(), error.node_operator()
        where = f"node {name!r} ({op})" if name or op else f"node #{error.node()}"
        messages.append(f"{where}: {error.desc()}")
    return "; ".join(messages) if messages else "no error details"


def sidecar_record(*, tensorrt_version: str, gpu_name: str, compute_capability: str, precision: str,
                   metadata: dict[str, str], onnx_bytes: bytes) -> dict[str, str]:
    """What the sidecar JSON records about an engine build."""
    return {"tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "compute_capability": compute_capability,
            "precision": precision, "config_hash": metadata.get(contract.META_CONFIG_HASH, ""),
            "config": metadata.get(contract.META_CONFIG, ""),
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_sidecar(engine_path: str | Path, record: dict[str, str]) -> Path:
    path = sidecar_path(engine_path)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def check_sidecar(engine_path: str | Path, trt_version: str, gpu_name: str) -> dict[str, str]:
    """The engine's sidecar record, after checking that it was built with TensorRT ``trt_version``
    on a ``gpu_name`` GPU. Raises :class:`EngineMismatchError` naming what differs (or saying the
    sidecar is missing or unreadable); the runtime calls this before deserialising an engine."""
    path = sidecar_path(engine_path)
    rebuild = "rebuild the engine on this machine with python export/build_engine.py"
    if not path.is_file():
        raise EngineMismatchError(f"{engine_path}: no sidecar {path} records which TensorRT and GPU the engine was "
                                  f"built for; {rebuild}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineMismatchError(f"{path}: unreadable engine sidecar ({exc}); {rebuild}") from exc
    missing = [key for key in SIDECAR_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise EngineMismatchError(f"{path}: engine sidecar lacks {missing}; {rebuild}")
    differences = []
    if record["tensorrt_version"] != trt_version:
        differences.append(f"TensorRT {record['tensorrt_version']} (this runtime has TensorRT {trt_version})")
    if record["gpu_name"] != gpu_name:
        differences.append(f"a {record['gpu_name']} GPU (this machine has a {gpu_name})")
    if differences:
        flag = " --fp16" if record["precision"] == "fp16" else ""
        raise EngineMismatchError(f"{engine_path} was built for {' and '.join(differences)}; engines only run on "
                                  f"the TensorRT version and GPU they were built for: {rebuild}{flag}")
    return record


def current_gpu() -> tuple[str, str]:
    """(name, compute capability 'major.minor') of the first visible NVIDIA GPU, from the driver
    library itself (no CUDA toolkit, PyTorch or pycuda needed)."""
    import ctypes

    try:
        cuda = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError as exc:
        raise UserInputError(f"no NVIDIA driver found ({exc}); building a TensorRT engine needs an NVIDIA GPU") \
            from exc
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    for call in (lambda: cuda.cuInit(0), lambda: cuda.cuDeviceGet(ctypes.byref(device), 0),
                 lambda: cuda.cuDeviceGetName(name, len(name), device),
                 lambda: cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device),  # COMPUTE_CAPABILITY_MAJOR
                 lambda: cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)):  # COMPUTE_CAPABILITY_MINOR
        status = call()
        if status != 0:
            raise UserInputError(f"the NVIDIA driver reports CUDA error {status} for the first GPU; building a "
                                 "TensorRT engine needs a working NVIDIA GPU")
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def _import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise UserInputError(TENSORRT_MISSING) from exc
    return tensorrt


def register_plugins() -> None:
    """Register both plugins (engine build and runtime): their kernels need Triton, at build time
    for BevPool's ahead-of-time PTX and at run time for SparseConv3d's just-in-time launches."""
    from fuller.plugins.bev_pool import trt_plugin as bev_pool_plugin
    from fuller.plugins.sparse_conv import trt_plugin as sparse_conv_plugin

    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise UserInputError("the fuller plugins' GPU kernels need Triton: pip install triton") from exc
    bev_pool_plugin.register()
    sparse_conv_plugin.register()


def _build_serialized(trt, model, shapes: dict, args: argparse.Namespace) -> bytes:
    """The TensorRT part: parse into a strongly-typed network, profile, workspace, timing cache, build."""
    logger = trt.Logger(trt.Logger.VERBOSE if args.verbose else trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:  # pybind11 reports a null builder as TypeError
        raise UserInputError(f"TensorRT could not create a builder (no usable NVIDIA GPU or driver?): {exc}") from exc
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        raise UserInputError(f"TensorRT's ONNX parser rejected {args.onnx}: {format_parser_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(args.workspace_gib * (1 << 30)))
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    if args.timing_cache is not None:
        cached = args.timing_cache.read_bytes() if args.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cached), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserInputError(f"TensorRT failed to build an engine from {args.onnx} (its log above says why)")
    if args.timing_cache is not None:
        args.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        args.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized))


def build(args: argparse.Namespace) -> Path:
    """Build the engine as :func:`parse_args` describes; returns the engine path."""
    trt = _import_tensorrt()
    if not args.onnx.is_file():
        raise UserInputError(f"--onnx: no exported graph at {args.onnx}; export one first with "
                             f"fuller export --checkpoint CKPT --out {args.onnx}")
    import onnx

    onnx_bytes = args.onnx.read_bytes()
    model = onnx.load_from_string(onnx_bytes)
    metadata = read_metadata(model)
    shapes = profile_shapes(model, metadata)
    gpu_name, capability = current_gpu()
    register_plugins()
    if args.fp16:
        from fuller.export.fp16 import cast_to_fp16

        try:
            model = cast_to_fp16(model)
        except ValueError as exc:
            raise UserInputError(str(exc)) from exc
    engine = _build_serialized(trt, model, shapes, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(engine)
    write_sidecar(args.out, sidecar_record(tensorrt_version=trt.__version__, gpu_name=gpu_name,
                                           compute_capability=capability, precision="fp16" if args.fp16 else "fp32",
                                           metadata=metadata, onnx_bytes=onnx_bytes))
    return args.out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        engine = build(args)
    except UserInputError as exc:
        print(f"build_engine: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message
        return 2
    print(f"build_engine: wrote {engine} ({'fp16' if args.fp16 else 'fp32'}, strongly typed) and its record "
          f"{sidecar_path(engine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
