"""Config and geometry: the paper's shapes, round trips, validation errors, the CLI."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from fuller.cli import main
from fuller.config import (
    BEVGrid,
    ConfigError,
    FullerConfig,
    available_configs,
    config_from_dict,
    config_hash,
    config_to_dict,
    config_to_yaml,
    load_config,
    updated_config,
)


def test_packaged_configs_are_listed():
    assert {"tiny", "base"} <= set(available_configs())


def test_base_has_the_paper_shapes():
    g = load_config("base").geometry
    assert g.voxel_grid_shape == (1440, 1440, 40)
    assert g.sparse_shape == (1440, 1440, 41)
    assert g.camera_bev.shape == (360, 360)
    assert g.det_grid.shape == (180, 180)
    assert g.map_grid.shape == (200, 200)
    assert g.image_size == [256, 704]
    assert g.num_depth_bins == 118  # BEVFusion's arange(1.0, 60.0, 0.5)
    assert (g.sweeps, g.max_points_per_voxel, g.max_voxels) == (10, 10, 120000)
    assert g.num_classes == 10 and g.num_map_classes == 6


def test_tiny_shapes():
    g = load_config("tiny").geometry
    assert g.voxel_grid_shape == (256, 256, 16)
    assert g.sparse_shape == (256, 256, 17)
    assert g.camera_bev.shape == (128, 128)
    assert g.det_grid.shape == (128, 128)
    assert g.map_grid.shape == (100, 100)
    assert g.image_size == [128, 352]
    assert g.num_depth_bins == 59
    assert (g.sweeps, g.max_voxels) == (3, 30000)


def test_label_sets_follow_the_devkit_order():
    g = load_config("tiny").geometry
    assert g.cameras == [
        "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
        "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
    ]
    assert g.classes[0] == "car" and g.classes[-1] == "traffic_cone"
    assert g.map_classes[-1] == "divider"


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_yaml_round_trip(name, tmp_path):
    cfg = load_config(name)
    path = tmp_path / "cfg.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(str(path)) == cfg


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_dict_round_trip(name):
    cfg = load_config(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert isinstance(config_from_dict(config_to_dict(cfg)), FullerConfig)


def test_overrides_apply_and_change_the_hash():
    base = load_config("tiny")
    cfg = load_config("tiny", ["geometry.sweeps=5", "geometry.voxel_size=[0.8,0.8,0.5]"])
    assert cfg.geometry.sweeps == 5
    assert cfg.geometry.voxel_grid_shape == (128, 128, 16)
    assert config_hash(cfg) != config_hash(base)
    assert config_hash(cfg.data) == config_hash(base.data)


def test_int_override_of_a_float_field_becomes_float():
    cfg = load_config("tiny", ["geometry.map_grid.resolution=2"])
    assert cfg.geometry.map_grid.resolution == 2.0
    assert isinstance(cfg.geometry.map_grid.resolution, float)
    assert cfg.geometry.map_grid.shape == (50, 50)


@pytest.mark.parametrize(
    "override, field",
    [
        ("geometry.sweeps=abc", "geometry.sweeps"),
        ("geometry.sweeps=2.5", "geometry.sweeps"),
        ("geometry.image_size=[128.5,352]", "geometry.image_size[0]"),
        ("geometry.sweep=2", "geometry.sweep"),
        ("model.width=3", "model.width"),
            ("trainer.steps=3", "trainer"),
        ("geometry.camera_bev=3", "geometry.camera_bev"),
        ("geometry.sweeps=null", "geometry.sweeps"),
    ],
)
def test_overrides_are_type_checked(override, field):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: expected ")


@pytest.mark.parametrize(
    "override, field, fragment",
    [
        ("geometry.voxel_size=[0.07,0.07,0.2]", "geometry.voxel_size", "whole multiple of 0.07"),
        ("geometry.voxel_size=[0.4,0.4,0.0]", "geometry.voxel_size", "positive z size"),
        ("geometry.point_cloud_range=[1,1,1,2,2]", "geometry.point_cloud_range", "6 values"),
        ("geometry.det_grid.resolution=0.7", "geometry.det_grid.x_range", "whole multiple of 0.7"),
        ("geometry.det_grid.resolution=-0.8", "geometry.det_grid.resolution", "positive size"),
        ("geometry.det_grid.x_range=[-60,60]", "geometry.det_grid", "inside the point_cloud_range"),
        ("geometry.map_grid.y_range=[10,-10]", "geometry.map_grid.y_range", "min < max"),
        ("geometry.camera_z_range=[3,-3]", "geometry.camera_z_range", "zmin < zmax"),
        ("geometry.depth_bins=[1.0,60.0,0.7]", "geometry.depth_bins", "whole multiple of 0.7"),
        ("geometry.image_size=[0,352]", "geometry.image_size", "positive H, W"),
        ("geometry.sweeps=0", "geometry.sweeps", ">= 1"),
        ("geometry.classes=[car,plane]", "geometry.classes[1]", "one of ['car'"),
        ("geometry.classes=[car,car]", "geometry.classes", "unique names"),
        ("geometry.cameras=[]", "geometry.cameras", "at least one name"),
        ("geometry.map_classes=[lane]", "geometry.map_classes[0]", "'drivable_area'"),
        ("geometry.det_grid.resolution=3.2", "geometry.det_grid.resolution", "power of two <= 2**2"),
        ("geometry.camera_bev.resolution=0.32", "geometry.det_grid.resolution", "whole multiple of geometry.camera_bev"),
        ("geometry.image_size=[120,352]", "geometry.image_size", "divisible by 32"),
        ("model.modalities=[radar]", "model.modalities[0]", "one of ['camera', 'lidar']"),
        ("model.tasks=[]", "model.tasks", "at least one name"),
        ("model.norm=ln", "model.norm", "one of ['bn', 'gn']"),
        ("model.backbone_depth=50", "model.backbone_depth", "18 or 34"),
        ("model.decoder_out_channels=65", "model.decoder_out_channels", "multiple of the number of decoder levels"),
        ("train.inter=gradnorm", "train.inter", "one of ['imtl'"),
        ("train.inter=static", "train.inter_weights", "one weight per task"),
        ("train.intra_target=median", "train.intra_target", "one of ['mean'"),
        ("train.lr=0", "train.lr", "positive learning rate"),
        ("train.per_task_adam_parts=[heads]", "train.per_task_adam_parts", "list of ['camera', 'lidar', 'fusion']"),
        ("train.per_task_adam_parts=[]", "train.per_task_adam_parts", "non-empty list"),
    ],
)
def test_bad_values_name_the_field(override, field, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"{field}: expected ") and ", got " in message
    assert fragment in message


def test_config_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ConfigError("geometry.sweeps", "an integer >= 1", 0)))
    assert error.field == "geometry.sweeps"
    assert str(error) == "geometry.sweeps: expected an integer >= 1, got 0"


def test_constructing_a_config_validates_it():
    cfg = load_config("tiny")
    bad = dataclasses.replace(cfg.geometry, max_voxels=0)
    with pytest.raises(ConfigError, match=r"^geometry\.max_voxels: "):
        FullerConfig(name="x", geometry=bad)


def test_missing_field_and_malformed_source(tmp_path):
    data = config_to_dict(load_config("tiny"))
    del data["geometry"]["voxel_size"]
    with pytest.raises(ConfigError, match=r"^geometry\.voxel_size: .*missing"):
        config_from_dict(data)
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a mapping at the top level"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("tiny", ["geometry.sweeps"])


def test_unknown_names_and_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="available: "):
        load_config("no_such_config")
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))


def test_config_hash_is_stable_across_processes():
    cfg = load_config("base")
    code = "import fuller.config as c; print(c.config_hash(c.load_config('base')))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == config_hash(cfg)
    assert len(config_hash(cfg)) == 64


def test_bev_grid_index_of_cell_centers():
    grid = BEVGrid(x_range=[-2.0, 2.0], y_range=[0.0, 3.0], resolution=0.5)
    assert grid.shape == (8, 6)
    xs, ys = grid.cell_centers()
    np.testing.assert_allclose(xs, [-1.75, -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75])
    np.testing.assert_allclose(ys, [0.25, 0.75, 1.25, 1.75, 2.25, 2.75])
    ix, iy = grid.index(xs, np.full_like(xs, 2.75))
    assert ix.tolist() == list(range(8)) and iy.tolist() == [5] * 8
    assert ix.dtype == np.int64
    # By hand: x = 0.3 -> floor((0.3 + 2) / 0.5) = 4; y = 1.0 -> 2 (a lower edge is in its cell).
    ix, iy = grid.index(np.array([0.3, -2.0, 1.99]), np.array([1.0, 0.0, 2.99]))
    assert ix.tolist() == [4, 0, 7] and iy.tolist() == [2, 0, 5]


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_every_cell_center_maps_back_to_its_cell(name):
    g = load_config(name).geometry
    for grid in (g.camera_bev, g.det_grid, g.map_grid):
        xs, ys = grid.cell_centers()
        x, y = np.meshgrid(xs, ys, indexing="ij")  # [ix, iy], the project's BEV layout
        ix, iy = grid.index(x, y)
        nx, ny = grid.shape
        np.testing.assert_array_equal(ix, np.broadcast_to(np.arange(nx)[:, None], (nx, ny)))
        np.testing.assert_array_equal(iy, np.broadcast_to(np.arange(ny)[None, :], (nx, ny)))


def test_cli_show_prints_yaml_that_loads_back(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fuller", "config", "show", "tiny", "geometry.sweeps=4"],
        capture_output=True, text=True, check=True,
    )
    expected = load_config("tiny", ["geometry.sweeps=4"])
    assert config_hash(expected) in out.stdout.splitlines()[0]
    assert "256x256x16" in out.stdout
    path = tmp_path / "shown.yaml"
    path.write_text(out.stdout)
    assert load_config(str(path)) == expected


def test_cli_list_and_errors(capsys):
    assert main(["config", "list"]) == 0
    assert capsys.readouterr().out.split() == available_configs()
    assert main(["config", "show", "tiny", "geometry.sweeps=zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "geometry.sweeps" in err and "Traceback" not in err
    assert main(["config", "show", "no_such_config"]) == 2
    assert "no_such_config" in capsys.readouterr().err


def test_cli_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "config" in capsys.readouterr().out


def test_group_norm_needs_widths_divisible_by_its_groups():
    load_config("tiny", ["model.norm=gn"])
    with pytest.raises(ConfigError) as info:
        load_config("tiny", ["model.norm=gn", "model.lidar_channels=[12,16]"])
    assert info.value.field == "model.lidar_channels" and "multiples of 8" in str(info.value)


def test_updated_config_validates_the_result_and_leaves_the_original():
    base = load_config("tiny")
    cfg = updated_config(base, {"train.steps": 7, "model.tasks": ("det",), "geometry.max_voxels": 100})
    assert (cfg.train.steps, cfg.model.tasks, cfg.geometry.max_voxels) == (7, ["det"], 100)
    assert base == load_config("tiny")
    # The cross-field check a direct assignment would skip: static weights need one weight per task.
    with pytest.raises(ConfigError, match="train.inter_weights"):
        updated_config(base, {"train.inter": "static", "train.inter_weights": [1.0]})
    with pytest.raises(ConfigError, match="train.steps"):
        updated_config(base, {"train.steps": "many"})
    with pytest.raises(KeyError, match="train.stepz"):
        updated_config(base, {"train.stepz": 3})
