"""The Triton kernels of fuller::BevPool, fuller::SparseSites and fuller::SparseRulebook against
their references.

On a CUDA GPU with Triton the kernels run on the GPU, in this process. With Triton but no GPU they
run under Triton's interpreter on the CPU in one subprocess (``kernel_calls.py``, which sets
TRITON_INTERPRET=1 for itself only, so no other test of the session sees it); that checks the
kernels' logic but not their compiled code. The PTX that TensorRT embeds is still compiled for an
sm_90 target, its parameter list checked to be exactly what TensorRT passes, and assembled by
Triton's ptxas. Launching that PTX the way TensorRT does needs a GPU and cuda-python (the gpu-train
extra). Without Triton everything skips with the reason.

Tolerances: BevPool's float32 inputs agree with the float64 reference to 1e-5 relative (float32
accumulation over at most a few hundred points). float16 inputs are compared with the reference
evaluated on the same float16-rounded values: the kernel accumulates in float32, so what remains
is the float16 rounding of the result, held to 2e-3 relative (float16's epsilon is 9.8e-4) plus
2e-3 of the output scale. That the BevPool kernel accumulates in float32 is checked on a sum
a float16 accumulator cannot hold (it stops at 4096, far short), held to float16's epsilon
relative to each element.
"""
from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fuller.plugins.bev_pool.reference import bev_pool_reference
from fuller.plugins.sparse_conv.reference import ConvGeometry
from fuller.plugins.sparse_conv.rulebook import capacity, keys_to_coords, sparse_rulebook, sparse_sites
from kernel_calls import Runner
from test_bev_pool import long_sum_case as bev_pool_long_sum_case

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("needs Triton (pip install triton) for the GPU kernels", allow_module_level=True)
ON_GPU = torch.cuda.is_available()
KERNELS = Runner(in_process=ON_GPU)
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU to launch compiled PTX")


@pytest.fixture(scope="module", autouse=True)
def _close_kernel_runner():
    yield
    KERNELS.close()

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


def long_sum_case(seed: int):
    """`test_bev_pool.long_sum_case` on a grid whose cells span both programs along the cells, with
    short cells in each."""
    return bev_pool_long_sum_case(seed, c=24, bev=(1, 9, 8), short_cells=(1, 30, 65, 70), short=300)


def run_bev(depth, feat, ranks, bev, dtype, index_dtype):
    """``bev_pool_triton``'s output (on the CPU) for the arrays as ``dtype`` / ``index_dtype``."""
    name = {torch.float32: "float32", torch.float16: "float16", torch.int32: "int32", torch.int64: "int64"}
    return torch.from_numpy(KERNELS("bev_pool", depth, feat, ranks, bev, name[dtype], name[index_dtype]))


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


def test_bev_pool_float16_accumulates_in_float32():
    """A sum float16 cannot accumulate (`long_sum_case`) within float16's epsilon, relative."""
    depth, feat, ranks, bev = long_sum_case(7)
    depth16, feat16 = depth.astype(np.float16), feat.astype(np.float16)
    want = bev_pool_reference(depth16.astype(np.float64), feat16.astype(np.float64), *ranks, bev)
    assert want.max() > 5000
    got = run_bev(depth16, feat16, ranks, bev, torch.float16, torch.int32).double().cpu().numpy()
    np.testing.assert_array_equal(got[want == 0], 0)
    np.testing.assert_allclose(got, want, rtol=float(np.finfo(np.float16).eps), atol=0)


def test_bev_pool_no_points_gives_zeros():
    depth, feat, _, bev = bev_case(4)
    empty = [np.zeros(0, np.int64)] * 5
    got = run_bev(depth, feat, empty, bev, torch.float32, torch.int32)
    assert got.shape == (2, 40, 13, 11) and not got.any()


def test_bev_pool_rejects_bad_input():
    depth, feat, ranks, bev = bev_case(5)
    with pytest.raises(TypeError, match="feat"):
        KERNELS("bev_pool", depth, feat, ranks, bev, "float32", "int64", "float16")
    with pytest.raises(ValueError, match="ranks_bev"):
        KERNELS("bev_pool", depth, feat, ranks, bev, "float32", "int64", None, 2)


def _driver():
    """cuda-python's driver API, which the gpu-train and vehicle extras install (cuda-bindings):
    ``cuda.bindings.driver`` since cuda-python 12.6, ``cuda.cuda`` before."""
    try:
        from cuda.bindings import driver
    except ImportError:
        driver = pytest.importorskip("cuda.cuda", reason="needs cuda-bindings (pip install fuller[gpu-train]) "
                                                         "to launch PTX through the driver")
    return driver


