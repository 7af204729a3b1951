"""Building the TensorRT engine of the exported graph: `build_engine`, the library function behind
``python export/build_engine.py --fp16``, ``fuller build-engine`` and the ROS 2 node's first start.

Steps: register the ``fuller`` plugins, optionally cast the graph to float16 (`fp16.cast_to_fp16`;
an INT8 graph of ``fuller quantize`` is built as it is: its Q/DQ pairs are its precision),
lower the ops whose TensorRT form differs (`fuller.plugins.prepare_for_tensorrt`: a strided
``SparseSites`` as two single-launch plugins), parse it with TensorRT's ONNX parser into a
**strongly-typed** network (TensorRT 10 and 11: the graph's types are the engine's precision; 11
has no weakly-typed ``--fp16`` builder flag) with TF32 off (`precision_flags`), give the dynamic
BEV-pool geometry inputs an optimisation profile (0 to the frustum size the exporter wrote in the
metadata), build with the requested workspace and timing cache, and write the engine with its
sidecar record (`artifacts`). Everything but the build itself (metadata, profile shapes, precision
flags, sidecar, parser messages) is plain Python, importable and tested without TensorRT.
"""
from __future__ import annotations

from pathlib import Path

from fuller.errors import UserInputError
from fuller.plugins import prepare_for_tensorrt

from . import contract
from .artifacts import graph_precision, read_metadata, sidecar_record, write_sidecar
from .nvidia import current_gpu, import_tensorrt, register_plugins
from .tensorrt_qdq import qdq_violations


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
    geometry inputs may (P points, I <= P intervals): their dynamic dimension ranges from 0 to the
    frustum size recorded in the metadata (:func:`max_frustum_points`), tuned for that size; static
    dimensions keep their recorded value. The minimum is 0 because a calibration whose frustum has
    no point in the grid is legal (plugins/bev_pool/SPEC.md: the camera BEV is zeros) and TensorRT
    takes empty tensors (a dimension of length 0) as inputs."""
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
                                        for n in (0, max_points, max_points))
    return shapes


def precision_flags(fp16: bool, int8: bool = False) -> dict[str, bool]:
    """What decides the engine's arithmetic, recorded in its sidecar: the network is strongly typed
    (the graph's types are the engine's), the graph was cast to float16 or not, it carries INT8
    Q/DQ pairs (explicit quantisation: TensorRT runs INT8 where they say, and takes no INT8
    builder flag in a strongly-typed network), and TF32 is off.
    TensorRT enables TF32 by default, which rounds float32 convolution and matrix-multiply inputs to
    10-bit mantissas: a float32 engine would then miss the float32 parity thresholds, and the float32
    islands of a float16 graph are float32 for accuracy."""
    return {"strongly_typed": True, "fp16": fp16, "int8_qdq": int8, "tf32": False}


def format_parser_errors(parser) -> str:
    """One line for TensorRT's ONNX parser errors, each with its node's name and operator."""
    messages = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        name, op = error.node_name(), error.node_operator()
        where = f"node {name!r} ({op})" if name or op else f"node #{error.node()}"
        messages.append(f"{where}: {error.desc()}")
    return "; ".join(messages) if messages else "no error details"


def _build_serialized(trt, model, shapes: dict, flags: dict[str, bool], onnx_path: Path, workspace_gib: float,
                      timing_cache: Path | None, verbose: bool) -> bytes:
    """The TensorRT part: parse into a strongly-typed network, precision flags, profile, workspace,
    timing cache, build."""
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:  # pybind11 reports a null builder as TypeError
        raise UserInputError(f"TensorRT could not create a builder (no usable NVIDIA GPU or driver?): {exc}") from exc
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        raise UserInputError(f"TensorRT's ONNX parser rejected {onnx_path}: {format_parser_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not flags["tf32"]:  # on by default
        config.clear_flag(trt.BuilderFlag.TF32)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    if timing_cache is not None:
        cached = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cached), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserInputError(f"TensorRT failed to build an engine from {onnx_path} (its log above says why)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized))


def check_precision(model, onnx_path: Path, fp16: bool, int8: bool) -> None:
    """The build's precision matches the graph: ``int8`` exactly when the graph is the INT8 one of
    fuller quantize (metadata), not together with ``fp16``, and then with Q/DQ pairs that keep to
    TensorRT's rules (`tensorrt_qdq.qdq_violations`)."""
    if fp16 and int8:
        raise UserInputError("int8 and fp16 together: the INT8 graph is opset 17, whose QuantizeLinear takes float32 "
                             "only; build one or the other")
    is_int8 = graph_precision(read_metadata(model)) == contract.INT8
    if int8 and not is_int8:
        raise UserInputError(f"{onnx_path}: --int8 needs the INT8 graph; make it with fuller quantize --model "
                             f"{onnx_path} --data DIR")
    if is_int8 and not int8:
        raise UserInputError(f"{onnx_path} is an INT8 graph (Q/DQ pairs); build it with --int8")
    problems = qdq_violations(model) if int8 else []
    if problems:
        raise UserInputError(f"{onnx_path}: Q/DQ pairs TensorRT cannot build: {'; '.join(problems[:5])}"
                             + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def build_engine(onnx_path: str | Path, out: str | Path | None = None, *, fp16: bool = False, int8: bool = False,
                 workspace_gib: float = 4.0, timing_cache: str | Path | None = None, verbose: bool = False) -> Path:
    """Build ``out`` (default: the ONNX path with the suffix .engine) and its sidecar; returns ``out``.
    ``int8``: the graph is fuller quantize's (`check_precision`). Without TensorRT or an NVIDIA
    GPU: a `UserInputError` saying which is missing."""
    onnx_path = Path(onnx_path)
    out = onnx_path.with_suffix(".engine") if out is None else Path(out)
    if workspace_gib <= 0:
        raise UserInputError(f"workspace: expected a positive number of GiB, got {workspace_gib}")
    trt = import_tensorrt()
    if not onnx_path.is_file():
        raise UserInputError(f"{onnx_path}: no exported graph there; export one first with "
                             f"fuller export --checkpoint CKPT --out {onnx_path}")
    import onnx

    onnx_bytes = onnx_path.read_bytes()
    model = onnx.load_from_string(onnx_bytes)
    metadata = read_metadata(model)
    check_precision(model, onnx_path, fp16, int8)
    shapes = profile_shapes(model, metadata)
    gpu_name, capability = current_gpu()
    register_plugins()
    if fp16:
        from .fp16 import cast_to_fp16

        try:
            model = cast_to_fp16(model)
        except ValueError as exc:
            raise UserInputError(str(exc)) from exc
    model, _ = prepare_for_tensorrt(model)  # after the checks above: the lowered nodes have no ONNX schema
    flags = precision_flags(fp16, int8)
    engine = _build_serialized(trt, model, shapes, flags, onnx_path, workspace_gib,
                               None if timing_cache is None else Path(timing_cache), verbose)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(engine)
    write_sidecar(out, sidecar_record(tensorrt_version=trt.__version__, gpu_name=gpu_name,
                                      compute_capability=capability,
                                      precision="int8" if int8 else "fp16" if fp16 else "fp32",
                                      precision_flags=flags, metadata=metadata, onnx_bytes=onnx_bytes))
    return out
