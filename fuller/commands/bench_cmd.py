"""``fuller bench``: benchmarks that print tables (``train``: cost of gradient calibration; ``data``:
samples/s of the training loader; ``infer``: per-stage latency of the inference backends)."""
from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (training-step cost of calibration)")
    kinds = p.add_subparsers(dest="bench", metavar="KIND", required=True)
    t = kinds.add_parser(
        "train", help="median step time: sum vs FULLER vs parameter-level PCGrad",
        description="Times training steps of plain summed losses, FULLER (IMTL-G at the shared representation "
                    "+ intra-modality norms) and parameter-level PCGrad side by side on one fixed batch, and "
                    "prints the ratios to sum.")
    t.add_argument("--config", default="tiny", help="config name or YAML path (default tiny)")
    t.add_argument("--data", help="nuScenes root to take the batch from (default: a small synthetic set "
                                  "made in a temporary folder)")
    t.add_argument("--rounds", type=int, default=10, help="timed rounds per method (default 10)")
    t.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    t.set_defaults(func=run_train_bench)

    d = kinds.add_parser(
        "data", help="samples/s of the training loader (is a step loader-bound?)",
        description="Reads batches through the training loader (dataset, transforms, map rasterisation, "
                    "voxelisation, BEV-pool geometry, collation) with the config's worker processes, or each "
                    "count given, and prints samples/s beside the step time that would keep up with it.")
    d.add_argument("--config", default="base", help="config name or YAML path (default base)")
    d.add_argument("--data", help="nuScenes root (default: a synthetic set at nuScenes rates and sizes, 20 Hz "
                                  "LiDAR and 1600x900 images, made in a temporary folder)")
    d.add_argument("--split", default=None, help="split (default: the config's train split)")
    d.add_argument("--workers", type=int, nargs="*", default=None,
                   help="worker counts to compare (default: the config's train.num_workers)")
    d.add_argument("--batches", type=int, default=4, help="timed batches per row (default 4)")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    d.set_defaults(func=run_data_bench)

    i = kinds.add_parser(
        "infer", help="per-stage latency: PyTorch vs ONNX Runtime (vs TensorRT) side by side",
        description="Loads frames once, then runs every backend on each frame in turn and prints per-stage and "
                    "end-to-end median/p95 latency and frames per second, with versions and hardware. A CUDA "
                    "PyTorch row is added when a GPU is present.")
    i.add_argument("--checkpoint", help="checkpoint.pt: PyTorch rows (CPU, and CUDA when available)")
    i.add_argument("--model", action="append", default=[], help="model.onnx or model.engine (repeatable)")
    i.add_argument("--data", help="nuScenes root to take frames from (default: a small synthetic set made in a "
                                  "temporary folder)")
    i.add_argument("--split", default=None, help="split to take frames from (default: the config's val split)")
    i.add_argument("--frames", type=int, default=4, help="distinct frames to cycle through (default 4)")
    i.add_argument("--rounds", type=int, default=20, help="timed frames per backend (default 20)")
    i.add_argument("--warmup", type=int, default=3, help="untimed frames first (default 3)")
    i.set_defaults(func=run_infer_bench)


@contextlib.contextmanager
def bench_data(data: str | None, options, what: str = "a small synthetic dataset"):
    """``data``, or a synthetic dataset made with ``options`` in a temporary folder for the run."""
    if data is not None:
        yield data
        return
    from fuller.synth.generate import make_dataset

    with tempfile.TemporaryDirectory(prefix="fuller-bench-") as tmp:
        print(f"making {what} in {tmp}")
        make_dataset(tmp, options, progress=False)
        yield tmp


def small_set(cfg):
    """Two keyframes (the fewest a scene holds) per mini scene, with the config's sweeps: enough for
    a batch or a few frames."""
    from fuller.synth.generate import SynthOptions

    return SynthOptions(scenes=10, samples_per_scene=2, sweeps_per_sample=cfg.geometry.sweeps - 1,
                        version=cfg.data.version)


def run_train_bench(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.train.bench import bench_train, format_bench
    from fuller.data import NuScenesDataset
    from fuller.train.trainer import default_device

    cfg = load_config(args.config, args.set)
    with bench_data(args.data, small_set(cfg)) as root:
        dataset = NuScenesDataset(cfg, root, cfg.data.train_split)
        samples = [dataset[i] for i in range(min(cfg.train.batch_size, len(dataset)))]
    device = default_device()
    rows = bench_train(cfg, samples, rounds=args.rounds, warmup=args.warmup, device=device)
    print(format_bench(rows, cfg, len(samples), device))
    return 0


def run_data_bench(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.train.loader_bench import bench_loader, format_loader_bench

    cfg = load_config(args.config, args.set)
    counts = args.workers if args.workers else [cfg.train.num_workers]
    from fuller.synth.generate import SynthOptions

    nuscenes_rates = SynthOptions(scenes=10, samples_per_scene=2, rates="nuscenes", version=cfg.data.version)
    with bench_data(args.data, nuscenes_rates, "a synthetic dataset at nuScenes rates and sizes (minutes)") as root:
        split = args.split or cfg.data.train_split
        rows = [bench_loader(cfg, root, split, workers, args.batches) for workers in counts]
        print(format_loader_bench(rows, cfg, args.data or "synthetic, nuScenes rates"))
    return 0


def run_infer_bench(args: argparse.Namespace) -> int:
    import logging

    from fuller.data import NuScenesDataset
    from fuller.engine.bench import bench_engines, format_bench
    from fuller.engine.offline import frames
    from fuller.errors import UserInputError
    from fuller.export.models import open_engine

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.checkpoint and not args.model:
        raise UserInputError("bench infer: give --checkpoint and/or --model")
    engines = {}
    if args.checkpoint:
        engines["pytorch (cpu)"] = open_engine(args.checkpoint)
        import torch
        if torch.cuda.is_available():
            engines["pytorch (cuda)"] = open_engine(args.checkpoint, device="cuda")
    for path in args.model:
        engine = open_engine(path)
        name = engine.backend.name
        engines[name if name not in engines else f"{name} ({Path(path).name})"] = engine
    cfg = next(iter(engines.values())).config
    with bench_data(args.data, small_set(cfg)) as root:
        dataset = NuScenesDataset(cfg, root, args.split or cfg.data.val_split)
        loaded = []
        for _, calibration, sample in frames(dataset, progress=False):
            loaded.append((calibration, sample.images, sample.points))
            if len(loaded) == args.frames:
                break
    results = bench_engines(engines, loaded, args.rounds, args.warmup)
    reference = "pytorch (cpu)" if "pytorch (cpu)" in engines else None
    print(format_bench(results, {name: e.describe() for name, e in engines.items()}, reference))
    return 0
