"""``fuller demo``: the whole flow on the embedded default, no download, no GPU.

Make the default synthetic dataset, check the devkit reads it, train a tiny FULLER model for a
short budget, evaluate it with the devkit and map IoU, and draw pictures. Every stage reuses what
an earlier demo in the same folder left behind, so a second run is quick.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the embedded synthetic default",
                              description="Make the default synthetic nuScenes-format dataset, train a tiny FULLER "
                                          "model on it (CPU is fine), evaluate it on mini_val with the nuScenes "
                                          "devkit and map IoU, and write pictures. Reuses earlier results in --out.")
    p.add_argument("--out", default="fuller_demo", help="working folder (default ./fuller_demo)")
    p.add_argument("--config", default="tiny", help="config name or YAML path")
    p.add_argument("--steps", type=int, default=200,
                   help="training steps (default 200: about 5 minutes on 2 CPU cores; 800 for the documented results)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.synth.generate import SynthOptions, make_dataset
    from fuller.train.data import NuScenesDataset, open_nuscenes
    from fuller.train.data.pictures import draw_sample
    from fuller.train.evaluation import format_table
    from fuller.train.predict import evaluate_model, load_model
    from fuller.train.trainer import CHECKPOINT, default_device, run_finished, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, [f"train.steps={args.steps}"])
    out = Path(args.out)
    data = out / "data"
    if (data / cfg.data.version / "sample.json").is_file():
        print(f"[1/5] reusing the dataset in {data}")
    else:
        print(f"[1/5] making the default synthetic dataset in {data}")
        make_dataset(data, SynthOptions(version=cfg.data.version))
    nusc = open_nuscenes(data, cfg.data.version)
    print(f"[2/5] the devkit reads {len(nusc.scene)} scenes, {len(nusc.sample)} samples, "
          f"{len(nusc.sample_annotation)} annotations; sample pictures:")
    for split in (cfg.data.train_split, cfg.data.val_split):
        dataset = NuScenesDataset(cfg, data, split, transforms=[], nusc=nusc)
        print(f"      {draw_sample(dataset, len(dataset) // 2, out / f'sample_{split}.png')}")

    run_dir = out / "run"
    ckpt = run_dir / CHECKPOINT
    if run_finished(run_dir, args.steps):
        print(f"[3/5] reusing the trained model {ckpt}")
    else:
        print(f"[3/5] training a {cfg.name} FULLER model for {args.steps} steps "
              f"(inter {cfg.train.inter}, intra {'on' if cfg.train.intra else 'off'}) in {run_dir}")
        train(cfg, data, run_dir, resume=ckpt.is_file())
    device = default_device()
    cfg, model = load_model(ckpt, device)
    print(f"[4/5] evaluating on {cfg.data.val_split} with the nuScenes devkit and map IoU")
    metrics = evaluate_model(model, cfg, data, cfg.data.val_split, out / "eval", device, nusc=nusc)
    print(format_table(metrics))
    print(f"[5/5] metrics: {out / 'eval' / 'metrics.json'}; BEV pictures of predictions vs ground truth: "
          f"{out / 'eval' / 'pictures'}; training curves: tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0
