"""``fuller nusc2bag`` (a nuScenes scene -> ROS 2 bag) and ``fuller replay`` (a bag through the
perception node's pipeline, offline, outputs written next to the inputs)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "nusc2bag", help="write a nuScenes scene as a ROS 2 bag (.mcap)",
        description="Write one scene (LiDAR sweeps as PointCloud2, cameras as CompressedImage + CameraInfo, /tf ego "
                    "poses, /tf_static extrinsics, annotated boxes as markers) to an MCAP file that Foxglove, RViz "
                    "and `ros2 bag play` read, with the topic names the perception node expects.")
    p.add_argument("--data", required=True, help="nuScenes dataset root (real or `fuller make-data`)")
    p.add_argument("--scene", required=True, help="scene name, e.g. scene-0103")
    p.add_argument("--out", required=True, help="the .mcap file to write")
    p.add_argument("--version", default="v1.0-mini", help="table version (default v1.0-mini)")
    p.set_defaults(func=run_nusc2bag)

    q = subparsers.add_parser(
        "replay", help="run the perception node's pipeline over a bag, offline",
        description="Feed every message of a ROS 2 bag (.mcap or rosbag2 folder), in order, to the perception "
                    "node's processing (same synchronisation, TF, conversions and engine), and write a new MCAP "
                    "holding the input messages and the node's outputs: detections, markers, map grids, latency "
                    "and diagnostics.")
    q.add_argument("--bag", required=True, help="input bag: .mcap file or rosbag2 folder")
    q.add_argument("--model", required=True, help="model.engine, model.onnx or checkpoint.pt")
    q.add_argument("--out", required=True, help="the .mcap file to write")
    q.add_argument("--device", default="cpu", help="device of the PyTorch backend (default cpu)")
    q.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a node parameter (repeatable), e.g. --param missing_camera=blank; values are YAML")
    q.set_defaults(func=run_replay)


def run_nusc2bag(args: argparse.Namespace) -> int:
    from nuscenes import NuScenes

    from fuller.errors import UserInputError
    from fuller.ros2_node.nusc2bag import scene_to_bag

    tables = Path(args.data) / args.version
    if not tables.is_dir():
        raise UserInputError(f"{tables}: no nuScenes tables (expected --data ROOT with ROOT/{args.version}/)")
    nusc = NuScenes(version=args.version, dataroot=args.data, verbose=False)
    counts = scene_to_bag(nusc, args.scene, args.out)
    width = max(map(len, counts))
    print(f"wrote {args.out}: {sum(counts.values())} messages")
    for topic, n in sorted(counts.items()):
        print(f"  {topic:<{width}}  {n:>5}")
    return 0


def parse_params(pairs: list[str]) -> dict:
    import yaml

    from fuller.errors import UserInputError

    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserInputError(f"--param {pair!r}: expected NAME=VALUE")
        values[name.strip()] = yaml.safe_load(value)
    return values


def run_replay(args: argparse.Namespace) -> int:
    from fuller.export.models import open_engine
    from fuller.ros2_node.params import NodeParams
    from fuller.ros2_node.replay import replay

    params = NodeParams.from_mapping({"model": args.model, "device": args.device, **parse_params(args.param)})
    engine = open_engine(args.model, params.device, score_threshold=params.score_threshold,
                         map_threshold=params.map_threshold)
    report = replay(args.bag, engine, params, args.out)
    print(f"wrote {report.out}: {report.messages} input messages and the node's outputs")
    print(f"frames: {report.frames} in {report.seconds:.1f} s ({report.frames_per_second:.2f} frames/s, "
          f"{engine.describe()})")
    print(f"clouds between camera frames (not frames): {report.clouds_without_cameras}")
    drops = {k: v for k, v in sorted(report.counters.items()) if k.startswith("dropped_") or k == "blanked_cameras"}
    for name, count in drops.items():
        print(f"  {name}: {count}")
    print("stage            median ms    p95 ms")
    for stage, s in report.stages.items():
        print(f"  {stage:<14} {s['median_ms']:>9.1f} {s['p95_ms']:>9.1f}")
    return 0
