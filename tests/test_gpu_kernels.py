"""The Triton kernels of fuller::BevPool and fuller::SparseConv3d against their float64 references.

On a CUDA GPU with Triton the kernels run on the GPU. With Triton but no GPU they run under Triton's
interpreter on the CPU (TRITON_INTERPRET=1, set here before the kernels are imported), which checks
the kernels' logic but not their compiled code; the PTX that TensorRT embeds is still compiled for
an sm_90 target and its parameter layout checked. Without Triton everything skips with the reason.

Tolerances: float32 inputs agree with the float64 reference to 1e-5 relative (BevPool, float32
accumulation over at most a few hundred points) and 1e-4 relative to the output scale
(SparseConv3d, IEEE float32 tl.dot over up to 27 taps). float16 inputs are compared with the
reference evaluated on the same float16-rounded values: the kernels accumulate in float32, so what
remains is the float16 rounding of the result, held to 2e-3 relative (float16's epsilon is 9.8e-4)
plus 2e-3 of the output scale.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("needs Triton (pip install triton) for the GPU kernels", allow_module_level=True)
ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    # Read when Triton's own and our kernels are decorated: before the first import of triton.
    os.environ["TRITON_INTERPRET"] = "1"

from fuller.plugins.bev_pool import triton_kernel as bev_kernel  # noqa: E402
from fuller.plugins.bev_pool.reference import bev_pool_reference  # noqa: E402
from fuller.plugins.sparse_conv import triton_kernel as sparse_kernel  # noqa: E402
from fuller.plugins.sparse_conv.reference import ConvGeometry, sparse_conv3d_reference  # noqa: E402
from fuller.plugins.sparse_conv.triton_kernel import sparse_conv3d_triton  # noqa: E402

if not ON_GPU and not (bev_kernel.INTERPRETED and sparse_kernel.INTERPRETED):
    pytest.skip("no CUDA GPU, and Triton was imported before TRITON_INTERPRET=1 could be set",
                allow_module_level=True)
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
OTHER_DEVICE = torch.device("cpu" if ON_GPU else "meta")  # a device the kernels must refuse
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU to launch compiled PTX")

# ---------------------------------------------------------------------------------------------
# BevPool


def bev_case(seed: int, bn=3, d=6, h=4, w=5, c=40, bev=(2, 13, 11), points=900, occupied=0.3):
    """Random inputs satisfying the contract: only a fraction of the cells receive points (the
    rest, like frustum points outside the grid, have no interval), repeated (cell, feature row)
    pairs, repeated depth indices and one long interval."""
    rng = np.random.default_rng(seed)
    cells = int(np.prod(bev))
    chosen = rng.choice(cells, max(1, int(occupied * cells)), replace=False)
    ranks_bev = np.sort(np.r_[rng.choice(chosen, points), np.full(min(points, 100), chosen[0])])[:points]
    n = ranks_bev.size
    ranks_feat = rng.integers(0, bn * h * w, n)
    ranks_feat[::3] = rng.integers(0, 4, len(ranks_feat[::3]))
    ranks_depth = rng.integers(0, bn * d * h * w, n)
    ranks_depth[1::7] = ranks_depth[0]
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]]) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, n]).astype(np.int64)
    depth = rng.random((bn, d, h, w))
    feat = rng.standard_normal((bn, h, w, c))
    return depth, feat, (ranks_depth, ranks_feat, ranks_bev, starts, lengths), list(bev)


def run_bev(depth, feat, ranks, bev, dtype, index_dtype):
    args = [torch.tensor(a, dtype=dtype, device=DEVICE) for a in (depth, feat)]
    args += [torch.tensor(r, dtype=index_dtype, device=DEVICE) for r in ranks]
    return bev_kernel.bev_pool_triton(*args, bev)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("seed,kwargs", [(0, {}), (1, {"c": 8, "bev": (1, 7, 9), "points": 60}),
                                         (2, {"c": 70, "bev": (3, 12, 17), "points": 1500, "occupied": 0.05})])
def test_bev_pool_float32(seed, kwargs, index_dtype):
    depth, feat, ranks, bev = bev_case(seed, **kwargs)
    want = bev_pool_reference(depth, feat, *ranks, bev)
    got = run_bev(depth, feat, ranks, bev, torch.float32, index_dtype)
    assert got.dtype == torch.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-5)
    empty = np.ones(int(np.prod(bev)), bool)
    empty[ranks[2]] = False
    assert np.all(got.cpu().numpy().transpose(0, 2, 3, 1).reshape(-1, want.shape[1])[empty] == 0)


def test_bev_pool_float16():
    depth, feat, ranks, bev = bev_case(3)
    depth16, feat16 = depth.astype(np.float16), feat.astype(np.float16)
    want = bev_pool_reference(depth16.astype(np.float64), feat16.astype(np.float64), *ranks, bev)
    got = run_bev(depth16, feat16, ranks, bev, torch.float16, torch.int32)
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.float().cpu().numpy(), want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_bev_pool_no_points_gives_zeros():
    depth, feat, _, bev = bev_case(4)
    empty = [np.zeros(0, np.int64)] * 5
    got = run_bev(depth, feat, empty, bev, torch.float32, torch.int32)
    assert got.shape == (2, 40, 13, 11) and not got.any()


def test_bev_pool_rejects_bad_input():
    depth, feat, ranks, bev = bev_case(5)
    with pytest.raises(TypeError, match="feat"):
        bev_kernel.bev_pool_triton(torch.tensor(depth, dtype=torch.float32, device=DEVICE),
                                   torch.tensor(feat, dtype=torch.float16, device=DEVICE),
                                   *(torch.tensor(r, device=DEVICE) for r in ranks), bev)
    moved = [torch.tensor(r, device=DEVICE if i != 2 else OTHER_DEVICE) for i, r in enumerate(ranks)]
    with pytest.raises(ValueError, match="ranks_bev"):
        bev_kernel.bev_pool_triton(torch.tensor(depth, dtype=torch.float32, device=DEVICE),
                                   torch.tensor(feat, dtype=torch.float32, device=DEVICE), *moved, bev)


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError:
        driver = pytest.importorskip("cuda.cuda", reason="needs cuda-python to launch PTX through the driver")
    return driver


def _ok(result):
    err, *rest = result
    assert int(err) == 0, f"CUDA driver error {err}"
    return rest[0] if len(rest) == 1 else rest


PTX_PROBE = """
import json, re, triton
from triton.backends.compiler import GPUTarget
from fuller.plugins.bev_pool import triton_kernel as k
from fuller.plugins.sparse_conv import triton_kernel as s

