"""The training loop: exact resume, the NaN/Inf guard, checkpoints, the sample schedule,
data-parallel equivalence and the command line."""
from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from fuller.cli import main
from fuller.config import INTER_METHODS, updated_config
from fuller.train.batching import Collator
from fuller.train.checkpoint import CheckpointError, load_checkpoint
from fuller.train.run_log import read_metrics
from fuller.train.sampler import StepBatchSampler
from fuller.train.trainer import Trainer, train, warmup_cosine

from conftest import SMALL_NETWORK


def params_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("inter, per_task_adam", [*((m, False) for m in INTER_METHODS), ("bounded", True)])
def test_resume_is_bit_exact(small_cfg, small_samples, tmp_path, inter, per_task_adam):
    """For every inter method: the calibrators that keep state (uncertainty's log variances, PCGrad's
    seeded orders) must resume it as exactly as the model and the optimiser; so must the per-task
    moments of train.per_task_adam."""
    cfg = updated_config(small_cfg, {"train.steps": 2, "train.checkpoint_every": 100, "train.inter": inter,
                                     "train.inter_weights": [1.0, 0.5] if inter == "static" else [],
                                     "train.per_task_adam": per_task_adam})
    straight = train(cfg, None, tmp_path / "straight", dataset=small_samples, progress=False)
    train(cfg, None, tmp_path / "split", dataset=small_samples, progress=False, stop_at=1)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")[1]["step"] == 1
    split = train(cfg, None, tmp_path / "split", dataset=small_samples, progress=False, resume=True)
    a, b = load_checkpoint(straight)[1], load_checkpoint(split)[1]
    assert a["step"] == b["step"] == 2
    assert params_equal(a["model"], b["model"]) and params_equal(a["calibrator"], b["calibrator"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][k]["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
    losses = lambda run: [(r["step"], r["loss/det"], r["loss/map"]) for r in read_metrics(tmp_path / run)]
    assert losses("straight") == losses("split") and len(losses("straight")) == 2


def test_metrics_hold_calibration_diagnostics(small_cfg, small_samples, tmp_path):
    cfg = updated_config(small_cfg, {"train.steps": 1})
    train(cfg, None, tmp_path / "run", dataset=small_samples, progress=False)
    (record,) = read_metrics(tmp_path / "run")
    for key in ("loss/det", "loss/map", "grad_norm/det", "grad_norm/map", "cos/det-map", "coef/det", "coef/map",
                "modality/camera_norm", "modality/lidar_norm", "modality/ratio", "modality/camera_norm_after",
                "modality/lidar_norm_after", "samples_per_s", "lr", "skipped_steps"):
        assert key in record, key
    assert math.isclose(record["coef/det"] + record["coef/map"], 1.0, rel_tol=1e-9)  # IMTL-G
    # IMTL-G closed form for two tasks: alpha_det = |g_map| / (|g_det| + |g_map|)
    g_det, g_map = record["grad_norm/det"], record["grad_norm/map"]
    assert math.isclose(record["coef/det"], g_map / (g_det + g_map), rel_tol=1e-6)
    assert math.isclose(record["modality/camera_norm_after"], record["modality/lidar_norm_after"], rel_tol=1e-5)
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_non_finite_step_is_skipped_and_counted(small_cfg, small_samples):
    trainer = Trainer.create(small_cfg, torch.device("cpu"))
    batch = Collator(small_cfg)(small_samples[:2])
    batch.inputs.images[0, 0, 0, :4, :4] = float("nan")
    before = copy.deepcopy(trainer.model.state_dict())
    record = trainer.train_step(batch)
    assert record["skipped_steps"] == 1 and trainer.step == 1
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "batches" not in k)
    assert all(p.grad is None for p in trainer.parameters())
    clean = Collator(small_cfg)(small_samples[:2])
    assert trainer.train_step(clean)["skipped_steps"] == 1


def test_checkpoint_errors_name_the_file(small_cfg, small_samples, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: expected a fuller-checkpoint-2 checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    cfg = updated_config(small_cfg, {"train.steps": 1})
    train(cfg, None, tmp_path / "run", dataset=small_samples, progress=False)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(cfg, None, tmp_path / "run", dataset=small_samples, progress=False)
    with pytest.raises(Exception, match="no checkpoint.pt to resume from"):
        train(cfg, None, tmp_path / "empty", dataset=small_samples, progress=False, resume=True)
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*.tmp"))


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "shared.pt"
    torch.save({"format": "fuller-checkpoint-2", "config": {}, "model": Payload()}, evil)
    with pytest.raises(CheckpointError, match="shared.pt: refused: its pickle calls code.*system"):
        load_checkpoint(evil)
    assert main(["export", "--checkpoint", str(evil), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shared.pt: refused" in err[0]
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


def test_checkpoint_with_missing_parts_names_them(tmp_path, small_cfg):
    from fuller.config import config_to_dict

    torch.save({"format": "fuller-checkpoint-2", "step": 3}, tmp_path / "nocfg.pt")
    with pytest.raises(CheckpointError, match="nocfg.pt: config: expected a dict, got nothing"):
        load_checkpoint(tmp_path / "nocfg.pt")
    bad_cfg = {**config_to_dict(small_cfg), "train": {"steps": "many"}}
    torch.save({"format": "fuller-checkpoint-2", "step": 3, "config": bad_cfg, "model": {}, "rng": {}},
               tmp_path / "badcfg.pt")
    with pytest.raises(CheckpointError, match="badcfg.pt: config: train.steps"):
        load_checkpoint(tmp_path / "badcfg.pt")


def test_rng_states_survive_a_device_map_location(small_cfg, tmp_path):
    """A CUDA resume loads with map_location=cuda, which moves every tensor of the file to the GPU;
    torch.set_rng_state then refuses a GPU ByteTensor. Here 'meta' plays the GPU: the RNG states must
    come back exactly whatever device the tensors were mapped to."""
    import random

    import numpy as np

    from fuller.train.checkpoint import restore_rng_states, save_checkpoint

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    path = save_checkpoint(tmp_path / "c.pt", small_cfg, 0, model={"w": torch.ones(2)})
    want = (torch.rand(3), np.random.rand(3), random.random())
    _, payload = load_checkpoint(path, map_location="meta")
    assert payload["model"]["w"].device.type == "meta"
    restore_rng_states(payload["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_sample_schedule_is_a_function_of_the_step():
    full = list(StepBatchSampler(10, 3, seed=1, start=0, stop=8))
    assert list(StepBatchSampler(10, 3, seed=1, start=5, stop=8)) == full[5:]
    flat = [i for b in full for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # whole epochs
    ranks = [list(StepBatchSampler(10, 2, seed=1, start=0, stop=5, rank=r, world_size=2)) for r in range(2)]
    one = list(StepBatchSampler(10, 4, seed=1, start=0, stop=5))
    assert [a + b for a, b in zip(*ranks)] == one  # two ranks read what one process with 2x batch reads


def test_warmup_cosine_schedule():
    f = warmup_cosine(warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(f(9), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(f(14), 0.1) and math.isclose(f(100), 0.1)


def _ddp_worker(rank: int, store: str, cfg, samples, out) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    # A file store in the test's own folder: no TCP port to race other processes for.
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    trainer = Trainer.create(cfg, torch.device("cpu"))
    record = trainer.backward(Collator(cfg)([samples[rank]]))
    grads = {n: p.grad.numpy().copy() for n, p in trainer.model.named_parameters()}
    trainer.update(record)
    out.put((rank, record, grads, {k: v.numpy().copy() for k, v in trainer.model.state_dict().items()}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_equals_one_process_on_the_whole_batch(small_cfg, small_samples, tmp_path):
    # Batch-independent normalisation (BatchNorm statistics are per process).
    cfg = updated_config(small_cfg, {"model.norm": "gn", "train.batch_size": 1})
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    store = str(tmp_path / "store")
    procs = [ctx.Process(target=_ddp_worker, args=(r, store, cfg, small_samples, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, rest) for r, *rest in (queue.get(timeout=300) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (rec0, grads0, state0), (rec1, grads1, state1) = results[0], results[1]
    assert state0.keys() == state1.keys() and all((state0[k] == state1[k]).all() for k in state0)
    assert rec0["coef/det"] == rec1["coef/det"] and rec0["modality/camera_scale"] == rec1["modality/camera_scale"]

    whole = Trainer.create(cfg, torch.device("cpu"))
    record = whole.backward(Collator(cfg)(small_samples[:2]))
    assert math.isclose(record["coef/det"], rec0["coef/det"], rel_tol=1e-4)
    for name, p in whole.model.named_parameters():
        # Both ranks hold the whole batch's gradient, per tensor to 5e-3 of its norm. Not closer: the
        # modality scale of two ranks and of one process agree to ~1e-4 (float32 norms of different
        # reductions), and the GroupNorm affine gradients, sums with heavy cancellation, reach 1.4e-3
        # when earlier tests have changed the convolutions' kernels and summation order. A missed
        # average (a factor 2) is far outside.
        for grads in (grads0, grads1):
            error = torch.linalg.vector_norm(torch.from_numpy(grads[name]) - p.grad)
            assert error <= 5e-3 * torch.linalg.vector_norm(p.grad) + 1e-12, name


def test_cli_train_then_eval(synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", synth_root, "--out", str(run), "--steps", "2", "--inter", "sum", "--intra", "off",
            "--set", *SMALL_NETWORK]
    assert main([*args, "--stop-at", "1"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")[1]["step"] == 1
    assert main([*args, "--resume"]) == 0
    record = read_metrics(run)[-1]
    assert record["step"] == 1 and record["coef/det"] == 1.0
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--data", synth_root, "--out",
                 str(tmp_path / "eval"), "--pictures", "1"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["detection"]["mAP"] <= 1 and "drivable_area" in metrics["map"]["iou_max"]
    assert "mAP" in capsys.readouterr().out
    assert len(list((tmp_path / "eval" / "pictures").glob("*.png"))) == 1
    assert main(["train", "--data", synth_root, "--out", str(run), "--steps", "2"]) == 2  # exists, no --resume


@pytest.mark.slow
def test_cli_ablate_and_bench_run_end_to_end(synth_root, tmp_path, capsys):
    """The ablation trains and evaluates each variant and tabulates deltas against naive; the
    benchmark times every method on one batch (wiring only: its numbers are machine-dependent)."""
    out = tmp_path / "ablation"
    assert main(["ablate", "--data", synth_root, "--steps", "1", "--out", str(out), "--only", "naive", "map_only",
                 "--set", *SMALL_NETWORK]) == 0
    rows = json.loads((out / "ablation.json").read_text())
    naive, map_only = rows
    assert naive["delta_mAP"] == 0 and map_only["mAP"] is None and map_only["mIoU"] is not None
    assert math.isclose(map_only["delta_mIoU"], map_only["mIoU"] - naive["mIoU"])
    assert "| Map only |" in capsys.readouterr().out
    assert main(["bench", "train", "--data", synth_root, "--rounds", "1", "--warmup", "0",
                 "--set", *SMALL_NETWORK]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.endswith(tuple("0123456789"))]
    assert [" ".join(r.split()[:3]) for r in rows[-4:]] == ["sum of losses", "FULLER: IMTL-G at",
                                                            "FULLER: IMTL-G +", "parameter-level PCGrad (reference)"]
    assert main(["bench", "data", "--config", "tiny", "--data", synth_root, "--workers", "0", "1",
                 "--batches", "2", "--set", *SMALL_NETWORK]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("0", "4"), ("1", "4")]  # workers, samples: 2 batches of 2
    assert all(float(r[2]) > 0 for r in rows)


def test_each_torchrun_process_takes_its_local_gpu_before_nccl_starts(monkeypatch):
    """Rank 3 of a 2-node x 2-GPU job is LOCAL_RANK 1 on its node: it must take cuda:1 (not
    3 % device_count) and make it current before the NCCL group starts, which binds to it. No GPU
    here, so the two CUDA/NCCL calls are recorded instead of made."""
    import torch.distributed as dist

    from fuller.train.parallel import init_from_env

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls) and calls[-1][0] == "init")
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend, kw.get("device_id"))))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    rank, world, device = init_from_env(torch.device("cuda"))
    assert (rank, world, device) == (3, 4, torch.device("cuda", 1))
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl", torch.device("cuda", 1))]
