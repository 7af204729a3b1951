"""``fuller make-data``: write a synthetic nuScenes-format dataset (see fuller/synth)."""
from __future__ import annotations

import argparse
import time

from fuller.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    from fuller.synth.generate import SynthOptions

    d = SynthOptions()
    p = subparsers.add_parser("make-data", help="write a synthetic nuScenes-format dataset",
                              description="Simulate scenes in a synthetic town and write them as a nuScenes "
                                          "dataset that the devkit opens unchanged.")
    p.add_argument("--out", required=True, help="output dataset root (must be empty or absent)")
    p.add_argument("--scenes", type=int, default=d.scenes, help=f"number of scenes (default {d.scenes})")
    p.add_argument("--samples-per-scene", type=int, default=d.samples_per_scene,
                   help=f"keyframes per scene, 2 Hz (default {d.samples_per_scene})")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed; same seed, same bytes")
    p.add_argument("--sweeps-per-sample", type=int, default=d.sweeps_per_sample,
                   help=f"non-key LiDAR sweeps between keyframes (default {d.sweeps_per_sample})")
    p.add_argument("--image-scale", type=float, default=d.image_scale,
                   help=f"camera resolution as a fraction of 1600x900 (default {d.image_scale})")
    p.add_argument("--azimuth-step", type=float, default=d.azimuth_step_deg,
                   help=f"LiDAR azimuth resolution in degrees (default {d.azimuth_step_deg})")
    p.add_argument("--version", default=d.version, choices=["v1.0-mini", "v1.0-trainval"],
                   help="table version; v1.0-trainval allows more than 10 scenes")
    p.add_argument("--density", type=float, default=d.density, help="scale of the number of agents")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fuller.synth.generate import SynthOptions, make_dataset

    options = SynthOptions(scenes=args.scenes, samples_per_scene=args.samples_per_scene, seed=args.seed,
                           sweeps_per_sample=args.sweeps_per_sample, image_scale=args.image_scale,
                           azimuth_step_deg=args.azimuth_step, version=args.version, density=args.density)
    try:
        options.validate()
    except ValueError as exc:
        raise UserInputError(str(exc)) from exc
    start = time.perf_counter()
    summary = make_dataset(args.out, options, workers=args.workers)
    print(f"wrote {summary['scenes']} scenes, {summary['samples']} samples, {summary['annotations']} annotations "
          f"to {summary['dataroot']} ({summary['version']}) in {time.perf_counter() - start:.1f} s")
    return 0