target = GPUTarget("cuda", 90, 32)
k.driver_ptx_version = lambda: 80
name, ptx, threads, shared = k.compile_ptx("float16", "int32", target=target)
k.compile_ptx("float32", "int64", target=target)
entry = re.search(r"\\.entry\\s+" + re.escape(name) + r"\\s*\\((.*?)\\)", ptx, re.S).group(1)
kinds = ["u32" if ".u32" in p else "ptr" for p in re.findall(r"\\.param[^,\\n]*", entry)]
isa = re.search(r"^\\s*\\.version\\s+(\\S+)", ptx, re.M).group(1)

def compile_(fn, pointers, scalars, constants):
    signature = {**{n: t for n, t in pointers.items()}, **{n: "i32" for n in scalars},
                 **{n: "constexpr" for n in constants}}
    signature = {n: signature[n] for n in fn.arg_names}
    triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants), target=target)

geometry = dict(KX=3, KY=3, KZ=3, SX=2, SY=2, SZ=1, PX=1, PY=1, PZ=0)
rows = ("n_valid", "size_x", "size_y", "size_z", "out_x", "out_y", "out_z")
compile_(s._scatter_rows_kernel, {"coords_ptr": "*i32", "grid_ptr": "*i32"}, rows[:4], {"BLOCK": 256})
compile_(s._mark_outputs_kernel, {"coords_ptr": "*i32", "occupancy_ptr": "*i8"}, rows[:1] + rows[4:],
         {**geometry, "BLOCK": 256})
