"""``fuller selftest --gpu``: the GPU acceptance run, one call, one markdown table.

Rows: the Triton kernels compiled (not interpreted) against their float64 references (the GPU cases
of tests/test_gpu_kernels.py); a `base` training run under bfloat16 autocast stopped half way and
resumed on CUDA, against the same run straight through; `bench train` at base scale (sum, FULLER,
parameter-level PCGrad); the PyTorch CUDA engine's per-stage latency at base scale (preprocessing,
voxelisation and decoding included). Without a CUDA GPU it says so in one line and exits 2.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESUME_STEPS, RESUME_STOP = 6, 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "selftest", help="acceptance checks on this machine (--gpu: the GPU run, one table)",
        description="With --gpu: the Triton kernels compiled against their float64 references, base-scale "
                    "training under bf16 autocast with a stop and a CUDA resume, bench train at base scale and "
                    "the PyTorch CUDA engine's per-stage latency; writes one markdown table (a few minutes on "
                    "one H200). Without a CUDA GPU it says so and exits 2.")
    p.add_argument("--gpu", action="store_true", required=True, help="run the GPU acceptance checks")
    p.add_argument("--out", default="selftest_gpu.md", help="markdown table to write (default selftest_gpu.md)")
    p.add_argument("--work", default="selftest_work", help="folder for data, runs and checkpoints")
    p.set_defaults(func=run)


def kernel_tests() -> str:
    """The GPU kernel tests in a fresh process: on a GPU they launch compiled kernels."""
    tests = REPO / "tests" / "test_gpu_kernels.py"
    if not tests.is_file():
        return f"not run: {tests} not found (run the selftest from a checkout)"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=REPO,
                          capture_output=True, text=True)
    last = re.sub(r"=+", "", (done.stdout.strip().splitlines() or ["no output"])[-1]).strip()
    return ("passed: " if done.returncode == 0 else "FAILED: ") + last


def resume_check(cfg, data: Path, out: Path) -> str:
    """Straight run against one stopped at RESUME_STOP and resumed, bf16 autocast on CUDA."""
    from fuller.config import updated_config
    from fuller.train.checkpoint import load_checkpoint
    from fuller.train.trainer import train

    cfg = updated_config(cfg, {"train.steps": RESUME_STEPS, "train.checkpoint_every": RESUME_STEPS,
                               "train.log_every": 1, "train.amp": True})
    straight = train(cfg, data, out / "straight", progress=False)
    train(cfg, data, out / "split", progress=False, stop_at=RESUME_STOP)
    split = train(cfg, data, out / "split", progress=False, resume=True)
    a, b = load_checkpoint(straight)[1]["model"], load_checkpoint(split)[1]["model"]
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    return (f"{'bit-exact' if worst == 0.0 else 'differs'}: {RESUME_STEPS} steps straight vs stopped at "
            f"{RESUME_STOP} and resumed, max abs parameter difference {worst:.3g}")


def train_bench(cfg, data: Path, device) -> list[tuple[str, str]]:
    from fuller.data import NuScenesDataset
    from fuller.train.bench import bench_train

    dataset = NuScenesDataset(cfg, data, cfg.data.train_split)
    samples = [dataset[i] for i in range(cfg.train.batch_size)]
    rows = bench_train(cfg, samples, rounds=5, warmup=2, device=device)
    return [(f"bench train, batch {len(samples)}: {r['label']}",
             f"{r['median_s'] * 1000:.0f} ms median, {r['ratio']:.2f} x sum") for r in rows]


def inference_latency(checkpoint: Path, data: Path, cfg) -> list[tuple[str, str]]:
    from fuller.data import NuScenesDataset
    from fuller.engine.bench import bench_engines
    from fuller.engine.offline import frames
    from fuller.export.models import open_engine

    engine = open_engine(checkpoint, device="cuda")
    loaded = [(c, s.images, s.points) for _, c, s in frames(NuScenesDataset(cfg, data, cfg.data.val_split),
                                                            progress=False)][:4]
    summary = bench_engines({"cuda": engine}, loaded, rounds=20, warmup=3, progress=False)["cuda"]
    return [(f"PyTorch CUDA inference: {stage}", f"{s['median_ms']:.1f} ms median, {s['p95_ms']:.1f} ms p95")
            for stage, s in summary.items()]


def make_data(data: Path) -> str:
    from fuller.synth.generate import SynthOptions, make_dataset

    summary = make_dataset(data, SynthOptions(scenes=10, samples_per_scene=2), progress=False)
    return f"{summary['samples']} samples in {data}"


def timed(rows: list, label: str, fn, *args) -> None:
    """Run one stage and add its rows (a stage returns one result string or (label, result) pairs)."""
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    for name, value in ([(label, result)] if isinstance(result, str) else result):
        rows.append(f"| {name} | {value} | {seconds:.0f} |")


def run(args: argparse.Namespace) -> int:
    import torch

    from fuller.config import load_config
    from fuller.errors import UserInputError

    if not torch.cuda.is_available():
        raise UserInputError("selftest --gpu: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
                             "run it on a machine with an NVIDIA GPU and a CUDA build of torch")
    device, work = torch.device("cuda", 0), Path(args.work)
    cfg, data, rows = load_config("base"), work / "data", []
    if not (data / cfg.data.version / "sample.json").is_file():
        timed(rows, "synthetic data, 10 scenes x 2 samples", make_data, data)
    timed(rows, "GPU kernels, Triton compiled, vs float64 references", kernel_tests)
    timed(rows, "base training, bf16 autocast, stop and CUDA resume", resume_check, cfg, data, work / "resume")
    timed(rows, "bench train", train_bench, cfg, data, device)
    timed(rows, "inference", inference_latency, work / "resume" / "straight" / "checkpoint.pt", data, cfg)
    table = "\n".join([f"GPU selftest: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA "
                       f"{torch.version.cuda}, config base", "", "| check | result | s |", "|---|---|---:|", *rows])
    Path(args.out).write_text(table + "\n")
    print(table)
    print(f"table: {args.out}")
    return 0
