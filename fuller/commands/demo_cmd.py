"""``fuller demo``: the whole flow on the embedded default, no download, no GPU.

Make the default synthetic dataset, check the devkit reads it, train a tiny FULLER model for a
short budget, evaluate it with the devkit and map IoU, and draw pictures; then export it to one
ONNX graph, run that graph with ONNX Runtime over the same split and print the parity table
against PyTorch. Every stage reuses what an earlier demo in the same folder left behind, so a
second run is quick.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the embedded synthetic default",
                              description="Make the default synthetic nuScenes-format dataset, train a tiny FULLER "
                                          "model on it (CPU is fine), evaluate it on mini_val with the nuScenes "
                                          "devkit and map IoU, write pictures, export it to ONNX and compare ONNX "
                                          "Runtime with PyTorch. Reuses earlier results in --out.")
    p.add_argument("--out", default="fuller_demo", help="working folder (default ./fuller_demo)")
    p.add_argument("--config", default="tiny", help="config name or YAML path")
    p.add_argument("--steps", type=int, default=200,
                   help="training steps (default 200: about 5 minutes on 2 CPU cores; 800 for the documented results)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.data import NuScenesDataset, open_nuscenes
    from fuller.data.pictures import draw_sample
    from fuller.engine.offline import run_parity
    from fuller.engine.parity import MAP_MAX_ABS, METRIC_POINTS, BoxTolerance
    from fuller.evaluation import format_table
    from fuller.export.graph import export_model
    from fuller.export.models import open_engine
    from fuller.synth.generate import SynthOptions, make_dataset
    from fuller.train.predict import evaluate_model, load_model
    from fuller.train.trainer import CHECKPOINT, default_device, run_finished, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, [f"train.steps={args.steps}"])
    out = Path(args.out)
    data = out / "data"
    if (data / cfg.data.version / "sample.json").is_file():
        print(f"[1/7] reusing the dataset in {data}")
    else:
        print(f"[1/7] making the default synthetic dataset in {data}")
        make_dataset(data, SynthOptions(version=cfg.data.version))
    nusc = open_nuscenes(data, cfg.data.version)
    print(f"[2/7] the devkit reads {len(nusc.scene)} scenes, {len(nusc.sample)} samples, "
          f"{len(nusc.sample_annotation)} annotations; sample pictures:")
    for split in (cfg.data.train_split, cfg.data.val_split):
        dataset = NuScenesDataset(cfg, data, split, transforms=[], nusc=nusc)
        print(f"      {draw_sample(dataset, len(dataset) // 2, out / f'sample_{split}.png')}")

    run_dir = out / "run"
    ckpt = run_dir / CHECKPOINT
    if run_finished(run_dir, args.steps):
        print(f"[3/7] reusing the trained model {ckpt}")
    else:
        print(f"[3/7] training a {cfg.name} FULLER model for {args.steps} steps "
              f"(inter {cfg.train.inter}, intra {'on' if cfg.train.intra else 'off'}) in {run_dir}")
        train(cfg, data, run_dir, resume=ckpt.is_file())
    device = default_device()
    cfg, model = load_model(ckpt, device)
    print(f"[4/7] evaluating on {cfg.data.val_split} with the nuScenes devkit and map IoU")
    metrics = evaluate_model(model, cfg, data, cfg.data.val_split, out / "eval", device, nusc=nusc)
    print(format_table(metrics))
    print(f"      metrics: {out / 'eval' / 'metrics.json'}; BEV pictures of predictions vs ground truth: "
          f"{out / 'eval' / 'pictures'}; training curves: tensorboard --logdir {run_dir / 'tensorboard'}")

    onnx_path = out / "export" / "fuller.onnx"
    print(f"[5/7] exporting one ONNX graph (fuller::BevPool and the sparse index ops) to {onnx_path}")
    export_model(model.cpu(), cfg, onnx_path, step=args.steps)
    print(f"[6/7] ONNX Runtime vs PyTorch on {cfg.data.val_split}, same inputs, both scored by the devkit")
    report = run_parity(open_engine(ckpt), open_engine(onnx_path), data, cfg.data.val_split, out / "parity",
                        MAP_MAX_ABS, BoxTolerance(), METRIC_POINTS, nusc=nusc)
    print(report.table)
    print(f"[7/7] ONNX Runtime pictures: {out / 'parity' / 'onnxruntime' / 'pictures'}; parity "
          + ("FAILED: " + "; ".join(report.failures) if report.failures else "passed")
          + f" ({out / 'parity' / 'parity.json'})")
    return 1 if report.failures else 0
