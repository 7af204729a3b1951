"""``fuller show-sample``: one sample as a picture (BEV with map, points and boxes; six cameras)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show-sample", help="draw one sample: BEV view and the six cameras",
                              description="Draw a dataset sample: BEV (points, GT boxes, map layers) beside the "
                                          "six camera images with the boxes projected.")
    p.add_argument("--data", required=True, help="nuScenes dataset root")
    p.add_argument("--index", type=int, default=0, help="sample index within the split")
    p.add_argument("--split", default=None, help="split (default: the config's train split)")
    p.add_argument("--config", default="tiny", help="config name or YAML path (geometry, classes)")
    p.add_argument("--out", default="sample.png", help="output PNG path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.data import NuScenesDataset
    from fuller.data.pictures import draw_sample

    cfg = load_config(args.config)
    dataset = NuScenesDataset(cfg, args.data, args.split or cfg.data.train_split, transforms=[])
    out = draw_sample(dataset, args.index, args.out)
    print(f"wrote {out}")
    return 0