def _ok(result):
    err, *rest = result
    assert int(err) == 0, f"CUDA driver error {err}"
    return rest[0] if len(rest) == 1 else rest


def launch_like_tensorrt(kernel, grid, inputs, scalars, outputs) -> None:
    """Load ``kernel`` (a ``triton_aot.PtxKernel``) with the driver and launch it on torch's stream
    with what TensorRT's ahead-of-time launcher passes and nothing else: the input pointers, the
    int32 scalars, the output pointers. ``grid`` is (x, y) or x."""
    from fuller.plugins.triton_aot import entry_parameters

    driver = _driver()
    values = (*(t.data_ptr() for t in inputs), *scalars, *(t.data_ptr() for t in outputs))
    types = (*[ctypes.c_void_p] * len(inputs), *[ctypes.c_int32] * len(scalars), *[ctypes.c_void_p] * len(outputs))
    assert len(entry_parameters(kernel.ptx, kernel.name)) == len(values)
    gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
    torch.cuda.synchronize()
    _ok(driver.cuInit(0))
    image = np.frombuffer(kernel.ptx.encode() + b"\0", dtype=np.uint8)
    module = _ok(driver.cuModuleLoadData(image.ctypes.data))
    function = _ok(driver.cuModuleGetFunction(module, kernel.name.encode()))
    _ok(driver.cuLaunchKernel(function, gx, gy, 1, kernel.threads, 1, 1, kernel.shared,
                              torch.cuda.current_stream().cuda_stream, (values, types), 0))
    torch.cuda.synchronize()
    _ok(driver.cuModuleUnload(module))


PTX_PROBE = """
import json, re, subprocess, tempfile
from pathlib import Path
from triton.backends.compiler import GPUTarget
from fuller.plugins import triton_aot
from fuller.plugins.bev_pool import triton_kernel as bev
from fuller.plugins.sparse_conv import triton_kernel as sparse
from fuller.plugins.sparse_conv.reference import ConvGeometry

try:
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
except ImportError:  # Triton before 3.4
    from triton.backends.nvidia.compiler import _path_to_binary
    ptxas = _path_to_binary("ptxas")[0]
triton_aot.driver_ptx_version = lambda: 80  # as if the installed driver loaded PTX ISA 8.0 at most
target = GPUTarget("cuda", 90, 32)
down = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), (41, 36, 11), False, 4000)
subm = ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), (41, 36, 11), True, 2000)
kernels = {"bev_pool": bev.compile_ptx("float16", "int32", target),
           "bev_pool_int64": bev.compile_ptx("float32", "int64", target),
           **{name: sparse.compile_ptx(name, subm if name == "compact" else down, target) for name in sparse.KERNELS}}
report = {}
with tempfile.TemporaryDirectory() as tmp:
    for name, k in kernels.items():
        path = Path(tmp) / f"{name}.ptx"
        path.write_text(k.ptx)
        done = subprocess.run([ptxas, "-arch=sm_90a", str(path), "-o", str(path.with_suffix(".cubin"))],
                              capture_output=True, text=True)
        params = triton_aot.entry_parameters(k.ptx, k.name)
        report[name] = {"kinds": ["u32" if ".u32" in p else "ptr" if ".ptr" in p else p for p in params],
                        "isa": re.search(r"^\\s*\\.version\\s+(\\S+)", k.ptx, re.M).group(1),
                        "threads": k.threads, "ptxas": done.returncode, "ptxas_errors": done.stderr}
print(json.dumps(report))
"""


def test_kernels_compile_to_ptx_with_exactly_tensorrts_parameters():
    """Every kernel a TensorRT plugin embeds compiles for sm_90 without a GPU (in a fresh process,
    without the interpreter). Its PTX entry takes the input pointers, the 32-bit scalars and the
    output pointers in that order and nothing else: Triton's trailing scratch parameters, which
    TensorRT does not pass, are gone (plugins/triton_aot.py), and the PTX still assembles with
    Triton's ptxas. The ISA is held to what the driver loads."""
    from fuller.plugins.sparse_conv.triton_kernel import KERNELS as SPARSE_KERNELS

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", PTX_PROBE], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"bev_pool": (7, 4, 1), "bev_pool_int64": (7, 4, 1),
                **{name: tuple(len(part) for part in parts) for name, parts in SPARSE_KERNELS.items()}}
    assert set(report) == set(expected)
    for name, (inputs, scalars, outputs) in expected.items():
        got = report[name]
        assert got["kinds"] == ["ptr"] * inputs + ["u32"] * scalars + ["ptr"] * outputs, name
        assert got["isa"] == "8.0" and got["threads"] == 4 * 32, name
        assert got["ptxas"] == 0, f"{name}: {got['ptxas_errors']}"