for f, ieee in (("fp32", True), ("fp16", False)):
    compile_(s._implicit_gemm_kernel,
             {"feat_ptr": "*" + f, "grid_ptr": "*i32", "out_coords_ptr": "*i32", "weight_ptr": "*" + f,
              "bias_ptr": "*" + f, "out_ptr": "*" + f},
             ("n_out", "capacity", "c_in", "c_out", "size_x", "size_y", "size_z"),
             {**geometry, "BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16, "IEEE": ieee})
print(json.dumps({"kinds": kinds, "isa": isa, "threads": threads, "shared": shared}))
"""


def test_kernels_compile_and_ptx_parameters_are_tensorrts_order():
    """Every kernel compiles for sm_90 (no GPU needed; in a fresh process, since the interpreter
    replaces compilation in this one). The BevPool PTX that the TensorRT plugin embeds takes the
    seven input pointers, the four 32-bit scalars and the output pointer in that order, then only
    pointers (Triton's scratch buffers, which TensorRT passes as null), and its ISA is held to what
    the driver loads."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", PTX_PROBE], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["kinds"][:12] == ["ptr"] * 7 + ["u32"] * 4 + ["ptr"]
    assert set(probe["kinds"][12:]) <= {"ptr"}
    assert probe["isa"] == "8.0"
    assert probe["threads"] == bev_kernel.NUM_WARPS * 32 and probe["shared"] >= 0


@needs_gpu
@pytest.mark.parametrize("float_type", ["float32", "float16"])
def test_bev_pool_ptx_launched_like_tensorrt(float_type):
    """The PTX the TensorRT plugin embeds, launched through the driver API with the arguments
    TensorRT's ahead-of-time launcher passes: the seven input pointers, the four int32 scalars, the
    output pointer, and null for any parameter Triton appends (its scratch buffers)."""
    driver = _driver()
    dtype = {"float32": torch.float32, "float16": torch.float16}[float_type]
    depth, feat, ranks, bev = bev_case(6)
    if dtype == torch.float16:
        depth, feat = depth.astype(np.float16).astype(np.float64), feat.astype(np.float16).astype(np.float64)
    want = bev_pool_reference(depth, feat, *ranks, bev)
    name, ptx, threads, shared = bev_kernel.compile_ptx(float_type, "int32")
    entry = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S).group(1)
    n_params = len(re.findall(r"\.param\s", entry))
    assert n_params >= 12
    inputs = [torch.tensor(a, dtype=dtype, device=DEVICE) for a in (depth, feat)]
    inputs += [torch.tensor(r, dtype=torch.int32, device=DEVICE) for r in ranks]
    b, x, y = bev
    out = torch.full((b, feat.shape[-1], x, y), float("nan"), dtype=dtype, device=DEVICE)
    scalars = (len(ranks[3]), feat.shape[-1], x * y, b * x * y)
    values = (*(t.data_ptr() for t in inputs), *scalars, out.data_ptr(), *([0] * (n_params - 12)))
    types = (*([ctypes.c_void_p] * 7), *([ctypes.c_int32] * 4), *([ctypes.c_void_p] * (n_params - 11)))
    torch.cuda.synchronize()
    _ok(driver.cuInit(0))
    image = np.frombuffer(ptx.encode() + b"\0", dtype=np.uint8)
    module = _ok(driver.cuModuleLoadData(image.ctypes.data))
    function = _ok(driver.cuModuleGetFunction(module, name.encode()))
    gx, gy = bev_kernel.grid(b * x * y, feat.shape[-1])
    _ok(driver.cuLaunchKernel(function, gx, gy, 1, threads, 1, 1, shared, torch.cuda.current_stream().cuda_stream,
                              (values, types), 0))
    torch.cuda.synchronize()
    _ok(driver.cuModuleUnload(module))
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    np.testing.assert_allclose(out.float().cpu().numpy(), want, rtol=tol, atol=tol * np.abs(want).max())


# ---------------------------------------------------------------------------------------------
# SparseConv3d


def sparse_case(seed: int, n=80, count=60, shape=(9, 8, 5), batches=2, c_in=5, c_out=24):
    """``count`` unique sites over ``batches`` samples, the rows past ``count`` filled with junk
    that must be ignored."""
    rng = np.random.default_rng(seed)
    cells = batches * int(np.prod(shape))
    keys = rng.choice(cells, count, replace=False)
    rest, z = np.divmod(keys, shape[2])
    rest, y = np.divmod(rest, shape[1])
    b, x = np.divmod(rest, shape[0])
    coords = np.full((n, 4), -1, np.int32)
    coords[:count] = np.stack([b, x, y, z], 1)
    coords[count:count + 3] = [0, 1, 1, 1]  # junk rows repeating a site: ignored past count
    features = rng.standard_normal((n, c_in))
    return features, coords, np.array([count], np.int32), rng.standard_normal(c_out)


def run_sparse(features, coords, count, weight, bias, geom, dtype):
    args = (torch.tensor(features, dtype=dtype, device=DEVICE), torch.tensor(coords, device=DEVICE),
            torch.tensor(count, device=DEVICE), torch.tensor(weight, dtype=dtype, device=DEVICE),
            torch.tensor(bias, dtype=dtype, device=DEVICE))
    return [t.cpu() for t in sparse_conv3d_triton(*args, geom)]


def check_sparse(got, want, rtol):
    (out, out_coords, out_count), (ref, ref_coords, ref_count) = got, want
    assert out_count.tolist() == ref_count.tolist()
    np.testing.assert_array_equal(out_coords.numpy(), ref_coords)
    scale = max(np.abs(ref).max(), 1.0)
    np.testing.assert_allclose(out.float().numpy(), ref, rtol=rtol, atol=rtol * scale)


SPARSE_GEOMETRIES = {
    "subm3": dict(kernel=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1), subm=True),
    "down3s2": dict(kernel=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1), subm=False),
    "down_xy": dict(kernel=(3, 3, 3), stride=(2, 2, 1), padding=(1, 1, 0), subm=False),
    "height": dict(kernel=(1, 1, 3), stride=(1, 1, 2), padding=(0, 0, 0), subm=False),
}


