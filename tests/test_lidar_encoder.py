"""The sparse LiDAR encoder against dense ``conv3d`` (axis order, weight layout, strides, z fold),
its BEV axis convention, shapes, and backward on spconv's CPU package."""
from __future__ import annotations

import numpy as np
import pytest
import spconv.pytorch as spconv
import spconv.pytorch.cppcore as spconv_cppcore
import spconv.pytorch.ops as spconv_ops
import torch
import torch.nn.functional as F
from spconv.core_cc.csrc.sparse.all import SpconvOps
from spconv.pytorch.cppcore import torch_tensor_to_tv
from torch import nn

from fuller.config import ConfigError, load_config
from fuller.train.model import spconv_compat
from fuller.train.model.lidar_encoder import SparseEncoder

# A small anisotropic world (32 x 24 x 16 voxels of 0.4 x 0.4 x 0.5 m) so a dense reference is cheap
# and a swap of x and y cannot go unnoticed.
SMALL = [
    "geometry.point_cloud_range=[-6.4,-4.8,-5.0,6.4,4.8,3.0]",
    "geometry.camera_bev.x_range=[-6.4,6.4]", "geometry.camera_bev.y_range=[-4.8,4.8]",
    "geometry.map_grid.x_range=[-6.0,6.0]", "geometry.map_grid.y_range=[-4.0,4.0]",
]


def small_config(det_resolution: float = 0.8, det_x=(-6.4, 6.4), det_y=(-4.8, 4.8), norm: str = "bn"):
    return load_config("tiny", SMALL + [
        f"geometry.det_grid.resolution={det_resolution}",
        f"geometry.det_grid.x_range=[{det_x[0]},{det_x[1]}]", f"geometry.det_grid.y_range=[{det_y[0]},{det_y[1]}]",
        f"model.norm={norm}",
    ])