@needs_gpu
@pytest.mark.parametrize("float_type", ["float32", "float16"])
def test_bev_pool_ptx_launched_like_tensorrt(float_type):
    """The PTX the TensorRT plugin embeds, launched through the driver API with the arguments
    TensorRT's ahead-of-time launcher passes: the seven input pointers, the four int32 scalars and
    the output pointer."""
    from fuller.plugins.bev_pool import triton_kernel as bev_kernel

    dtype = {"float32": torch.float32, "float16": torch.float16}[float_type]
    depth, feat, ranks, bev = bev_case(6)
    if dtype == torch.float16:
        depth, feat = depth.astype(np.float16).astype(np.float64), feat.astype(np.float16).astype(np.float64)
    want = bev_pool_reference(depth, feat, *ranks, bev)
    inputs = [torch.tensor(a, dtype=dtype, device="cuda") for a in (depth, feat)]
    inputs += [torch.tensor(r, dtype=torch.int32, device="cuda") for r in ranks]
    b, x, y = bev
    c = feat.shape[-1]
    out = torch.full((b, c, x, y), float("nan"), dtype=dtype, device="cuda")
    launch_like_tensorrt(bev_kernel.compile_ptx(float_type, "int32"), bev_kernel.grid(b * x * y, c), inputs,
                         (len(ranks[3]), c, x * y, b * x * y), [out])
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    np.testing.assert_allclose(out.float().cpu().numpy(), want, rtol=tol, atol=tol * np.abs(want).max())


# ---------------------------------------------------------------------------------------------
# SparseSites and SparseRulebook: exact integers, equal to the CPU kernels of rulebook.py.

SHAPE = (9, 7, 5)
CASES = {  # name: (kernel, stride, padding, subm), as tests/test_sparse_conv.py
    "subm3": ((3, 3, 3), (1, 1, 1), (1, 1, 1), True),
    "down3": ((3, 3, 3), (2, 2, 2), (1, 1, 1), False),
    "down3_z0": ((3, 3, 3), (2, 2, 2), (1, 1, 0), False),
    "xy1_z2": ((3, 3, 3), (1, 1, 2), (1, 1, 1), False),
    "out113": ((1, 1, 3), (1, 1, 2), (0, 0, 1), False),
}


def sparse_geometry(name: str, rows: int, out_capacity: int | None = None) -> ConvGeometry:
    """The SparseSites geometry of a case on ``rows`` input rows: out_capacity N for subm, else the
    exporter's never-overflowing capacity for two samples unless given."""
    k, s, p, subm = CASES[name]
    g = ConvGeometry(k, s, p, SHAPE, subm, rows)
    return dataclasses.replace(g, out_capacity=rows if subm else out_capacity or capacity(rows, g, 2))


