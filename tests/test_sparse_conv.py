"""fuller::SparseConv3d: the float64 reference against a dense conv3d, and every implementation
(NumPy kernel, torch op, ONNX Runtime kernel) against the reference; the torch op also against
spconv's own layers, which the exporter replaces."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fuller.plugins.sparse_conv.reference import ConvGeometry, sparse_conv3d_reference
from fuller.plugins.sparse_conv.rulebook import capacity, keys_to_coords, sparse_conv3d

SHAPE = (9, 7, 5)
CASES = {  # name: (kernel, stride, padding, subm)
    "subm3": ((3, 3, 3), (1, 1, 1), (1, 1, 1), True),
    "down3": ((3, 3, 3), (2, 2, 2), (1, 1, 1), False),
    "down3_z0": ((3, 3, 3), (2, 2, 2), (1, 1, 0), False),
    "xy1_z2": ((3, 3, 3), (1, 1, 2), (1, 1, 1), False),
    "out113": ((1, 1, 3), (1, 1, 2), (0, 0, 1), False),
}


def random_voxels(rng, n, rows, batch=2, shape=SHAPE, cin=4):
    """``n`` distinct sites over ``batch`` samples, padded to ``rows`` (coords -1, features noise)."""
    keys = rng.choice(batch * int(np.prod(shape)), n, replace=False)
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


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n", [0, 1, 70])
def test_numpy_kernel_matches_reference(name, n):
    rng = np.random.default_rng(n + 7)
    features, coords, count = random_voxels(rng, n, 80)
    g = geometry(name, 80)
    w, b = weights(rng, g.kernel)
    want = sparse_conv3d_reference(features, coords, count, w, b, g)
    got = sparse_conv3d(features, coords, count, w, b, g)
    assert got[0].dtype == np.float32
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_float16_accumulates_in_float32():
    rng = np.random.default_rng(3)
    features, coords, count = random_voxels(rng, 50, 50)
    g = geometry("subm3", 50)
    w, b = weights(rng, g.kernel)
    got = sparse_conv3d(features.astype(np.float16), coords, count, w.astype(np.float16), b.astype(np.float16), g)
    want = sparse_conv3d_reference(features.astype(np.float16), coords, count, w.astype(np.float16),
                                   b.astype(np.float16), g)
    assert got[0].dtype == np.float16
    # only the final cast to float16 separates the two: half an ulp of the largest value
    np.testing.assert_allclose(got[0].astype(np.float64), want[0], rtol=1e-3, atol=np.abs(want[0]).max() * 1e-3)


def test_capacity_cut_keeps_the_first_sites_in_key_order():
    rng = np.random.default_rng(4)
    features, coords, count = random_voxels(rng, 40, 40)
    full = geometry("down3", 40)
    cut = geometry("down3", 40, out_capacity=10)
    w, b = weights(rng, full.kernel)
    a = sparse_conv3d(features, coords, count, w, b, full)
    c = sparse_conv3d(features, coords, count, w, b, cut)
    assert int(a[2][0]) > 10 and int(c[2][0]) == 10
    np.testing.assert_array_equal(c[1], a[1][:10])
    np.testing.assert_allclose(c[0], a[0][:10], rtol=1e-5, atol=1e-6)


def test_capacity_bound_is_never_exceeded():
    """The exporter's capacity (SPEC) is an upper bound: a dense block of inputs, the worst case."""
    rng = np.random.default_rng(5)
    keys = np.arange(2 * int(np.prod(SHAPE)))
    coords = keys_to_coords(keys, SHAPE)
    features = rng.normal(size=(len(keys), 4)).astype(np.float32)
    for name in CASES:
        g = geometry(name, len(keys))
        w, b = weights(rng, g.kernel)
        unclipped = ConvGeometry(g.kernel, g.stride, g.padding, SHAPE, g.subm, len(keys) if g.subm else 10**6)
        n_sites = int(sparse_conv3d(features, coords, np.array([len(keys)], np.int32), w, b, unclipped)[2][0])
        assert n_sites <= g.out_capacity, name


@pytest.mark.parametrize("bad, message", [
    (lambda c: c.__setitem__((0, 1), 9), "outside"),
    (lambda c: c.__setitem__(1, c[0]), "more than one row"),
])
def test_bad_coords_name_the_row(bad, message):
    rng = np.random.default_rng(6)
    features, coords, count = random_voxels(rng, 10, 10)
    bad(coords)
    g = geometry("subm3", 10)
    w, b = weights(rng, g.kernel)
    with pytest.raises(ValueError, match=message):
        sparse_conv3d(features, coords, count, w, b, g)


