"""The sparse convolution as index ops plus standard ONNX (plugins/sparse_conv/SPEC.md): the float64
layer reference against a dense conv3d; the index ops (CPU kernels, ONNX Runtime kernels) composed
with Gather + MatMul against the reference, and their rulebook against a dict lookup; the torch ops'
composition against spconv's own layers, which the exporter replaces."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fuller.plugins.sparse_conv.reference import ConvGeometry, sparse_conv3d_reference
from fuller.plugins.sparse_conv.rulebook import capacity, keys_to_coords, sparse_rulebook, sparse_sites, taps

SHAPE = (9, 7, 5)
CASES = {  # name: (kernel, stride, padding, subm)
    "subm3": ((3, 3, 3), (1, 1, 1), (1, 1, 1), True),
    "down3": ((3, 3, 3), (2, 2, 2), (1, 1, 1), False),
    "down3_z0": ((3, 3, 3), (2, 2, 2), (1, 1, 0), False),
    "xy1_z2": ((3, 3, 3), (1, 1, 2), (1, 1, 1), False),
    "out113": ((1, 1, 3), (1, 1, 2), (0, 0, 1), False),
}


def random_voxels(rng, n, rows, batch=2, shape=SHAPE, cin=4):
    """``n`` distinct sites over ``batch`` samples in key order (the SPEC's contract), padded to
    ``rows`` (coords -1, features noise)."""
    keys = np.sort(rng.choice(batch * int(np.prod(shape)), n, replace=False))
    coords = np.full((rows, 4), -1, np.int32)
    coords[:n] = keys_to_coords(keys, shape)
    features = rng.normal(size=(rows, cin)).astype(np.float32)  # padding rows hold garbage on purpose
    return features, coords, np.array([n], np.int32)


def geometry(name, n_rows, out_capacity=None):
    k, s, p, subm = CASES[name]
    g = ConvGeometry(k, s, p, SHAPE, subm, n_rows)
    return ConvGeometry(k, s, p, SHAPE, subm, n_rows if subm else (out_capacity or capacity(n_rows, g, 2)))


def weights(rng, kernel, cin=4, cout=6):
    return (rng.normal(size=(*kernel, cin, cout)).astype(np.float32),
            rng.normal(size=cout).astype(np.float32))


@pytest.mark.parametrize("name", CASES)
def test_reference_equals_dense_conv3d(name):
    """The reference against torch's dense conv3d in float64 on the scattered grid: equal at every
    output site, and the output sites are exactly where the dense window holds an active input
    (for subm: the input sites)."""
    rng = np.random.default_rng(1)
    features, coords, count = random_voxels(rng, 60, 60, batch=2)
    g = geometry(name, 60)
    w, b = weights(rng, g.kernel)
    out, out_coords, out_count = sparse_conv3d_reference(features, coords, count, w, b, g)
    m = int(out_count[0])

    dense = torch.zeros(2, 4, *SHAPE, dtype=torch.float64)
    active = torch.zeros(2, 1, *SHAPE, dtype=torch.float64)
    for (bi, x, y, z), f in zip(coords[:60], features[:60]):
        dense[bi, :, x, y, z] = torch.from_numpy(f.astype(np.float64))
        active[bi, 0, x, y, z] = 1
    weight = torch.from_numpy(w.astype(np.float64)).permute(4, 3, 0, 1, 2)  # (out, in, kx, ky, kz)
    conv = torch.nn.functional.conv3d(dense, weight, stride=g.stride, padding=g.padding)
    reach = torch.nn.functional.conv3d(active, torch.ones(1, 1, *g.kernel, dtype=torch.float64), stride=g.stride,
                                       padding=g.padding)[:, 0]
    sites = active[:, 0] > 0 if g.subm else reach > 0
    want = {tuple(int(v) for v in idx) for idx in torch.nonzero(sites)}
    got = {tuple(int(v) for v in row) for row in out_coords[:m]}
    assert got == want
    for row, (bi, x, y, z) in enumerate(out_coords[:m]):
        np.testing.assert_allclose(out[row], conv[bi, :, x, y, z].numpy() + b, rtol=1e-9, atol=1e-9)
    assert (out[m:] == 0).all() and (out_coords[m:] == -1).all()


def standard_layer(features, neighbours, w):
    """The exported graph's arithmetic (SPEC.md): a Gather of each site's neighbourhood from the rows
    plus a zero row, one GEMM with the (taps * Cin, Cout) filter."""
    rows = np.concatenate([features, np.zeros((1, features.shape[1]), features.dtype)])
    return rows[neighbours].reshape(len(neighbours), neighbours.shape[1] * w.shape[3]) @ w.reshape(-1, w.shape[-1])


def fused_layer(features, neighbours, w):
    """ONNX Runtime's fused kernel: per tap, only the sites with a neighbour there."""
    from fuller.plugins.sparse_conv.cpu_kernels import gather_gemm

    return gather_gemm(features, neighbours, w.reshape(-1, w.shape[-1]), np.zeros(w.shape[-1], np.float32))


@pytest.mark.parametrize("layer", [standard_layer, fused_layer], ids=["standard", "fused"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n", [0, 1, 70])
def test_index_ops_compose_to_the_reference(layer, name, n):
    rng = np.random.default_rng(n + 7)
    features, coords, count = random_voxels(rng, n, 80)
    g = geometry(name, 80)
    w, b = weights(rng, g.kernel)
    want, want_coords, want_count = sparse_conv3d_reference(features, coords, count, w, b, g)
    sites, sites_count = sparse_sites(coords, count, g)
    out = layer(features, sparse_rulebook(coords, count, sites, g), w) + b
    m = int(want_count[0])
    assert sites.dtype == np.int32 and sites_count.tolist() == [m] == [len(sites)]
    assert out.dtype == np.float32 and out.shape == (m, w.shape[-1])
    np.testing.assert_array_equal(sites, want_coords[:m])
    np.testing.assert_allclose(out, want[:m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_rulebook_against_a_dict_of_sites(name):
    """Every (site, tap) entry is the row found by looking its coordinate up in a dict, or N."""
    rng = np.random.default_rng(12)
    features, coords, count = random_voxels(rng, 50, 64)
    g = geometry(name, 64)
    sites, _ = sparse_sites(coords, count, g)
    table = sparse_rulebook(coords, count, sites, g)
    rows = {tuple(c): r for r, c in enumerate(coords[:50].tolist())}
    assert table.shape == (len(sites), g.taps) and table.dtype == np.int32
    for m, (bi, *o) in enumerate(sites.tolist()):
        for t, tap in enumerate(taps(g)):
            p = tuple(o[a] * g.stride[a] - g.padding[a] + tap[a] for a in range(3))
            assert table[m, t] == rows.get((bi, *p), 64)


@pytest.mark.parametrize("shape", [(9, 7, 5), (64, 48, 40)], ids=["dense", "sparse"])
def test_strided_sites_on_dense_and_sparse_grids(shape):
    """The strided sites against the reference where the grid has few cells per candidate site and
    where it has thousands (the kernel's two ways of making the sites unique)."""
    rng = np.random.default_rng(21)
    features, coords, count = random_voxels(rng, 30, 30, shape=shape)
    g = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), shape, False, 30 * 8)
    w, b = weights(rng, g.kernel)
    _, want, want_count = sparse_conv3d_reference(features, coords, count, w, b, g)
    sites, sites_count = sparse_sites(coords, count, g)
    np.testing.assert_array_equal(sites, want[: int(want_count[0])])
    assert sites_count.tolist() == want_count.tolist()


def test_subm_sites_compact_the_padded_list():
    rng = np.random.default_rng(13)
    _, coords, count = random_voxels(rng, 17, 40)
    sites, sites_count = sparse_sites(coords, count, geometry("subm3", 40))
    np.testing.assert_array_equal(sites, coords[:17])
    assert sites_count.tolist() == [17]


def test_capacity_cut_keeps_the_first_sites_in_key_order():
    rng = np.random.default_rng(4)
    _, coords, count = random_voxels(rng, 40, 40)
    full, _ = sparse_sites(coords, count, geometry("down3", 40))
    cut, cut_count = sparse_sites(coords, count, geometry("down3", 40, out_capacity=10))
    assert len(full) > 10 and cut_count.tolist() == [10]
    np.testing.assert_array_equal(cut, full[:10])


def test_capacity_bound_is_never_exceeded():
    """The exporter's capacity (SPEC) is an upper bound: a dense block of inputs, the worst case."""
    keys = np.arange(2 * int(np.prod(SHAPE)))
    coords = keys_to_coords(keys, SHAPE)
    for name in CASES:
        g = geometry(name, len(keys))
        unclipped = ConvGeometry(g.kernel, g.stride, g.padding, SHAPE, g.subm, len(keys) if g.subm else 10**6)
        n_sites = len(sparse_sites(coords, np.array([len(keys)], np.int32), unclipped)[0])
        assert n_sites <= g.out_capacity, name


@pytest.mark.parametrize("bad, message", [
    (lambda c: c.__setitem__((0, 1), 9), "outside"),
    (lambda c: c.__setitem__(1, c[0]), "row 1 .* key order"),
    (lambda c: c.__setitem__(slice(2, 4), c[[3, 2]]), "row 3 .* key order"),
])
@pytest.mark.parametrize("op", ["sites", "rulebook"])
def test_bad_coords_name_the_row(bad, message, op):
    rng = np.random.default_rng(6)
    _, coords, count = random_voxels(rng, 10, 10)
    g = geometry("subm3", 10)
    sites = coords.copy()
    bad(coords)
    with pytest.raises(ValueError, match=message):
        sparse_sites(coords, count, g) if op == "sites" else sparse_rulebook(coords, count, sites, g)


def test_bad_attributes_and_shapes_are_named():
    with pytest.raises(ValueError, match="subm"):
        ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), SHAPE, True, 10)
    with pytest.raises(ValueError, match="kernel"):
        ConvGeometry((3, 0, 3), (1, 1, 1), (1, 1, 1), SHAPE, False, 10)
    rng = np.random.default_rng(7)
    _, coords, count = random_voxels(rng, 10, 10)
    g = geometry("subm3", 10)
    with pytest.raises(ValueError, match="count"):
        sparse_sites(coords, np.array([11], np.int32), g)
    with pytest.raises(ValueError, match="out_capacity"):
        sparse_sites(coords, count, geometry("subm3", 12))
    with pytest.raises(ValueError, match="sites: expected"):
        sparse_rulebook(coords, count, coords[:, :3], g)
    with pytest.raises(ValueError, match="sites: row 0"):
        sparse_rulebook(coords, count, np.array([[0, 9, 0, 0]], np.int32), g)


def test_attributes_round_trip():
    g = geometry("down3_z0", 50)
    assert ConvGeometry.from_attributes(**g.attributes()) == g
    rulebook = ConvGeometry.from_attributes(**g.attributes(sites=False))
    assert (rulebook.kernel, rulebook.stride, rulebook.padding, rulebook.shape) == (g.kernel, g.stride, g.padding,
                                                                                     g.shape)


@pytest.mark.parametrize("name", ["subm3", "down3", "out113"])
def test_torch_ops_composed_as_exported_match_spconv(name):
    """The same filter in spconv's layer and in the exporter's composition of the torch ops: same
    output sites, same features."""
    spconv = pytest.importorskip("spconv.pytorch")
    import fuller.plugins.sparse_conv.torch_op  # noqa: F401
    import fuller.train.model.spconv_compat  # noqa: F401
    from fuller.export.lidar import ExportSparseEncoder

    rng = np.random.default_rng(8)
    features, coords, count = random_voxels(rng, 70, 90)
    g = geometry(name, 90)
    layer_type = spconv.SubMConv3d if g.subm else spconv.SparseConv3d
    layer = layer_type(4, 6, g.kernel, stride=g.stride, padding=g.padding, bias=True)
    attrs = (list(g.kernel), list(g.stride), list(g.padding), list(g.shape))
    with torch.no_grad():
        x = spconv.SparseConvTensor(torch.from_numpy(features[:70]), torch.from_numpy(coords[:70]), list(SHAPE), 2)
        ref = layer(x)
        w = layer.weight.permute(1, 2, 3, 4, 0).reshape(-1, 6)  # spconv (out, kx, ky, kz, in) -> (taps * in, out)
        c, n = torch.from_numpy(coords), torch.from_numpy(count)
        sites, sites_count = torch.ops.fuller.sparse_sites(c, n, *attrs, g.subm, g.out_capacity)
        neighbours = torch.ops.fuller.sparse_rulebook(c, n, sites, *attrs)
        out = ExportSparseEncoder._conv(torch.from_numpy(features), neighbours, w, layer.bias, 4)
    assert int(sites_count[0]) == len(sites) == len(ref.indices)
    mine = {tuple(c.tolist()): f for c, f in zip(sites, out)}
    for c, f in zip(ref.indices, ref.features):
        torch.testing.assert_close(mine[tuple(c.tolist())], torch.relu(f), rtol=1e-5, atol=1e-5)


def layer_model(features_shape, coords_shape, w, b, g):
    """A one-layer ONNX graph as the exporter writes it (SparseSites, SparseRulebook, Reshape, Concat,
    Gather, Reshape, MatMul, Add), fully checked with the schemas."""
    import onnx
    from onnx import TensorProto, helper

    from fuller.plugins import register_onnx_schemas

    register_onnx_schemas()
    cin, cout = w.shape[3], w.shape[4]
    inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, list(features_shape)),
              helper.make_tensor_value_info("coords", TensorProto.INT32, list(coords_shape)),
              helper.make_tensor_value_info("count", TensorProto.INT32, [1])]
    inits = [onnx.numpy_helper.from_array(w.reshape(-1, cout), "weight"), onnx.numpy_helper.from_array(b, "bias"),
             onnx.numpy_helper.from_array(np.zeros((1, cin), np.float32), "zero_row"),
             onnx.numpy_helper.from_array(np.array([-1, g.taps * cin], np.int64), "shape"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat_shape")]
    nodes = [helper.make_node("SparseSites", ["coords", "count"], ["sites", "sites_count"], domain="fuller",
                              **g.attributes()),
             helper.make_node("SparseRulebook", ["coords", "count", "sites"], ["neighbours"], domain="fuller",
                              **g.attributes(sites=False)),
             helper.make_node("Concat", ["features", "zero_row"], ["rows"], axis=0),
             helper.make_node("Reshape", ["neighbours", "flat_shape"], ["flat_neighbours"]),
             helper.make_node("Gather", ["rows", "flat_neighbours"], ["gathered"], axis=0),
             helper.make_node("Reshape", ["gathered", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weight"], ["product"]),
             helper.make_node("Add", ["product", "bias"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["sites", cout]),
               helper.make_tensor_value_info("sites", TensorProto.INT32, ["sites", 4]),
               helper.make_tensor_value_info("sites_count", TensorProto.INT32, [1])]
    model = helper.make_model(helper.make_graph(nodes, "sparse_layer", inputs, outputs, inits), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("fuller", 1)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def ort_layer():
    """Runs `layer_model` in ONNX Runtime, as exported or with the backend's fused gather-GEMM."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install fuller[export])")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install fuller[export])")
    pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")
    from fuller.plugins import ort_session_options, prepare_for_onnxruntime

    options = ort_session_options()

    def run(features, coords, count, w, b, g, fused):
        model = layer_model(features.shape, coords.shape, w, b, g)
        if fused:
            model, rewritten = prepare_for_onnxruntime(model)
            assert rewritten == 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"features": features, "coords": coords, "count": count})

    return run


@pytest.mark.parametrize("fused", [False, True], ids=["standard", "fused"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n", [0, 45])
def test_onnxruntime_layer_matches_reference(ort_layer, name, n, fused):
    rng = np.random.default_rng(n + 11)
    features, coords, count = random_voxels(rng, n, 50)
    g = geometry(name, 50)
    w, b = weights(rng, g.kernel)
    want, want_coords, want_count = sparse_conv3d_reference(features, coords, count, w, b, g)
    out, sites, sites_count = ort_layer(features, coords, count, w, b, g, fused)
    m = int(want_count[0])
    np.testing.assert_array_equal(sites, want_coords[:m])
    np.testing.assert_array_equal(sites_count, want_count)
    np.testing.assert_allclose(out, want[:m], rtol=1e-5, atol=1e-5)


FIRST_FRAME = """
import sys
import numpy as np
import onnxruntime
sys.path.insert(0, {tests!r})
from test_sparse_conv import geometry, layer_model, random_voxels, weights
from fuller.plugins import ort_session_options, prepare_for_onnxruntime
from fuller.plugins.sparse_conv import cpu_kernels

options = ort_session_options()
loops = (cpu_kernels.rulebook_table, cpu_kernels.strided_site_keys, cpu_kernels.gather_gemm)
before = [list(f.signatures) for f in loops]
features, coords, count = random_voxels(np.random.default_rng(3), 40, 50)
for name in ("subm3", "down3"):
    g = geometry(name, 50)
    w, b = weights(np.random.default_rng(4), g.kernel)
    model, _ = prepare_for_onnxruntime(layer_model(features.shape, coords.shape, w, b, g))
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {{"features": features, "coords": coords, "count": count}})
after = [list(f.signatures) for f in loops]
print("compiled at load:", [len(s) for s in before], "after a frame:", [len(s) for s in after])
sys.exit(0 if before == after and all(before) else 1)
"""


def test_onnxruntime_kernels_compile_at_load_not_on_the_first_frame():
    """Registering the ONNX Runtime kernels compiles every loop for the argument types a frame
    passes them: running fused layers afterwards (in a fresh process) adds no signature, which
    would otherwise be compiled during the first frame."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")
    script = FIRST_FRAME.format(tests=str(Path(__file__).parent))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
