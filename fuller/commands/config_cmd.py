"""``fuller config``: list the packaged configs, or show one resolved with overrides applied.

``show`` prints YAML that ``load_config`` reads back to the same config, headed by comments with the
config hash and the derived shapes, so a run's exact geometry can be checked at a glance.
"""

from __future__ import annotations

import argparse

from fuller.config import FullerConfig, available_configs, config_hash, config_to_yaml, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="list or show configs", description="List or show the named configs."
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="print a resolved config as YAML",
        description="Print a resolved config as YAML, overrides applied.",
    )
    show.add_argument("name", metavar="NAME", help="packaged config name, or a path to a YAML file")
    show.add_argument(
        "overrides", metavar="OVERRIDE", nargs="*", help="dotlist override, e.g. geometry.sweeps=5"
    )
    show.set_defaults(func=_show)

    listing = actions.add_parser("list", help="list the packaged config names")
    listing.set_defaults(func=_list)


def _header(cfg: FullerConfig) -> str:
    g = cfg.geometry

    def dims(shape: tuple[int, ...]) -> str:
        return "x".join(map(str, shape))

    return (
        f"# config hash (sha256): {config_hash(cfg)}\n"
        f"# voxels {dims(g.voxel_grid_shape)} (sparse {dims(g.sparse_shape)}), "
        f"camera BEV {dims(g.camera_bev.shape)}, det grid {dims(g.det_grid.shape)}, "
        f"map grid {dims(g.map_grid.shape)}, {g.num_depth_bins} depth bins, "
        f"{g.num_classes} classes, {g.num_map_classes} map classes\n"
    )


def _show(args: argparse.Namespace) -> int:
    cfg = load_config(args.name, args.overrides)
    print(_header(cfg) + config_to_yaml(cfg), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in available_configs():
        print(name)
    return 0