def voxels(rng, n: int, rows: int, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct sites over ``batch`` samples in key order, padded with -1 to ``rows``."""
    keys = np.sort(rng.choice(batch * int(np.prod(SHAPE)), n, replace=False))
    coords = np.full((rows, 4), -1, np.int32)
    coords[:n] = keys_to_coords(keys, SHAPE)
    return coords, np.array([n], np.int32)


def check_index_ops(coords: np.ndarray, count: np.ndarray, geom: ConvGeometry) -> int:
    """The GPU sites and the GPU rulebook of those sites equal the CPU kernels'; returns M."""
    want_sites, want_count = sparse_sites(coords, count, geom)
    got_sites, got_count = KERNELS("sparse_sites", coords, count, dataclasses.asdict(geom))
    np.testing.assert_array_equal(got_count, want_count)
    np.testing.assert_array_equal(got_sites, want_sites)
    rulebook_geom = ConvGeometry(geom.kernel, geom.stride, geom.padding, geom.shape, False, 0)
    got = KERNELS("sparse_rulebook", coords, count, want_sites, dataclasses.asdict(rulebook_geom))
    want = sparse_rulebook(coords, count, want_sites, rulebook_geom)
    assert got.shape == want.shape == (len(want_sites), geom.taps) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    return int(want_count[0])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n", [0, 1, 70])
def test_sparse_index_ops(name, n):
    """Every SPEC geometry on 80 rows (padding rows past the count), two samples."""
    coords, count = voxels(np.random.default_rng(n + 3), n, 80)
    m = check_index_ops(coords, count, sparse_geometry(name, 80))
    assert (m == 0) == (n == 0)


@pytest.mark.parametrize("name", ["subm3", "down3", "out113"])
def test_sparse_index_ops_many_blocks(name):
    """300 valid rows: several input-row blocks of the strided-sites kernels, whose write offsets
    come from the earlier blocks' counts, and several programs of the others."""
    coords, count = voxels(np.random.default_rng(5), 300, 320)
    check_index_ops(coords, count, sparse_geometry(name, 320))


def test_sparse_sites_capacity_cut():
    """Fewer rows than sites: the first out_capacity sites in key order, and that count."""
    coords, count = voxels(np.random.default_rng(6), 70, 80)
    assert check_index_ops(coords, count, sparse_geometry("down3", 80, out_capacity=17)) == 17


@pytest.mark.parametrize("name", ["down3", "down3_z0", "xy1_z2"])
def test_sparse_index_ops_border_sites_and_an_empty_sample(name):
    """Sites only in sample 1 (sample 0 empty), on every face of the grid and in two x-columns far
    apart (windows that reach outside the grid, slabs owned across a gap)."""
    cells = [(1, x, y, z) for x in (0, 8) for y in (0, 3, 6) for z in (0, 4)] + [(1, 4, 3, 2), (1, 8, 6, 2)]
    coords = np.array(sorted(cells, key=lambda c: ((c[1] * SHAPE[1] + c[2]) * SHAPE[2] + c[3])), np.int32)
    coords = np.concatenate([coords, np.full((4, 4), -1, np.int32)])
    check_index_ops(coords, np.array([len(cells)], np.int32), sparse_geometry(name, len(coords)))


def test_sparse_launchers_reject_bad_input():
    coords, count = voxels(np.random.default_rng(7), 5, 10)
    with pytest.raises(ValueError, match="coords"):
        KERNELS("sparse_sites", coords.astype(np.int64), count, dataclasses.asdict(sparse_geometry("down3", 10)))
    with pytest.raises(ValueError, match="out_capacity"):
        KERNELS("sparse_sites", coords, count, dataclasses.asdict(sparse_geometry("subm3", 12)))


@needs_gpu
@pytest.mark.parametrize("name", ["subm3", "down3", "xy1_z2"])
def test_sparse_ptx_launched_like_tensorrt(name):
    """Each sparse plugin's PTX launched through the driver API with TensorRT's arguments only, on
    output buffers full of garbage (TensorRT clears nothing): the sites (compact, or block counts
    then strided sites) and the rulebook of the sites, equal to the CPU kernels."""
    from fuller.plugins.sparse_conv import triton_kernel as kernel

    coords, count = voxels(np.random.default_rng(8), 300, 320)
    geom = sparse_geometry(name, 320)
    want_sites, want_count = sparse_sites(coords, count, geom)
    n = len(coords)
    coords_t, count_t = torch.tensor(coords, device="cuda"), torch.tensor(count, device="cuda")
    out_coords = torch.full((geom.out_capacity, 4), -7, dtype=torch.int32, device="cuda")
    out_count = torch.full((1,), -7, dtype=torch.int32, device="cuda")
    if geom.subm:
        launch_like_tensorrt(kernel.compile_ptx("compact", geom), kernel.grid("compact", n), [coords_t, count_t], [n],
                             [out_coords, out_count])
    else:
        block_counts = torch.full((kernel.blocks(n),), -7, dtype=torch.int32, device="cuda")
        launch_like_tensorrt(kernel.compile_ptx("site_counts", geom), kernel.grid("site_counts", n),
                             [coords_t, count_t], [n], [block_counts])
        launch_like_tensorrt(kernel.compile_ptx("strided_sites", geom), kernel.grid("strided_sites", n),
                             [coords_t, count_t, block_counts], [n], [out_coords, out_count])
    m = int(out_count[0])
    assert m == int(want_count[0])
    np.testing.assert_array_equal(out_coords[:m].cpu().numpy(), want_sites)

    rulebook_geom = ConvGeometry(geom.kernel, geom.stride, geom.padding, geom.shape, False, 0)
    neighbours = torch.full((m, geom.taps), -7, dtype=torch.int32, device="cuda")
    launch_like_tensorrt(kernel.compile_ptx("rulebook", rulebook_geom), kernel.grid("rulebook", n, m),
                         [coords_t, count_t, out_coords[:m].contiguous()], [n, m], [neighbours])
    np.testing.assert_array_equal(neighbours.cpu().numpy(), sparse_rulebook(coords, count, want_sites, rulebook_geom))
