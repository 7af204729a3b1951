"""Data-parallel calibration: two gloo ranks on half batches equal one process on the whole batch.

Each rank runs the calibrated backward (IMTL-G, modality balance on) on its half of the batch with
per-rank mean losses, then averages gradients; the result must equal, on both ranks, one process
doing the calibrated backward on the whole batch. The same holds for parameter-level PCGrad.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fuller.train.calibration import GradientCalibrator, ModalityGradientBalance, parameter_pcgrad_backward
from fuller.train.parallel import average_gradients

from test_calibration import Toy  # the same toy camera/LiDAR trunk with two heads

TASKS = ["det", "map"]
BATCH = 4  # whole batch; each of the two ranks takes half


def data(lo: int, hi: int):
    g = torch.Generator().manual_seed(5)
    xc = torch.randn(BATCH, 2, 5, 5, generator=g, dtype=torch.float64)
    xl = torch.randn(BATCH, 3, 5, 5, generator=g, dtype=torch.float64) * 3
    y = {"det": torch.randn(BATCH, 2, 5, 5, generator=g, dtype=torch.float64),
         "map": (torch.rand(BATCH, 3, 5, 5, generator=g, dtype=torch.float64) > 0.5).double()}
    return (xc[lo:hi], xl[lo:hi]), {k: v[lo:hi] for k, v in y.items()}


def run(lo: int, hi: int) -> dict:
    """Calibrated backward, gradient averaging, then parameter-level PCGrad: what each run records."""
    model = Toy(ModalityGradientBalance("mean"))
    cal = GradientCalibrator(TASKS, "imtl")
    x, y = data(lo, hi)
    diag = cal.backward(model.trunk(*x), lambda zd: model.losses(zd, y), model.head_params(), 3, model.balance)
    average_gradients(list(model.parameters()))
    out = {"diag": diag, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    model.zero_grad(set_to_none=True)
    pc = parameter_pcgrad_backward(model.losses(model.trunk(*x), y), model.trunk_params(), model.head_params(), 1, 2)
    average_gradients(list(model.parameters()))
    out.update(pc_diag=pc, pc_grads={n: p.grad.clone() for n, p in model.named_parameters()})
    return out


def worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file store in the test's own folder: no TCP port to race other processes for.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world)
    try:
        half = BATCH // world
        torch.save(run(rank * half, (rank + 1) * half), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole = run(0, BATCH)

    for key in ("diag", "pc_diag"):
        assert ranks[0][key].keys() == whole[key].keys()
        for k, v in whole[key].items():
            assert ranks[0][key][k] == ranks[1][key][k], k  # every rank applied the same calibration
            assert ranks[0][key][k] == pytest.approx(v, rel=1e-10, abs=1e-12), k
    d = whole["diag"]
    assert d["modality/ratio"] != pytest.approx(1.0, rel=1e-2)  # the balance really rescaled something
    assert d["modality/camera_norm_after"] == pytest.approx(d["modality/lidar_norm_after"], rel=1e-12)
    for key in ("grads", "pc_grads"):
        for name, g in whole[key].items():
            assert torch.equal(ranks[0][key][name], ranks[1][key][name]), name
            assert torch.allclose(ranks[0][key][name], g, rtol=1e-10, atol=1e-13), name
