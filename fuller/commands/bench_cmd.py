"""``fuller bench``: benchmarks that print tables (``train``: cost of gradient calibration)."""
from __future__ import annotations

import argparse
import tempfile


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


def run_train_bench(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.synth.generate import SynthOptions, make_dataset
    from fuller.train.bench import bench_train, format_bench
    from fuller.train.data import NuScenesDataset
    from fuller.train.trainer import default_device

    cfg = load_config(args.config, args.set)
    with tempfile.TemporaryDirectory(prefix="fuller-bench-") as tmp:
        root = args.data
        if root is None:
            root = tmp
            print(f"making a small synthetic dataset in {tmp}")
            make_dataset(tmp, SynthOptions(scenes=10, samples_per_scene=1, sweeps_per_sample=cfg.geometry.sweeps - 1,
                                           version=cfg.data.version), progress=False)
        dataset = NuScenesDataset(cfg, root, cfg.data.train_split)
        samples = [dataset[i] for i in range(min(cfg.train.batch_size, len(dataset)))]
    device = default_device()
    rows = bench_train(cfg, samples, rounds=args.rounds, warmup=args.warmup, device=device)
    print(format_bench(rows, cfg, len(samples), device))
    return 0