def random_voxels(shape, batch_size: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n distinct random voxels per sample over a grid of `shape` (nx, ny, nz), iz < nz."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(batch_size):
        flat = rng.choice(int(np.prod(shape)), n, replace=False)
        rows.append(np.column_stack([np.full(n, b), *np.unravel_index(flat, shape)]))
    coords = torch.from_numpy(np.concatenate(rows).astype(np.int32))
    features = torch.from_numpy(rng.normal(size=(len(coords), 5)).astype(np.float32))
    return features, coords


def scatter_dense(features: torch.Tensor, coords: torch.Tensor, batch_size: int, shape) -> torch.Tensor:
    """(B, C, nx, ny, nz) float64 with each voxel's features at [b, :, ix, iy, iz]."""
    dense = torch.zeros(batch_size, features.shape[1], *shape, dtype=torch.float64)
    b, ix, iy, iz = coords.long().unbind(1)
    dense[b, :, ix, iy, iz] = features.double()
    return dense


def dense_weight(conv: spconv.SparseConvolution) -> torch.Tensor:
    """spconv's (out, kx, ky, kz, in) filter as conv3d's (out, in, kx, ky, kz) (differentiable)."""
    return conv.weight.double().permute(0, 4, 1, 2, 3)


def dense_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The per-voxel norm of eval mode applied at every dense site, in float64."""
    if isinstance(norm, nn.BatchNorm1d):
        view = (1, -1, 1, 1, 1)
        scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
        return (x - norm.running_mean.double().view(view)) * scale.view(view) + norm.bias.double().view(view)
    b, c = x.shape[:2]
    groups = x.reshape(b, norm.num_groups, c // norm.num_groups, *x.shape[2:])
    mean = groups.mean(2, keepdim=True)
    var = groups.var(2, unbiased=False, keepdim=True)
    out = ((groups - mean) / torch.sqrt(var + norm.eps)).reshape(x.shape)
    return out * norm.weight.double().view(1, -1, 1, 1, 1) + norm.bias.double().view(1, -1, 1, 1, 1)


def dense_reference(encoder: SparseEncoder, features, coords, batch_size) -> torch.Tensor:
    """The encoder run as dense float64 conv3d: SubM = conv then keep the input sites; strided
    sparse conv = conv, sites = any active input under the window; z folded into channels."""
    x = scatter_dense(features, coords, batch_size, encoder.sparse_shape)
    active = scatter_dense(torch.ones(len(coords), 1), coords, batch_size, encoder.sparse_shape)
    for module in encoder.modules():
        if isinstance(module, spconv.SubMConv3d):
            x = F.conv3d(x, dense_weight(module), padding=tuple(module.padding)) * active
        elif isinstance(module, spconv.SparseConv3d):
            x = F.conv3d(x, dense_weight(module), stride=tuple(module.stride), padding=tuple(module.padding))
            window = torch.ones(1, 1, *module.kernel_size, dtype=torch.float64)
            active = (F.conv3d(active, window, stride=tuple(module.stride), padding=tuple(module.padding)) > 0).double()
        elif isinstance(module, (nn.BatchNorm1d, nn.GroupNorm)):
            x = dense_norm(module, x) * active
        elif isinstance(module, nn.ReLU):
            x = torch.relu(x)
    b, c, nx, ny, nz = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(b, c * nz, nx, ny)


def randomise_norms(encoder: nn.Module, seed: int) -> None:
    """Non-trivial norm parameters and running statistics, so eval mode is not an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def test_subm_and_strided_convs_equal_dense_conv3d_at_active_sites():
    torch.manual_seed(0)
    encoder = SparseEncoder(small_config())
    subm = encoder.conv_input[0]
    down = encoder.stages[1][0][0]  # first stride-2 conv: stride (2, 2, 2)
    assert isinstance(subm, spconv.SubMConv3d) and isinstance(down, spconv.SparseConv3d)
    features, coords = random_voxels((32, 24, 16), 2, 150, seed=1)
    x = spconv.SparseConvTensor(features, coords, list(encoder.sparse_shape), 2)
    with torch.no_grad():
        y = subm(x)
        z = down(y)
        dense_in = scatter_dense(features, coords, 2, encoder.sparse_shape)
        ref_y = F.conv3d(dense_in, dense_weight(subm), padding=1)
    b, ix, iy, iz = y.indices.long().unbind(1)
    assert torch.equal(y.indices, coords)  # SubM keeps the input sites
    torch.testing.assert_close(y.features.double(), ref_y[b, :, ix, iy, iz], rtol=1e-5, atol=1e-5)

    with torch.no_grad():
        ref_z = F.conv3d(scatter_dense(y.features, y.indices, 2, encoder.sparse_shape), dense_weight(down),
                         stride=tuple(down.stride), padding=tuple(down.padding))
    assert tuple(z.spatial_shape) == tuple(ref_z.shape[2:])
    b, ix, iy, iz = z.indices.long().unbind(1)
    torch.testing.assert_close(z.features.double(), ref_z[b, :, ix, iy, iz], rtol=1e-5, atol=1e-5)
    window = torch.ones(1, 1, 3, 3, 3, dtype=torch.float64)
    reached = F.conv3d(scatter_dense(torch.ones(len(coords), 1), coords, 2, encoder.sparse_shape), window,
                       stride=tuple(down.stride), padding=tuple(down.padding)) > 0
    assert reached.sum() == len(z.indices) and bool(reached[b, 0, ix, iy, iz].all())


@pytest.mark.parametrize("det_resolution, norm", [(0.8, "bn"), (1.6, "gn")])
def test_encoder_equals_dense_reference(det_resolution, norm):
    torch.manual_seed(1)
    encoder = SparseEncoder(small_config(det_resolution, norm=norm)).eval()
    randomise_norms(encoder, seed=2)
    features, coords = random_voxels((32, 24, 16), 2, 120, seed=3)
    with torch.no_grad():
        out = encoder(features, coords, 2)
        ref = dense_reference(encoder, features, coords, 2)
    stride = round(det_resolution / 0.4)
    assert out.shape == ref.shape == (2, encoder.out_channels, 32 // stride, 24 // stride)
    assert ref.abs().amax() > 0.1
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_gradients_equal_dense_reference():
    torch.manual_seed(10)
    encoder = SparseEncoder(small_config()).eval()
    randomise_norms(encoder, seed=11)
    features, coords = random_voxels((32, 24, 16), 2, 120, seed=12)
    gen = torch.Generator().manual_seed(13)
    probe = torch.randn(2, encoder.out_channels, 16, 12, dtype=torch.float64, generator=gen)

    def gradients(run) -> dict[str, torch.Tensor]:
        encoder.zero_grad()
        leaf = features.clone().requires_grad_(True)
        (run(leaf).double() * probe).sum().backward()
        grads = {name: p.grad.double().clone() for name, p in encoder.named_parameters()}
        grads["features"] = leaf.grad.double()
        return grads

    got = gradients(lambda f: encoder(f, coords, 2))
    want = gradients(lambda f: dense_reference(encoder, f, coords, 2))
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_det_grid_inside_the_range_is_the_aligned_window():
    torch.manual_seed(4)
    full = SparseEncoder(small_config()).eval()
    inner = SparseEncoder(small_config(det_x=(-4.8, 4.8), det_y=(-3.2, 2.4))).eval()
    inner.load_state_dict(full.state_dict())
    features, coords = random_voxels((32, 24, 16), 1, 200, seed=5)
    with torch.no_grad():
        whole, window = full(features, coords, 1), inner(features, coords, 1)
    # x from -6.4 in 0.8 m cells: -4.8 is cell 2, 12 cells; y from -4.8: -3.2 is cell 2, 7 cells.
    torch.testing.assert_close(window, whole[..., 2:14, 2:9])


def test_misaligned_det_grid_is_a_config_error():
    with pytest.raises(ConfigError, match=r"geometry.det_grid.x_range: expected cells aligned .* offset of 0.5"):
        SparseEncoder(small_config(det_x=(-6.0, 6.0)))


def test_single_voxel_lights_its_own_bev_cell():
    cfg = load_config("tiny")
    encoder = SparseEncoder(cfg).eval()
    with torch.no_grad():  # positive weights and inputs: every reached site is non-zero, every other zero
        for p in encoder.parameters():
            p.abs_()
    ix, iy, iz = 200, 37, 8
    coords = torch.tensor([[1, ix, iy, iz]], dtype=torch.int32)
    with torch.no_grad():
        out = encoder(torch.ones(1, 5), coords, 2)
    s = round(cfg.geometry.det_grid.resolution / cfg.geometry.voxel_size[0])
    lit = out.abs().sum(1) > 0  # (B, nx, ny)
    assert not lit[0].any()
    assert lit[1, ix // s, iy // s]
    cells = lit[1].nonzero()
    assert (cells - torch.tensor([ix // s, iy // s])).abs().max() <= 2
    assert not lit[1, iy // s, ix // s]  # x and y not swapped


def test_output_shape_and_channels_from_the_config():
    cfg = load_config("tiny")
    encoder = SparseEncoder(cfg)
    # z: 16 voxels + 1 (sparse_shape) = 17 -> 8 -> 4 -> output conv 2; BEVFusion likewise ends with 2.
    assert encoder.out_channels == cfg.model.lidar_out_channels * 2
    assert encoder.strides == [(2, 2, 2), (1, 1, 2)]  # tiny: 0.4 m voxels -> 0.8 m detection cells
    features, coords = random_voxels(cfg.geometry.voxel_grid_shape, 2, 300, seed=6)
    with torch.no_grad():
        out = encoder(features, coords, 2)
    assert out.shape == (2, encoder.out_channels, *cfg.geometry.det_grid.shape)
    base = SparseEncoder(load_config("base"))  # 41 -> 20 -> 10 -> 5 -> 2, x/y stride 8: 1440 -> 180
    assert base.out_channels == 128 * 2 and base.strides == [(2, 2, 2)] * 3


def test_backward_on_cpu():
    torch.manual_seed(7)
    encoder = SparseEncoder(small_config()).train()
    features, coords = random_voxels((32, 24, 16), 2, 150, seed=8)
    features.requires_grad_(True)
    encoder(features, coords, 2).square().mean().backward()
    first = encoder.conv_input[0].weight.grad
    assert first is not None and bool(first.abs().sum() > 0)
    for name, p in encoder.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert bool(torch.isfinite(features.grad).all()) and bool(features.grad.abs().sum() > 0)


def test_encoder_runs_in_float32_with_autocast_off_inside_an_autocast_region():
    """The mixed-precision policy: under CUDA autocast spconv would cast to float16 (its functions are
    ``custom_fwd(cast_inputs=torch.float16)``). Inside the trainer's autocast region (here CPU
    bfloat16, the same mechanism) every sparse layer sees autocast off and float32 features, and the
    output is the float32 one exactly."""
    torch.manual_seed(7)
    encoder = SparseEncoder(small_config()).eval()
    features, coords = random_voxels((32, 24, 16), 2, 150, seed=8)
    seen = []
    for module in encoder.modules():
        if isinstance(module, spconv.conv.SparseConvolution):
            module.register_forward_pre_hook(
                lambda m, args: seen.append((torch.is_autocast_enabled("cpu"), args[0].features.dtype)))
    with torch.no_grad():
        want = encoder(features, coords, 2)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = encoder(features.bfloat16(), coords, 2)
    assert seen and set(seen) == {(False, torch.float32)}
    assert got.dtype == torch.float32 and torch.equal(got, encoder(features.bfloat16().float(), coords, 2))
    assert torch.allclose(got, want, rtol=1e-2, atol=1e-2)


def test_empty_batch_gives_zeros_and_zero_gradients():
    encoder = SparseEncoder(small_config()).train()
    out = encoder(torch.zeros(0, 5), torch.zeros(0, 4, dtype=torch.int32), 3)
    assert out.shape == (3, encoder.out_channels, 16, 12) and not out.any()
    out.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in encoder.parameters())


@pytest.mark.parametrize("features, coords, batch_size, message", [
    (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int32), 1, r"features: expected \(V, 5\)"),
    (torch.zeros(2, 5), torch.zeros(2, 4, dtype=torch.int64), 1, r"coords: expected \(2, 4\) int32"),
    (torch.zeros(2, 5), torch.zeros(3, 4, dtype=torch.int32), 1, r"coords: expected \(2, 4\) int32"),
    (torch.zeros(1, 5), torch.tensor([[0, 32, 0, 0]], dtype=torch.int32), 1,
     r"coords: expected 0 <= .* < \(1, 32, 24, 17\)"),
    (torch.zeros(1, 5), torch.tensor([[1, 0, 0, 0]], dtype=torch.int32), 1, "coords: expected 0 <= "),
    (torch.zeros(1, 5), torch.zeros(1, 4, dtype=torch.int32), 0, "batch_size: expected an integer >= 1, got 0"),
])
def test_bad_inputs_are_named(features, coords, batch_size, message):
    with pytest.raises(ValueError, match=message):
        SparseEncoder(small_config())(features, coords, batch_size)


CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available() or not spconv_compat.CPU_ONLY_BUILD,
                              reason="the spconv fixes apply to its CPU-only build on machines without CUDA")


@CPU_ONLY
def test_spconv_stream_patch_is_needed_and_applied():
    with pytest.raises((AssertionError, RuntimeError)):  # spconv's own stream lookup needs CUDA
        spconv_cppcore.get_current_stream()
    assert spconv_compat.SPCONV_CPU_PATCHED
    assert spconv_ops.get_current_stream() == 0
    patched = (spconv_ops.get_current_stream, spconv_ops.SpconvOps)
    assert spconv_compat.patch_spconv_cpu()
    assert (spconv_ops.get_current_stream, spconv_ops.SpconvOps) == patched  # idempotent


@CPU_ONLY
def test_spconv_cpu_scatter_add_is_exact_on_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # spconv's own loop races from 2 threads on
    try:
        gen = torch.Generator().manual_seed(9)
        for _ in range(200):
            index = torch.randperm(4000, generator=gen)[:3000].int()
            source = torch.randn(3100, 32, generator=gen)  # longer than the index, as spconv's buffers are
            out = torch.randn(4000, 32, generator=gen)
            want = out.double().index_add(0, index.long(), source[:3000].double())
            spconv_ops.SpconvOps.scatter_add_cpu(*map(torch_tensor_to_tv, (out, source, index)))
            torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cpu_only_build", [False, True])
def test_spconv_patch_on_cuda_machines(monkeypatch, cpu_only_build):
    """With CUDA the stream lookup is never replaced; spconv-cu12x is not touched at all."""
    monkeypatch.setattr(spconv_ops, "get_current_stream", spconv_cppcore.get_current_stream)
    monkeypatch.setattr(spconv_ops, "SpconvOps", SpconvOps)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(spconv_compat, "CPU_ONLY_BUILD", cpu_only_build)
    assert spconv_compat.patch_spconv_cpu() == cpu_only_build
    assert spconv_ops.get_current_stream is spconv_cppcore.get_current_stream
    assert (spconv_ops.SpconvOps is SpconvOps) != cpu_only_build
