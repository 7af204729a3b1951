"""INT8 by explicit quantisation (`fuller quantize`): the calibrated scales against NumPy on the
same activations, Q/DQ rounding against its closed form, TensorRT's Q/DQ rules, the layers kept
float, the refusals, and the INT8 graph in ONNX Runtime, parity and the engine build's checks."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install fuller[export])")
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

PERCENTILE = 99.9  # below the default, so the threshold is a percentile of many values, not the maximum
# One calibration frame: the quantiser's histogram of |x| then has exactly 2048 bins over that
# frame's range, so its percentile is NumPy's up to one bin. (Over several frames it extends the
# first frame's bins, which is the library's approximation, not this project's.)
FRAMES = 1


@pytest.fixture(scope="module")
def int8(small_onnx, synth_root, nusc, tmp_path_factory):
    from fuller.export.quantize import quantize

    out = tmp_path_factory.mktemp("int8") / "small.int8.onnx"
    report = quantize(small_onnx, synth_root, out, frames=FRAMES, method="percentile", percentile=PERCENTILE,
                      progress=False, nusc=nusc)
    return report, onnx.load(str(out))


def _constants(model) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _calibration_feeds(small_onnx, synth_root, nusc, split="mini_train", frames=FRAMES):
    """The graph inputs of the frames the quantiser calibrated on (same split, same picks)."""
    from fuller.data import NuScenesDataset
    from fuller.engine import Engine
    from fuller.engine.offline import frames as sample_frames
    from fuller.export.quantize import calibration_tokens

    engine = Engine.load(small_onnx)
    dataset = NuScenesDataset(engine.config, synth_root, split, nusc=nusc)
    feeds = []
    for _, calibration, sample in sample_frames(dataset, False, tokens=calibration_tokens(dataset, frames)):
        engine.update_calibration(calibration)
        feeds.append(engine.feeds(sample.images, sample.points))
    return feeds


def _run_with_outputs(model, names, feeds) -> list[dict[str, np.ndarray]]:
    """``model`` run in ONNX Runtime (fuller kernels, no rewrites) with ``names`` as extra outputs."""
    import onnxruntime

    from fuller.plugins import ort_session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), ort_session_options(),
                                           providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return [dict(zip(names, session.run(names, {k: v for k, v in f.items() if k in wanted}))) for f in feeds]


def _activation_pairs(model):
    """(tensor, scale, dequantized output) of every activation QuantizeLinear/DequantizeLinear pair."""
    constants = _constants(model)
    dq_of = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [(q.input[0], float(constants[q.input[1]]), dq_of[q.output[0]].output[0])
            for q in model.graph.node if q.op_type == "QuantizeLinear"]


def test_percentile_scales_equal_numpy_percentile_of_the_same_activations(int8, small_onnx, synth_root, nusc):
    """Each activation scale is the PERCENTILE-th percentile of |x| over the calibration frames /
    127 (symmetric INT8), computed here with NumPy from the float graph's own tensors: the smallest
    value with at least PERCENTILE % of the values at or below it (NumPy's inverted CDF). The
    quantiser reads it from a histogram of 2048 bins over [min |x|, max |x|] as the left edge of the
    bin it falls in, so its threshold may sit up to one bin below."""
    _, model = int8
    pairs = [(t, s) for t, s, _ in _activation_pairs(model)]
    assert len(pairs) > 20
    runs = _run_with_outputs(onnx.load(str(small_onnx)), [t for t, _ in pairs], _calibration_feeds(
        small_onnx, synth_root, nusc))
    checked = 0
    for tensor, scale in pairs:
        values = np.abs(np.concatenate([run[tensor].ravel() for run in runs]))
        if values.max() == 0:
            continue
        threshold = np.percentile(values, PERCENTILE, method="inverted_cdf")
        bin_width = (values.max() - values.min()) / 2048
        assert threshold - bin_width * 1.01 - 1e-6 <= scale * 127 <= threshold + 1e-6, (tensor, scale * 127, threshold)
        checked += 1
    assert checked > 20


def test_weights_are_int8_per_output_channel_absmax_over_127(int8, small_onnx):
    """Every quantised weight: one scale per output channel (axis 0 for Conv, 1 for ConvTranspose's
    (Cin, Cout, k, k) and MatMul's (K, N)), equal to that channel's max |w| / 127, and the INT8
    values are round-half-even(w / scale): the closed form."""
    from fuller.export.quantize import WEIGHTED_OPS

    _, model = int8
    float_weights = _constants(onnx.load(str(small_onnx)))
    constants = _constants(model)
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    checked = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or node.input[1] not in dq:
            continue
        weight_dq = dq[node.input[1]]
        quantized, scale = constants[weight_dq.input[0]], constants[weight_dq.input[1]]
        source = float_weights[weight_dq.input[0].removesuffix("_quantized")]
        axis = 0 if node.op_type == "Conv" else 1
        assert helper.get_attribute_value(next(a for a in weight_dq.attribute if a.name == "axis")) == axis
        absmax = np.abs(np.moveaxis(source, axis, 0).reshape(source.shape[axis], -1)).max(axis=1)
        np.testing.assert_allclose(scale, absmax / 127, rtol=1e-6, err_msg=node.name)
        shape = [1] * source.ndim
        shape[axis] = -1
        np.testing.assert_array_equal(quantized, np.rint(source / scale.reshape(shape)).astype(np.int8), node.name)
        checked += 1
    assert checked >= 10


def test_qdq_round_trip_equals_closed_form_rounding(int8, small_onnx, synth_root, nusc):
    """What ONNX Runtime computes for each activation pair, DequantizeLinear(QuantizeLinear(x)),
    equals clip(round-half-even(x / s), -128, 127) * s, saturated values included."""
    _, model = int8
    pairs = _activation_pairs(model)
    names = [t for t, _, _ in pairs] + [d for _, _, d in pairs]
    run = _run_with_outputs(model, names, _calibration_feeds(small_onnx, synth_root, nusc, "mini_val", 1))[0]
    saturated = 0
    for tensor, scale, dequantized in pairs:
        x = run[tensor]
        q = np.rint(x / np.float32(scale))
        saturated += int(np.sum((q > 127) | (q < -128)))
        np.testing.assert_array_equal(run[dequantized], np.clip(q, -128, 127).astype(np.float32) * np.float32(scale),
                                      err_msg=tensor)
    assert saturated > 0, "no value beyond the calibrated range: the clipping went unchecked"


def test_sensitive_layers_stay_float_and_every_other_weighted_layer_is_int8(int8, small_onnx):
    """The heads' last convolutions and the depth net (its logits feed the softmax) have no Q/DQ;
    every other Conv, ConvTranspose and MatMul reads DequantizeLinear outputs on both inputs."""
    from fuller.export.quantize import WEIGHTED_OPS

    report, model = int8
    float_graph = onnx.load(str(small_onnx)).graph
    map_convs = [n.name for n in float_graph.node if n.op_type == "Conv" and n.name.startswith("/model/map/")]
    expected = {f"/model/det/{h}/{h}.1/Conv" for h in ("heatmap", "reg", "height", "dim", "rot", "vel")}
    expected |= {map_convs[-1], "/model/camera/depthnet/Conv"}
    assert set(report.kept_float) == expected
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS:
            reads = [name in dequantized for name in node.input[:2]]
            assert reads == ([False, False] if node.name in expected else [True, True]), node.name
    assert report.quantized["MatMul"] == sum(n.op_type == "MatMul" for n in float_graph.node)


def test_keep_float_adds_named_layers_and_refuses_patterns_that_match_nothing(small_onnx):
    from fuller.errors import UserInputError
    from fuller.export.quantize import kept_float, sensitive_nodes

    graph = onnx.load(str(small_onnx)).graph
    lidar = {n.name for n in graph.node if n.op_type == "MatMul" and n.name.startswith("/model/lidar/")}
    kept = kept_float(graph, ("/model/lidar/*",))
    assert lidar and set(kept) == set(sensitive_nodes(graph)) | lidar
    with pytest.raises(UserInputError, match="--keep-float '/model/nowhere/\\*': matches none"):
        kept_float(graph, ("/model/nowhere/*",))


def test_int8_graph_keeps_to_tensorrt_rules_and_its_op_list(int8):
    """Only ops TensorRT's parser imports, and Q/DQ pairs as TensorRT's explicit quantisation takes
    them; an INT32 bias (the quantiser's default) or a non-zero zero point is named."""
    from fuller.engine.tensorrt_qdq import qdq_violations
    from fuller.export.tensorrt_ops import tensorrt_onnx_ops

    _, model = int8
    used = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    assert used <= tensorrt_onnx_ops(), sorted(used - tensorrt_onnx_ops())
    assert {"QuantizeLinear", "DequantizeLinear"} <= used
    assert qdq_violations(model) == []

    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    dq = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized"))
    broken.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.int32), "bias_int32"))
    dq.input[0] = "bias_int32"
    zero = next(i for i in broken.graph.initializer if i.name == next(
        n for n in broken.graph.node if n.op_type == "QuantizeLinear").input[2])
    zero.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(zero)), zero.name))
    problems = qdq_violations(broken)
    assert any("int32 constant" in p for p in problems) and any("zero point must be INT8 zeros" in p for p in problems)


