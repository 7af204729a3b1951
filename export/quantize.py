"""INT8 by explicit quantisation: ``fuller quantize`` writes the exported graph again with
calibrated QuantizeLinear/DequantizeLinear (Q/DQ) pairs. That is the form TensorRT builds INT8
engines from (its implicit INT8 calibration is deprecated in TensorRT 10 and gone in 11), and ONNX
Runtime runs it on CPU with its integer kernels.

The library is ONNX Runtime's quantiser (`onnxruntime.quantization`): its calibrators and its Q/DQ
placement. NVIDIA's Model Optimizer also places Q/DQ by TensorRT's rules, but ``nvidia-modelopt[onnx]``
brings onnxruntime-gpu, CuPy and NumPy 2, and the nuScenes devkit needs NumPy < 2 (pip's dry run,
docs/deployment.md). What this module adds is what the quantiser cannot know about this graph:

* **Kernels.** The calibration session registers the fuller kernels (`CalibrationSession`). The
  quantiser's own session has none, so it cannot run BevPool or the sparse index ops.
* **Types.** The custom ops' outputs are typed first (`fuller.engine.onnx_graph`). Without that,
  shape inference stops at them, and the quantiser skips everything after them as untyped.
* **Frames.** Calibration runs on real samples of a split, spread evenly over it, through the
  runtime's own preprocessing. The default split is the training split, so validation stays
  held out.
* **TensorRT's rules** (`fuller.engine.tensorrt_qdq.qdq_violations` checks the result):
  - INT8 is symmetric, so every zero point is 0;
  - weights get one scale per output channel;
  - biases stay float. The quantiser's INT32 bias does not parse in TensorRT, and ONNX Runtime's
    CPU path fuses the same number of QLinearConv nodes without it;
  - Q/DQ pairs sit only around Conv, ConvTranspose and MatMul. These are the weighted layers
    TensorRT runs in INT8, and the sparse layers' GEMMs are MatMuls.
  - Each quantised node gets its own pair (``DedicatedQDQPair``): a tensor read by two
    convolutions is quantised twice, identically. ONNX Runtime fuses a convolution into
    QLinearConv only when its DequantizeLinear feeds nothing else; the ONNX Runtime backend keeps
    the pairs apart at load. TensorRT takes either form.
* **Sensitive layers stay float** (`sensitive_nodes`), plus any the user names.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from fuller.errors import UserInputError

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul")
METHODS = ("entropy", "percentile")
DEFAULT_FRAMES = 32
DEFAULT_PERCENTILE = 99.999


def int8_path(float_path: str | Path) -> Path:
    """Where ``fuller quantize`` writes by default: ``fuller.onnx`` -> ``fuller.int8.onnx``."""
    return Path(float_path).with_suffix(".int8.onnx")


def float_source(int8_graph: str | Path, given: str | Path | None = None) -> Path:
    """The float graph an INT8 graph was quantised from: ``given``, or the file its metadata names,
    next to it, if its SHA-256 still matches. Raises `UserInputError` saying what to pass otherwise."""
    from fuller.engine import contract
    from fuller.engine.artifacts import read_metadata

    if given is not None:
        return Path(given)
    int8_graph = Path(int8_graph)
    meta = read_metadata(onnx.load(str(int8_graph), load_external_data=False))
    try:
        record = json.loads(meta[contract.META_INT8])
        candidate = int8_graph.parent / record["float_graph"]
        digest = record["float_graph_sha256"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UserInputError(f"{int8_graph}: metadata {contract.META_INT8!r} does not name its float graph; "
                             "pass --float-model") from None
    if not candidate.is_file() or hashlib.sha256(candidate.read_bytes()).hexdigest() != digest:
        raise UserInputError(f"{int8_graph}: its float graph {candidate} is missing or has changed since "
                             "quantisation; pass --float-model")
    return candidate


def _last_weighted(graph: onnx.GraphProto, tensors) -> set[str]:
    """Names of the weighted nodes reached walking back from ``tensors`` through unweighted nodes."""
    producer = {out: node for node in graph.node for out in node.output}
    found, seen, stack = set(), set(), list(tensors)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in WEIGHTED_OPS:
            found.add(node.name)
        else:
            stack.extend(node.input)
    return found


def sensitive_nodes(graph: onnx.GraphProto) -> dict[str, str]:
    """The weighted layers that stay float, each with its reason. The rule reads the graph, so it
    needs no list of layer names:

    * **The last weighted layer before a graph output** (the heads' last convolutions): only
      decoding follows them. That means exp of log-sizes, atan2 of sin/cos, sigmoid of scores,
      and the map's sigmoid, so an INT8 step there becomes a step in box size, heading or score.
      With these in INT8, the tiny model emits non-finite boxes (docs/deployment.md).
    * **The layer that feeds a Softmax** (the depth net's logits): the softmax turns an INT8 step in
      a logit into a factor in the depth probabilities. On the tiny model this one costs nothing
      measurable either way; it is kept for deeper depth distributions.

    Box decoding itself (Exp, Atan, TopK, the heatmap's MaxPool) has no weights and is never quantised."""
    reasons = {name: "last weighted layer before an output (decoded into boxes, scores or map)"
               for name in _last_weighted(graph, [o.name for o in graph.output])}
    softmax_inputs = [name for node in graph.node if node.op_type == "Softmax" for name in node.input]
    reasons.update({name: "feeds a Softmax" for name in _last_weighted(graph, softmax_inputs)})
    return reasons


def kept_float(graph: onnx.GraphProto, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """`sensitive_nodes` plus the weighted nodes matching ``extra`` (names or shell patterns such
    as ``/model/camera/*``). A pattern that matches no weighted node is an error naming it."""
    weighted = [node.name for node in graph.node if node.op_type in WEIGHTED_OPS]
    kept = sensitive_nodes(graph)
    for pattern in extra:
        matches = fnmatch.filter(weighted, pattern)
        if not matches:
            raise UserInputError(f"--keep-float {pattern!r}: matches none of the {len(weighted)} Conv, ConvTranspose "
                                 f"and MatMul nodes (e.g. {weighted[:3]})")
        kept.update({name: kept.get(name, "listed by the user") for name in matches})
    return kept


def _check_model(model: onnx.ModelProto, path: Path):
    """The graph's config, after checking that it is a float graph of this project with the inputs
    its config's modalities call for."""
    from fuller.engine import contract
    from fuller.engine.artifacts import graph_precision, read_metadata
    from fuller.engine.backends.ort_backend import read_config

    cfg = read_config(model, path)
    if graph_precision(read_metadata(model)) == contract.INT8:
        raise UserInputError(f"{path}: already an INT8 graph (metadata {contract.META_PRECISION!r} = {contract.INT8!r}); "
                             "quantise the float graph that fuller export wrote")
    initializers = {init.name for init in model.graph.initializer}
    got = [i.name for i in model.graph.input if i.name not in initializers]
    expected = contract.input_names(cfg.model.modalities)
    if sorted(got) != sorted(expected):
        raise UserInputError(f"{path}: graph inputs {got}, expected {expected} (the inputs of a fuller export with "
                             f"modalities {list(cfg.model.modalities)})")
    return cfg


class _FullerSession:
    """The calibrator's inference session, with the fuller kernels registered. As in the
    quantiser's own session, graph optimisations are off, so that every tensor it calibrates
    is still there under its own name."""

    def create_inference_session(self):
        import onnxruntime

        from fuller.plugins import ort_session_options

        options = ort_session_options()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.infer_session = onnxruntime.InferenceSession(self.augmented_model_path, options,
                                                          providers=self.execution_providers)


def calibrator(method: str, model_path: Path, augmented_path: Path, percentile: float = DEFAULT_PERCENTILE):
    """ONNX Runtime's histogram calibrator for ``method``, symmetric (TensorRT's INT8), over the
    inputs and outputs of the weighted ops, running on the fuller kernels. ``entropy`` picks the
    threshold with the least KL divergence between the float and quantised histograms (TensorRT's
    recipe); ``percentile`` takes that percentile of |x|."""
    from onnxruntime.quantization.calibrate import EntropyCalibrater, PercentileCalibrater

    if method == "entropy":
        cls = type("EntropyCalibration", (_FullerSession, EntropyCalibrater), {})
        cal = cls(model_path, list(WEIGHTED_OPS), str(augmented_path), symmetric=True)
    elif method == "percentile":
        if not 0 < percentile <= 100:
            raise UserInputError(f"--percentile: expected a value in (0, 100], got {percentile:g}")
        cls = type("PercentileCalibration", (_FullerSession, PercentileCalibrater), {})
        cal = cls(model_path, list(WEIGHTED_OPS), str(augmented_path), symmetric=True, percentile=percentile)
    else:
        raise UserInputError(f"--method: expected one of {list(METHODS)}, got {method!r}")
    cal.augment_graph()
    cal.create_inference_session()
    return cal


class _OneFrame:
    """A `CalibrationDataReader` over one frame's feeds. The calibrators stack each call's frames
    into one array per tensor, and the sparse layers' row counts differ between frames, so they
    get one frame per call."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        self.feeds = feeds

    def get_next(self):
        feeds, self.feeds = self.feeds, None
        return feeds


def calibration_tokens(dataset, frames: int) -> list[str]:
    """``frames`` sample tokens spread evenly over the split, in order (all of them if it has fewer)."""
    if frames < 1:
        raise UserInputError(f"--frames: expected a positive number of calibration frames, got {frames}")
    samples = dataset.samples
    picks = np.unique(np.linspace(0, len(samples) - 1, min(frames, len(samples))).round().astype(int))
    return [samples[i] for i in picks]


@contextlib.contextmanager
def _quiet():
    """The quantiser prints per calibration call and logs a pre-processing hint. Its pre-processing
    (symbolic shape inference, ONNX Runtime's optimiser) cannot run on a graph of custom ops, and
    the exporter already folds batch norms into the convolutions."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@dataclass
class QuantizeReport:
    out: Path
    method: str
    split: str
    frames: int
    quantized: dict[str, int]  # op type -> weighted nodes in INT8
    kept_float: dict[str, str]  # node -> why it stayed float
    record: dict = field(default_factory=dict)  # what the INT8 graph's metadata records

    def table(self) -> str:
        lines = [f"calibration: {self.method}, {self.frames} frames of split {self.split!r}",
                 "INT8 (Q/DQ on inputs and outputs): " + ", ".join(f"{n} {op}" for op, n in self.quantized.items()),
                 f"kept float: {len(self.kept_float)}", ""]
        lines += ["| node | why |", "|---|---|"] + [f"| {name} | {why} |" for name, why in sorted(self.kept_float.items())]
        return "\n".join(lines)


def quantize(model_path: str | Path, data_root: str | Path, out: str | Path | None = None, *, split: str | None = None,
             frames: int = DEFAULT_FRAMES, method: str = "entropy", percentile: float = DEFAULT_PERCENTILE,
             keep_float: tuple[str, ...] = (), progress: bool = True, nusc=None) -> QuantizeReport:
    """Calibrate ``model_path`` (a float graph from fuller export) on ``frames`` samples of
    ``split`` (default: the config's training split) of the dataset at ``data_root``, write the
    Q/DQ graph to ``out`` (default `int8_path`) and return what was done."""
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from fuller.data import NuScenesDataset
    from fuller.engine import Engine, contract
    from fuller.engine.offline import frames as sample_frames
    from fuller.engine.onnx_graph import declare_custom_outputs, name_nodes
    from fuller.plugins import register_onnx_schemas

    from fuller.engine.tensorrt_qdq import qdq_violations

    model_path = Path(model_path)
    out = int8_path(model_path) if out is None else Path(out)
    if method not in METHODS:
        raise UserInputError(f"--method: expected one of {list(METHODS)}, got {method!r}")
    try:
        source = model_path.read_bytes()
        model = onnx.load_from_string(source)
    except FileNotFoundError:
        raise UserInputError(f"{model_path}: no such graph; export one with fuller export") from None
    except Exception as exc:  # protobuf's DecodeError: not an ONNX file
        raise UserInputError(f"{model_path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    cfg = _check_model(model, model_path)
    split = split or cfg.data.train_split
    dataset = NuScenesDataset(cfg, data_root, split, nusc=nusc)
    tokens = calibration_tokens(dataset, frames)
    name_nodes(model.graph)
    declare_custom_outputs(model.graph)
    kept = kept_float(model.graph, tuple(keep_float))

    engine = Engine.load(model_path)  # the runtime's preprocessing, exactly as on a vehicle
    with tempfile.TemporaryDirectory(prefix="fuller-quantize-") as tmp:
        prepared, cache = Path(tmp) / "prepared.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, prepared)
        cal = calibrator(method, prepared, Path(tmp) / "augmented.onnx", percentile)
        wanted = {i.name for i in cal.infer_session.get_inputs()}
        with _quiet():
            for _, calibration, sample in sample_frames(dataset, progress, "calibrate", tokens):
                engine.update_calibration(calibration)
                feeds = engine.feeds(sample.images, sample.points)
                cal.collect_data(_OneFrame({k: v for k, v in feeds.items() if k in wanted}))
            save_tensors_data(cal.compute_data(), cache)
            quantize_static(
                str(prepared), str(Path(tmp) / "int8.onnx"), None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(WEIGHTED_OPS), per_channel=True, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=sorted(kept),
                calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                               "DedicatedQDQPair": True},
                calibration_cache_path=str(cache))
        quantized_model = onnx.load(Path(tmp) / "int8.onnx")

    dequantized = {name for node in quantized_model.graph.node if node.op_type == "DequantizeLinear"
                   for name in node.output}
    quantized: dict[str, int] = {}
    for node in quantized_model.graph.node:
        if node.op_type in WEIGHTED_OPS and node.input[0] in dequantized:
            quantized[node.op_type] = quantized.get(node.op_type, 0) + 1
    record = {"library": f"onnxruntime.quantization {ort_version}", "method": method, "split": split,
              "frames": len(tokens), "kept_float": dict(sorted(kept.items())),
              "float_graph": model_path.name, "float_graph_sha256": hashlib.sha256(source).hexdigest()}
    if method == "percentile":
        record["percentile"] = percentile
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({contract.META_PRECISION: contract.INT8, contract.META_INT8: json.dumps(record)})
    del quantized_model.metadata_props[:]
    for key, value in meta.items():
        quantized_model.metadata_props.add(key=key, value=value)
    register_onnx_schemas()
    onnx.checker.check_model(quantized_model)
    problems = qdq_violations(quantized_model)
    if problems:
        raise RuntimeError(f"the quantised graph breaks TensorRT's Q/DQ rules: {'; '.join(problems)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    onnx.save(quantized_model, partial)
    os.replace(partial, out)
    return QuantizeReport(out, method, split, len(tokens), quantized, kept, record)
