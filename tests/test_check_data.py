"""`fuller check-data` and the dataset's file errors, on copies of the synthetic root with files broken on purpose.

Counts are checked against the devkit's own view of the root; each damage must come back as a problem
naming its path, from the checker, from the CLI (exit 2, one line each, no traceback) and from
`NuScenesDataset.load` (a `DatasetError` naming the file), which must also survive a trip through pickle
(DataLoader workers send it to the main process that way).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fuller.cli import main
from fuller.data import DatasetError, NuScenesDataset
from fuller.data.check import LOCATIONS, check_dataset


@dataclass
class Damaged:
    """A copy of the synthetic root with files broken, and what each broken file belongs to."""

    root: Path
    image: Path  # deleted: CAM_FRONT of `image_sample`
    image_sample: str
    lidar: Path  # truncated: the LIDAR_TOP key frame of `lidar_sample`
    lidar_sample: str
    sweep: Path  # truncated: the sweep before the key frame of `sweep_sample`
    sweep_sample: str
    expansion: Path  # deleted: a location's map expansion

    def paths(self) -> set[str]:
        return {str(p) for p in (self.image, self.lidar, self.sweep, self.expansion)}


def copy_root(synth_root: str, tmp_path: Path) -> Path:
    """A private copy to damage (the session's root is shared by every test)."""
    return Path(shutil.copytree(synth_root, tmp_path / "nuscenes"))


@pytest.fixture(scope="module")
def dataset_config(small_cfg):
    assert small_cfg.geometry.sweeps >= 2 and "CAM_FRONT" in small_cfg.geometry.cameras
    return small_cfg


@pytest.fixture(scope="module")
def damaged(synth_root, tmp_path_factory, nusc, dataset_config) -> Damaged:
    root = copy_root(synth_root, tmp_path_factory.mktemp("damaged"))
    tokens = NuScenesDataset(dataset_config, synth_root, dataset_config.data.train_split, nusc=nusc).samples
    image_sample, lidar_sample, sweep_sample = tokens[0], tokens[4], tokens[8]

    def file_of(token: str) -> Path:
        return root / nusc.get("sample_data", token)["filename"]

    image = file_of(nusc.get("sample", image_sample)["data"]["CAM_FRONT"])
    lidar_token = nusc.get("sample", lidar_sample)["data"]["LIDAR_TOP"]
    lidar = file_of(lidar_token)
    sweep_key = nusc.get("sample_data", nusc.get("sample", sweep_sample)["data"]["LIDAR_TOP"])
    assert sweep_key["prev"] and not nusc.get("sample_data", sweep_key["prev"])["is_key_frame"]
    sweep = file_of(sweep_key["prev"])
    location = nusc.get("log", nusc.scene[0]["log_token"])["location"]
    expansion = root / "maps" / "expansion" / f"{location}.json"
    image.unlink()
    expansion.unlink()
    # 1007 and 2006 bytes: whole float32s that do not make whole 5-float rows, so the devkit's reshape fails.
    os.truncate(lidar, 1007)
    os.truncate(sweep, 2006)
    return Damaged(root, image, image_sample, lidar, lidar_sample, sweep, sweep_sample, expansion)


def test_clean_root_passes_with_the_devkits_counts(synth_root, nusc):
    [report] = check_dataset(synth_root, progress=False)
    assert report.ok, [str(p) for p in report.problems]
    s = report.summary
    assert report.version == "v1.0-mini"
    assert (s.scenes, s.samples, s.annotations) == (len(nusc.scene), len(nusc.sample), len(nusc.sample_annotation))
    keyframes = sum(sd["is_key_frame"] for sd in nusc.sample_data)
    assert (s.keyframes, s.sweeps) == (keyframes, len(nusc.sample_data) - keyframes) and s.sweeps > 0
    assert s.locations == tuple(sorted({log["location"] for log in nusc.log}))
    assert s.files == len(nusc.sample_data)
    assert s.bytes == sum(os.path.getsize(Path(synth_root) / sd["filename"]) for sd in nusc.sample_data)


def test_cli_on_a_clean_root_exits_0(synth_root, nusc, capsys):
    assert main(["check-data", synth_root, "--version", "v1.0-mini"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^samples +{len(nusc.sample)}$", out, re.M) and f"no problems in {synth_root}" in out


def test_every_damaged_file_is_named(damaged):
    [report] = check_dataset(damaged.root, progress=False)
    by_path = {p.path: p.what for p in report.problems}
    assert set(by_path) == damaged.paths(), by_path
    assert by_path[str(damaged.image)] == "file missing"
    assert by_path[str(damaged.lidar)].startswith("truncated LiDAR file: 1007 bytes")
    assert by_path[str(damaged.sweep)].startswith("truncated LiDAR file: 2006 bytes")
    assert "missing" in by_path[str(damaged.expansion)]


def test_truncated_jpeg_is_named(synth_root, tmp_path):
    root = copy_root(synth_root, tmp_path)
    image = next((root / "samples" / "CAM_BACK").glob("*.jpg"))
    os.truncate(image, image.stat().st_size // 2)
    [report] = check_dataset(root, progress=False)
    assert [(p.path, p.what) for p in report.problems] == [
        (str(image), "truncated JPEG: no end-of-image marker (FF D9) at the end of the file")]


def test_cli_lists_every_problem_and_exits_2(damaged, capsys):
    assert main(["check-data", str(damaged.root)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert {line.split(": ")[0] for line in lines if line.startswith(str(damaged.root) + os.sep)} == damaged.paths()
    assert lines[-1].startswith(f"4 problems in {damaged.root}")


def test_cli_process_prints_one_line_per_problem_and_no_traceback(damaged):
    done = subprocess.run([sys.executable, "-m", "fuller", "check-data", str(damaged.root)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    problems = [line for line in done.stdout.splitlines() if line.startswith(str(damaged.root) + os.sep)]
    assert len(problems) == 4 and {line.split(": ")[0] for line in problems} == damaged.paths()
    assert "Traceback" not in done.stdout + done.stderr


def test_broken_table_and_dangling_references_are_named(synth_root, tmp_path):
    root = copy_root(synth_root, tmp_path)
    tables = root / "v1.0-mini"
    (tables / "instance.json").write_text('[{"token": "a",')
    sample_data = json.loads((tables / "sample_data.json").read_text())
    sample_data[3]["ego_pose_token"] = "no-such-pose"
    (tables / "sample_data.json").write_text(json.dumps(sample_data))
    scenes = json.loads((tables / "scene.json").read_text())
    del scenes[1]["log_token"]
    (tables / "scene.json").write_text(json.dumps(scenes))
    [report] = check_dataset(root, progress=False)
    assert sorted((p.path, p.what.split(":")[0]) for p in report.problems) == [
        (str(tables / "instance.json"), "not valid JSON"),
        (str(tables / "sample_data.json"), f"sample_data {sample_data[3]['token']}"),
        (str(tables / "scene.json"), f"scene {scenes[1]['token']}"),
    ]
    whats = [p.what for p in report.problems]
    assert f"sample_data {sample_data[3]['token']}: ego_pose_token 'no-such-pose' is not a token of ego_pose.json" \
        in whats and f"scene {scenes[1]['token']}: no field 'log_token'" in whats


def test_missing_table_and_missing_version_folder_are_named(synth_root, tmp_path, capsys):
    root = copy_root(synth_root, tmp_path)
    (root / "v1.0-mini" / "log.json").unlink()
    [report] = check_dataset(root, progress=False)
    assert [str(p) for p in report.problems] == [f"{root / 'v1.0-mini' / 'log.json'}: table missing"]
    assert main(["check-data", str(root), "--version", "v1.0-trainval"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert f"{root / 'v1.0-trainval'}: version folder missing (found: v1.0-mini)" in lines
    (root / "v1.0-mini").rename(root / "tables")
    [report] = check_dataset(root, progress=False)
    assert [p.path for p in report.problems] == [str(root)] and "no table folder" in report.problems[0].what


def test_locations_are_the_devkits():
    from nuscenes.map_expansion.map_api import locations

    assert sorted(LOCATIONS) == sorted(locations)


@pytest.mark.parametrize("which", ["image", "lidar", "sweep"])
def test_loading_a_damaged_sample_names_the_file(damaged, dataset_config, which):
    dataset = NuScenesDataset(dataset_config, damaged.root, dataset_config.data.train_split)
    token, path = getattr(damaged, f"{which}_sample"), getattr(damaged, which)
    expected = "file missing" if which == "image" else "truncated LiDAR file"
    with pytest.raises(DatasetError) as raised:
        dataset.load(token)
    assert str(raised.value).startswith(f"{path}: {expected}") and token in str(raised.value)
    with pytest.raises(DatasetError, match=expected):
        dataset[dataset.samples.index(token)]
    copy = pickle.loads(pickle.dumps(raised.value))
    assert type(copy) is DatasetError and str(copy) == str(raised.value)