def test_int8_graph_passes_polygraphy_lint(int8, tmp_path):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install fuller[export])")
    pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is not installed (polygraphy lint needs it)")
    tool = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    report = tmp_path / "lint.json"
    run = subprocess.run([tool, "check", "lint", str(int8[0].out), "-o", str(report)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lint = json.loads(report.read_text())
    assert lint["summary"]["failing"] == []
    assert [e for e in lint["lint_entries"] if "fuller:" not in e.get("message", "")] == []


def test_int8_graph_runs_in_onnxruntime_near_the_float_graph(int8, small_onnx, synth_root, nusc):
    """The INT8 graph loads with the fuller kernels, names itself apart from the float graph (its
    rows and result folders), and its map stays near the float graph's. Its sparse layers are not
    fused: ONNX Runtime runs their Q/DQ MatMuls as QLinearMatMul."""
    from fuller.engine import Engine

    report, _ = int8
    engine, reference = Engine.load(report.out), Engine.load(small_onnx)
    assert engine.backend.name == "onnxruntime-int8" and reference.backend.name == "onnxruntime"
    assert engine.backend.fused_layers == 0 and "INT8" in engine.describe()
    for feeds in _calibration_feeds(small_onnx, synth_root, nusc, "mini_val", 2):
        out, ref = engine.run(feeds), reference.run(feeds)
        assert all(np.isfinite(v).all() for v in out.values())
        assert np.abs(out["map_probs"] - ref["map_probs"]).mean() < 0.02


def test_calibration_refuses_a_split_without_frames_and_models_without_the_expected_inputs(small_onnx, synth_root,
                                                                                           nusc, tmp_path, int8):
    from fuller.engine import contract
    from fuller.errors import UserInputError
    from fuller.export.quantize import quantize

    with pytest.raises(UserInputError, match="no samples of split 'test'"):
        quantize(small_onnx, synth_root, tmp_path / "x.onnx", split="test", progress=False, nusc=nusc)
    with pytest.raises(UserInputError, match="--frames: expected a positive number"):
        quantize(small_onnx, synth_root, tmp_path / "x.onnx", frames=0, progress=False, nusc=nusc)

    source = onnx.load(str(small_onnx))
    other = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(other, tmp_path / "bare.onnx")
    with pytest.raises(UserInputError, match="no 'fuller.config' in the ONNX metadata"):
        quantize(tmp_path / "bare.onnx", synth_root, tmp_path / "x.onnx", progress=False, nusc=nusc)
    other.metadata_props.extend(source.metadata_props)
    onnx.save(other, tmp_path / "other.onnx")
    expected = contract.input_names(("camera", "lidar"))
    with pytest.raises(UserInputError, match=re.escape(f"graph inputs ['x'], expected {expected}")):
        quantize(tmp_path / "other.onnx", synth_root, tmp_path / "x.onnx", progress=False, nusc=nusc)
    with pytest.raises(UserInputError, match="already an INT8 graph"):
        quantize(int8[0].out, synth_root, tmp_path / "x.onnx", progress=False, nusc=nusc)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_quantize_then_parity_takes_metric_deltas_against_the_float_graph(small_onnx, small_checkpoint,
                                                                               synth_root, tmp_path, capsys):
    """``fuller quantize`` (entropy, the default) writes the INT8 graph beside the float one and
    records its source; ``fuller parity`` on it runs the float graph on the same frames, and its
    deltas are the INT8 metrics minus the float graph's, each read from its own metrics.json."""
    from fuller.cli import main
    from fuller.engine import contract

    float_graph = tmp_path / "fuller.onnx"
    shutil.copy(small_onnx, float_graph)
    assert main(["quantize", "--model", str(float_graph), "--data", synth_root, "--frames", "3"]) == 0
    printed = capsys.readouterr().out
    assert "calibration: entropy, 3 frames of split 'mini_train'" in printed and "| /model/camera/depthnet/Conv |" in printed
    int8_graph = tmp_path / "fuller.int8.onnx"
    record = json.loads({p.key: p.value for p in onnx.load(str(int8_graph)).metadata_props}[contract.META_INT8])
    assert record["float_graph"] == "fuller.onnx" and record["method"] == "entropy" and record["frames"] == 3

    out = tmp_path / "parity"
    code = main(["parity", "--checkpoint", str(small_checkpoint), "--model", str(int8_graph), "--data", synth_root,
                 "--out", str(out)])
    parity = json.loads((out / "parity.json").read_text())
    assert parity["metric_reference"] == "onnxruntime" and parity["boxes_gated"] is False
    metrics = {name: json.loads((out / name / "metrics.json").read_text()) for name in ("onnxruntime", "onnxruntime-int8")}
    expected = 100 * (metrics["onnxruntime-int8"]["map"]["mean_iou_max"] - metrics["onnxruntime"]["map"]["mean_iou_max"])
    assert parity["metric_deltas_points"]["mIoU"] == pytest.approx(expected)
    assert code == (1 if parity["failures"] else 0)

    float_graph.write_bytes(float_graph.read_bytes() + b"\0")  # no longer the graph it was quantised from
    assert main(["parity", "--checkpoint", str(small_checkpoint), "--model", str(int8_graph), "--data", synth_root,
                 "--out", str(out)]) == 2
    assert "is missing or has changed since quantisation; pass --float-model" in capsys.readouterr().err


def test_engine_build_checks_the_precision_against_the_graph(int8, small_onnx):
    """The checks `build_engine` runs before TensorRT builds (the front end runs them before
    TensorRT is imported): the flag matches the graph, and an INT8 graph keeps to the Q/DQ rules."""
    from fuller.engine.tensorrt_build import check_precision, precision_flags
    from fuller.errors import UserInputError
    from fuller.export.build_engine import check_int8_graph

    report, model = int8
    float_model = onnx.load(str(small_onnx))
    check_precision(model, report.out, fp16=False, int8=True)
    check_precision(float_model, small_onnx, fp16=True, int8=False)
    with pytest.raises(UserInputError, match="--int8 needs the INT8 graph"):
        check_precision(float_model, small_onnx, fp16=False, int8=True)
    with pytest.raises(UserInputError, match="is an INT8 graph .*build it with --int8"):
        check_precision(model, report.out, fp16=False, int8=False)
    with pytest.raises(UserInputError, match="int8 and fp16 together"):
        check_precision(model, report.out, fp16=True, int8=True)
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    zero = next(i for i in broken.graph.initializer if i.name == next(
        n for n in broken.graph.node if n.op_type == "QuantizeLinear").input[2])
    zero.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(zero)), zero.name))
    with pytest.raises(UserInputError, match="Q/DQ pairs TensorRT cannot build: .*zero point must be INT8 zeros"):
        check_precision(broken, report.out, fp16=False, int8=True)
    check_int8_graph(report.out)
    assert precision_flags(False, True) == {"strongly_typed": True, "fp16": False, "int8_qdq": True, "tf32": False}