def make_geometry(name: str, n: int, shape=(9, 8, 5), capacity: int | None = None) -> ConvGeometry:
    spec = SPARSE_GEOMETRIES[name]
    cap = n if spec["subm"] else (capacity if capacity is not None else 2 * 9 * 8 * 5)
    return ConvGeometry(spec["kernel"], spec["stride"], spec["padding"], shape, spec["subm"], cap)


@pytest.mark.parametrize("name", list(SPARSE_GEOMETRIES))
def test_sparse_conv_float32(name):
    features, coords, count, _ = sparse_case(10)
    geom = make_geometry(name, len(features))
    rng = np.random.default_rng(11)
    weight, bias = rng.standard_normal((*geom.kernel, 5, 24)), rng.standard_normal(24)
    want = sparse_conv3d_reference(features, coords, count, weight, bias, geom)
    got = run_sparse(features, coords, count, weight, bias, geom, torch.float32)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int32 and got[2].dtype == torch.int32
    check_sparse(got, want, 1e-4)
    assert not got[0][int(got[2][0]):].any()  # rows past the count are zero


def test_sparse_conv_wide_channels_and_capacity_cut():
    """Several K and N blocks (Cin 40, Cout 80), and fewer rows than output sites: the first
    out_capacity sites in key order are kept."""
    features, coords, count, _ = sparse_case(12, c_in=40)
    geom = make_geometry("down3s2", len(features), capacity=17)
    rng = np.random.default_rng(13)
    weight, bias = rng.standard_normal((3, 3, 3, 40, 80)), rng.standard_normal(80)
    want = sparse_conv3d_reference(features, coords, count, weight, bias, geom)
    assert want[2][0] == 17
    check_sparse(run_sparse(features, coords, count, weight, bias, geom, torch.float32), want, 1e-4)


@pytest.mark.parametrize("name", ["subm3", "down3s2"])
def test_sparse_conv_float16(name):
    features, coords, count, _ = sparse_case(14)
    geom = make_geometry(name, len(features))
    rng = np.random.default_rng(15)
    weight, bias = rng.standard_normal((*geom.kernel, 5, 24)), rng.standard_normal(24)
    f16, w16, b16 = (a.astype(np.float16) for a in (features, weight, bias))
    want = sparse_conv3d_reference(f16.astype(np.float64), coords, count, w16.astype(np.float64),
                                   b16.astype(np.float64), geom)
    got = run_sparse(f16, coords, count, w16, b16, geom, torch.float16)
    assert got[0].dtype == torch.float16
    check_sparse(got, want, 2e-3)


@pytest.mark.parametrize("name", ["subm3", "down3s2"])
def test_sparse_conv_zero_voxels(name):
    features, coords, _, _ = sparse_case(16)
    count = np.array([0], np.int32)
    geom = make_geometry(name, len(features))
    weight, bias = np.ones((*geom.kernel, 5, 24)), np.ones(24)
    out, out_coords, out_count = run_sparse(features, coords, count, weight, bias, geom, torch.float32)
    assert out_count.tolist() == [0]
    assert (out_coords == -1).all() and not out.any()


def test_sparse_conv_rejects_bad_input():
    features, coords, count, _ = sparse_case(17)
    geom = make_geometry("subm3", len(features))
    weight, bias = np.ones((3, 3, 3, 4, 24)), np.ones(24)  # Cin 4 but features have 5
    with pytest.raises(ValueError, match="weight"):
        run_sparse(features, coords, count, weight, bias, geom, torch.float32)