def test_bad_attributes_and_shapes_are_named():
    with pytest.raises(ValueError, match="subm"):
        ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), SHAPE, True, 10)
    with pytest.raises(ValueError, match="kernel"):
        ConvGeometry((3, 0, 3), (1, 1, 1), (1, 1, 1), SHAPE, False, 10)
    rng = np.random.default_rng(7)
    features, coords, count = random_voxels(rng, 10, 10)
    g = geometry("subm3", 10)
    w, b = weights(rng, g.kernel)
    with pytest.raises(ValueError, match="count"):
        sparse_conv3d(features, coords, np.array([11], np.int32), w, b, g)
    with pytest.raises(ValueError, match="weight"):
        sparse_conv3d(features, coords, count, w[:2], b, g)


def test_attributes_round_trip():
    g = geometry("down3_z0", 50)
    assert ConvGeometry.from_attributes(**g.attributes()) == g


@pytest.mark.parametrize("name", ["subm3", "down3", "out113"])
def test_torch_op_matches_spconv(name):
    """The same filter in spconv's layer and in the op: same output sites, same features."""
    spconv = pytest.importorskip("spconv.pytorch")
    import fuller.plugins.sparse_conv.torch_op  # noqa: F401
    import fuller.train.model.spconv_compat  # noqa: F401

    rng = np.random.default_rng(8)
    features, coords, count = random_voxels(rng, 70, 90)
    g = geometry(name, 90)
    layer_type = spconv.SubMConv3d if g.subm else spconv.SparseConv3d
    layer = layer_type(4, 6, g.kernel, stride=g.stride, padding=g.padding, bias=True)
    with torch.no_grad():
        x = spconv.SparseConvTensor(torch.from_numpy(features[:70]), torch.from_numpy(coords[:70]), list(SHAPE), 2)
        ref = layer(x)
        w = layer.weight.permute(1, 2, 3, 4, 0).contiguous()  # spconv (out, kx, ky, kz, in)
        out, out_coords, out_count = torch.ops.fuller.sparse_conv3d(
            torch.from_numpy(features), torch.from_numpy(coords), torch.from_numpy(count), w, layer.bias,
            list(g.kernel), list(g.stride), list(g.padding), list(g.shape), g.subm, g.out_capacity)
    m = int(out_count[0])
    assert m == len(ref.indices)
    mine = {tuple(c.tolist()): f for c, f in zip(out_coords[:m], out[:m])}
    for c, f in zip(ref.indices, ref.features):
        torch.testing.assert_close(mine[tuple(c.tolist())], f, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def ort_node():
    """A one-node ONNX graph per case, run by ONNX Runtime with the fuller kernels."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install fuller[export])")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install fuller[export])")
    pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")
    from onnx import TensorProto, helper

    from fuller.plugins import ort_session_options, register_onnx_schemas

    register_onnx_schemas()
    options = ort_session_options()

    def run(features, coords, count, w, b, g):
        inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, list(features.shape)),
                  helper.make_tensor_value_info("coords", TensorProto.INT32, list(coords.shape)),
                  helper.make_tensor_value_info("count", TensorProto.INT32, [1])]
        inits = [onnx.numpy_helper.from_array(w, "weight"), onnx.numpy_helper.from_array(b, "bias")]
        node = helper.make_node("SparseConv3d", ["features", "coords", "count", "weight", "bias"],
                                ["out", "out_coords", "out_count"], domain="fuller", **g.attributes())
        outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [g.out_capacity, w.shape[-1]]),
                   helper.make_tensor_value_info("out_coords", TensorProto.INT32, [g.out_capacity, 4]),
                   helper.make_tensor_value_info("out_count", TensorProto.INT32, [1])]
        model = helper.make_model(helper.make_graph([node], "sparse_conv", inputs, outputs, inits), ir_version=10,
                                  opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("fuller", 1)])
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"features": features, "coords": coords, "count": count})

    return run


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n", [0, 45])
def test_onnxruntime_kernel_matches_reference(ort_node, name, n):
    rng = np.random.default_rng(n + 11)
    features, coords, count = random_voxels(rng, n, 50)
    g = geometry(name, 50)
    w, b = weights(rng, g.kernel)
    want = sparse_conv3d_reference(features, coords, count, w, b, g)
    out, out_coords, out_count = ort_node(features, coords, count, w, b, g)
    np.testing.assert_array_equal(out_coords, want[1])
    np.testing.assert_array_equal(out_count, want[2])
    np.testing.assert_allclose(out, want[0], rtol=1e-5, atol=1e-5)
