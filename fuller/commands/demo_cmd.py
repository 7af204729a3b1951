"""``fuller demo``: the whole flow on the embedded default, no download, no GPU.

Today: make the default synthetic dataset, open it with the nuScenes devkit, and draw samples.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the embedded synthetic default",
                              description="Make the default synthetic nuScenes-format dataset (reused if "
                                          "present), load it with the devkit, and write pictures of samples.")
    p.add_argument("--out", default="fuller_demo", help="working folder (default ./fuller_demo)")
    p.add_argument("--config", default="tiny", help="config name or YAML path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.synth.generate import SynthOptions, make_dataset
    from fuller.train.data import NuScenesDataset, open_nuscenes
    from fuller.train.data.pictures import draw_sample

    cfg = load_config(args.config)
    out = Path(args.out)
    data = out / "data"
    if (data / cfg.data.version / "sample.json").is_file():
        print(f"[1/3] reusing the dataset in {data}")
    else:
        print(f"[1/3] making the default synthetic dataset in {data}")
        make_dataset(data, SynthOptions(version=cfg.data.version))
    nusc = open_nuscenes(data, cfg.data.version)
    print(f"[2/3] the devkit reads {len(nusc.scene)} scenes, {len(nusc.sample)} samples, "
          f"{len(nusc.sample_annotation)} annotations, {len(nusc.sample_data)} sample_data records")
    pictures = []
    for split in (cfg.data.train_split, cfg.data.val_split):
        dataset = NuScenesDataset(cfg, data, split, transforms=[], nusc=nusc)
        pictures.append(draw_sample(dataset, len(dataset) // 2, out / f"sample_{split}.png"))
    print("[3/3] pictures: " + ", ".join(str(p) for p in pictures))
    return 0