def test_build_engine_int8_defaults_to_the_int8_graph_and_refuses_fp16_with_it(tmp_path, capsys):
    import fuller.export.build_engine as be

    args = be.parse_args(["--int8"])
    assert (be.graph_path(args), args.out) == (Path("exports/fuller.int8.onnx"), Path("exports/fuller.int8.engine"))
    assert be.parse_args(["--int8", "--onnx", "m.onnx"]).out == Path("m.engine")
    missing = be.parse_args(["--int8", "--onnx", str(tmp_path / "none.int8.onnx")])
    assert be.run(missing) == 2 and "no INT8 graph there; make one with fuller quantize" in capsys.readouterr().err


def test_each_quantised_node_reads_its_own_pair_and_onnx_runtime_keeps_them_apart(int8, tmp_path):
    """A tensor read by several quantised nodes gets one Q/DQ pair per node, so ONNX Runtime can
    fuse each convolution into QLinearConv (it needs a DequantizeLinear that feeds nothing else).
    The backend turns off the pass that would merge the pairs back; with it on, fewer fuse."""
    import onnxruntime

    from fuller.engine.backends.ort_backend import INT8_DISABLED_OPTIMIZERS
    from fuller.export.quantize import WEIGHTED_OPS
    from fuller.plugins import ort_session_options

    report, model = int8
    constants = _constants(model)
    weighted_readers: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS:
            weighted_readers[node.input[0]] = weighted_readers.get(node.input[0], 0) + 1
    activation_dqs = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
                      and n.input[0] not in constants]
    assert activation_dqs and all(weighted_readers.get(name, 0) <= 1 for name in activation_dqs)

    def fused(disabled):
        options = ort_session_options()
        options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
        onnxruntime.InferenceSession(str(report.out), options, providers=["CPUExecutionProvider"],
                                     disabled_optimizers=disabled)
        return sum(n.op_type == "QLinearConv" for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node)

    with_backend_options, with_merging = fused(list(INT8_DISABLED_OPTIMIZERS)), fused([])
    assert with_backend_options > with_merging, (with_backend_options, with_merging)
    print(f"QLinearConv: {with_backend_options} of {report.quantized['Conv']} (merged pairs: {with_merging})")
