"""Data-parallel calibration: two gloo ranks on half batches equal one process on the whole batch.

Each rank runs the calibrated backward (IMTL-G, modality balance on) on its half of the batch with
per-rank mean losses, then averages gradients; the result must equal, on both ranks, one process
doing the calibrated backward on the whole batch. The same holds for parameter-level PCGrad.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fuller.train.calibration import GradientCalibrator, ModalityGradientBalance, parameter_pcgrad_backward

TASKS = ["det", "map"]
BATCH = 4  # whole batch; each of the two ranks takes half


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cam = nn.Conv2d(2, 3, 3, padding=1)
        self.lid = nn.Conv2d(3, 3, 1)
        self.fuse = nn.Conv2d(6, 4, 3, padding=1)
        self.det = nn.Sequential(nn.Conv2d(4, 3, 1), nn.Tanh(), nn.Conv2d(3, 2, 1))
        self.map = nn.Conv2d(4, 3, 1)
        self.balance = ModalityGradientBalance("mean")
        self.double()

    def trunk(self, xc, xl):
        c, l = self.balance(torch.tanh(self.cam(xc)), torch.tanh(self.lid(xl)))
        return torch.tanh(self.fuse(torch.cat([c, l], 1)))

    def losses(self, z, y):
        return {"det": ((self.det(z) - y["det"]) ** 2).mean(),
                "map": F.binary_cross_entropy_with_logits(self.map(z), y["map"])}

    def head_params(self):
        return {"det": list(self.det.parameters()), "map": list(self.map.parameters())}

    def trunk_params(self):
        return [*self.cam.parameters(), *self.lid.parameters(), *self.fuse.parameters()]


def data(lo: int, hi: int):
    g = torch.Generator().manual_seed(5)
    xc = torch.randn(BATCH, 2, 5, 5, generator=g, dtype=torch.float64)
    xl = torch.randn(BATCH, 3, 5, 5, generator=g, dtype=torch.float64) * 3
    y = {"det": torch.randn(BATCH, 2, 5, 5, generator=g, dtype=torch.float64),
         "map": (torch.rand(BATCH, 3, 5, 5, generator=g, dtype=torch.float64) > 0.5).double()}
    return (xc[lo:hi], xl[lo:hi]), {k: v[lo:hi] for k, v in y.items()}


def average_gradients(model: nn.Module) -> None:
    """The trainer's part under data parallelism: every gradient replaced by its mean over ranks."""
    if dist.is_initialized():
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def run(lo: int, hi: int) -> dict:
    """Calibrated backward, gradient averaging, then parameter-level PCGrad: what each run records."""
    model = Toy()
    cal = GradientCalibrator(TASKS, "imtl")
    x, y = data(lo, hi)
    diag = cal.backward(model.trunk(*x), lambda zd: model.losses(zd, y), model.head_params(), 3, model.balance)
    average_gradients(model)
    out = {"diag": diag, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    model.zero_grad(set_to_none=True)
    pc = parameter_pcgrad_backward(model.losses(model.trunk(*x), y), model.trunk_params(), model.head_params(), 1, 2)
    average_gradients(model)
    out.update(pc_diag=pc, pc_grads={n: p.grad.clone() for n, p in model.named_parameters()})
    return out


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half = BATCH // world
        torch.save(run(rank * half, (rank + 1) * half), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
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
