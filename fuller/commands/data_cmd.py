"""``fuller make-data``: write a synthetic nuScenes-format dataset (see fuller/synth); ``fuller check-data``:
validate a nuScenes root (real or synthetic) before training on it (see fuller/data/check.py)."""
from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from fuller.errors import UserInputError

if TYPE_CHECKING:
    from fuller.data.check import CheckReport
    from fuller.synth.generate import SynthOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    from fuller.synth.generate import WORLDS, SynthOptions

    d = SynthOptions()
    p = subparsers.add_parser("make-data", help="write a synthetic nuScenes-format dataset",
                              description="Simulate scenes in a synthetic town and write them as a nuScenes "
                                          "dataset that the devkit opens unchanged.")
    p.add_argument("--out", required=True, help="output dataset root (must be empty or absent)")
    p.add_argument("--scenes", type=int, default=d.scenes, help=f"number of scenes (default {d.scenes})")
    p.add_argument("--samples-per-scene", type=int, default=d.samples_per_scene,
                   help=f"keyframes per scene, 2 Hz (default {d.samples_per_scene})")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed; same seed, same bytes")
    n = SynthOptions(rates="nuscenes")
    p.add_argument("--sweeps-per-sample", type=int, default=None,
                   help=f"non-key LiDAR sweeps between keyframes (default {d.sweeps_per_sample}, "
                        f"{n.sweeps_per_sample} with --nuscenes-rates)")
    p.add_argument("--image-scale", type=float, default=None,
                   help=f"camera resolution as a fraction of 1600x900 (default {d.image_scale}, "
                        f"{n.image_scale} with --nuscenes-rates)")
    p.add_argument("--nuscenes-rates", action="store_true",
                   help="nuScenes' rates and sizes: a 20 Hz LiDAR (9 sweeps between 2 Hz keyframes) and "
                        "1600x900 images (about 2.5x the time and 3x the size of the default)")
    p.add_argument("--azimuth-step", type=float, default=d.azimuth_step_deg,
                   help=f"LiDAR azimuth resolution in degrees (default {d.azimuth_step_deg})")
    p.add_argument("--version", default=d.version, choices=["v1.0-mini", "v1.0-trainval"],
                   help="table version; v1.0-trainval allows more than 10 scenes")
    p.add_argument("--density", type=float, default=d.density, help="scale of the number of agents")
    study = WORLDS["study"]
    w = p.add_argument_group("study world", "camera/LiDAR modality bias and det/map task conflict, for "
                             "gradient-calibration studies (docs/data.md); all off by default, all but --unmapped-yards "
                             "on with --study-world, whose values an explicit option below overrides")
    w.add_argument("--study-world", action="store_true",
                   help="the study world: every option of this group at its study value")
    w.add_argument("--lidar-ground-contrast", type=float, default=None,
                   help=f"how different ground intensities are from asphalt's in the LiDAR, 0..1 (default "
                        f"{d.lidar_ground_contrast}, {study['lidar_ground_contrast']} in the study world)")
    w.add_argument("--kerb-height", type=float, default=None,
                   help=f"walkways raised by this many metres in the LiDAR's geometry (default {d.kerb_height}, "
                        f"{study['kerb_height']} in the study world)")
    w.add_argument("--camera-conditions", choices=["clear", "varied"], default=None,
                   help="clear, or per scene clear 40 %%, night 30 %%, fog 30 %% with a per-image exposure "
                        f"(default {d.camera_conditions}, {study['camera_conditions']} in the study world)")
    w.add_argument("--equal-large-vehicle-intensity", action=argparse.BooleanOptionalAction, default=None,
                   help="trucks, buses, trailers and construction vehicles share one LiDAR intensity "
                        "(on in the study world)")
    w.add_argument("--objects-on-map", action=argparse.BooleanOptionalAction, default=None,
                   help="denser car parks, cars parked half on the kerb, pedestrians on the crossings "
                        "(on in the study world)")
    w.add_argument("--unmapped-yards", action=argparse.BooleanOptionalAction, default=None,
                   help="with --objects-on-map: rows of parked cars on unmapped grass yards, and car parks filled "
                        "only as far (car rows alone do not tell a car park; off in the study world)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=run)

    c = subparsers.add_parser("check-data", help="check a nuScenes root: tables, references, files, maps",
                              description="Check a nuScenes root without the devkit: every table present and "
                                          "parseable, references resolved, every sample_data file present and "
                                          "readable (LiDAR sizes, image headers), map expansion files. Lists "
                                          "every problem with its path; exit 2 if there is any.")
    c.add_argument("dir", help="dataset root (holds v1.0-*/, samples/, sweeps/, maps/)")
    c.add_argument("--version", default=None, help="table version, e.g. v1.0-mini or v1.0-trainval "
                                                   "(default: every v1.0-* folder of the root)")
    c.add_argument("--threads", type=int, default=8,
                   help="threads inspecting files (default 8: storage latency overlaps; 1 is fastest on cached files)")
    c.set_defaults(func=check)


def synth_options(args: argparse.Namespace) -> SynthOptions:
    """The options `make-data` was asked for (an explicit --sweeps-per-sample or --image-scale wins
    over --nuscenes-rates, an explicit study-world option over --study-world)."""
    from fuller.synth.generate import SynthOptions

    return SynthOptions(scenes=args.scenes, samples_per_scene=args.samples_per_scene, seed=args.seed,
                        sweeps_per_sample=args.sweeps_per_sample, image_scale=args.image_scale,
                        azimuth_step_deg=args.azimuth_step, version=args.version, density=args.density,
                        rates="nuscenes" if args.nuscenes_rates else "default",
                        world="study" if args.study_world else "default",
                        lidar_ground_contrast=args.lidar_ground_contrast, kerb_height=args.kerb_height,
                        camera_conditions=args.camera_conditions,
                        equal_large_vehicle_intensity=args.equal_large_vehicle_intensity,
                        objects_on_map=args.objects_on_map, unmapped_yards=args.unmapped_yards)


def run(args: argparse.Namespace) -> int:
    from fuller.synth.generate import make_dataset

    options = synth_options(args)
    try:
        options.validate()
    except ValueError as exc:
        raise UserInputError(str(exc)) from exc
    start = time.perf_counter()
    summary = make_dataset(args.out, options, workers=args.workers)
    print(f"wrote {summary['scenes']} scenes, {summary['samples']} samples, {summary['annotations']} annotations "
          f"to {summary['dataroot']} ({summary['version']}) in {time.perf_counter() - start:.1f} s")
    return 0


def check(args: argparse.Namespace) -> int:
    """Summary, then every problem on its own line; exit 2 if there is any, so a script can gate a training."""
    from fuller.data.check import check_dataset

    start = time.perf_counter()
    reports = check_dataset(args.dir, args.version, threads=args.threads)
    for report in reports:
        print(format_summary(report))
        for problem in report.problems:
            print(problem)
    problems = sum(len(r.problems) for r in reports)
    verdict = f"{problems} problem{'s' if problems != 1 else ''}" if problems else "no problems"
    print(f"{verdict} in {args.dir} (checked in {time.perf_counter() - start:.1f} s)")
    return 2 if problems else 0


def format_summary(report: CheckReport) -> str:
    """A report's summary as a small two-column table."""
    s = report.summary
    rows = [("root", report.root), ("version", report.version or "-"), ("scenes", f"{s.scenes:,}"),
            ("samples", f"{s.samples:,}"), ("key frames", f"{s.keyframes:,}"), ("sweeps", f"{s.sweeps:,}"),
            ("annotations", f"{s.annotations:,}"),
            ("locations", f"{len(s.locations)} ({', '.join(s.locations)})" if s.locations else "0"),
            ("files", f"{s.files:,}"), ("size", f"{human_bytes(s.bytes)} ({s.bytes:,} bytes)")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def human_bytes(n: int) -> str:
    """A byte count in the largest decimal unit that keeps it at 1 or more (as `du -h --si` would)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
