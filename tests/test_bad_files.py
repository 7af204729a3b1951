"""Every file the CLI loads, broken: one line naming the file and what is wrong, exit 2, no traceback.

Checkpoints, ONNX graphs, TensorRT engines (and their sidecars), bags and configs, each given to
every command that loads it.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from fuller.cli import main

GARBAGE = bytes(range(256)) * 8


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_files")
    files = {name: root / name for name in ("model.pt", "model.onnx", "model.engine", "config.yaml", "bag.mcap")}
    for name, path in files.items():
        path.write_bytes(b"train: [unclosed\n" if name.endswith(".yaml") else GARBAGE)
    (root / "run").mkdir()
    (root / "run" / "checkpoint.pt").write_bytes(GARBAGE[:100])  # a truncated checkpoint to resume from
    files["run"] = root / "run"
    return files


def commands(bad, data, out):
    pt, onnx, engine, yaml, bag = (str(bad[k]) for k in ("model.pt", "model.onnx", "model.engine", "config.yaml",
                                                          "bag.mcap"))
    return {
        "eval checkpoint": (["eval", "--checkpoint", pt, "--data", data, "--out", out], pt),
        "export checkpoint": (["export", "--checkpoint", pt, "--out", f"{out}/x.onnx"], pt),
        "infer onnx": (["infer", "--model", onnx, "--data", data, "--out", out], onnx),
        "infer checkpoint": (["infer", "--model", pt, "--data", data, "--out", out], pt),
        "infer engine": (["infer", "--model", engine, "--data", data, "--out", out], engine),
        "parity onnx": (["parity", "--checkpoint", pt, "--model", onnx, "--data", data, "--out", out], pt),
        "bench infer onnx": (["bench", "infer", "--model", onnx, "--data", data], onnx),
        "replay onnx": (["replay", "--bag", bag, "--model", onnx, "--out", f"{out}/o.mcap"], onnx),
        "train config": (["train", "--config", yaml, "--data", data, "--out", out], yaml),
        "train resume": (["train", "--data", data, "--out", str(bad["run"]), "--resume"], "checkpoint.pt"),
        "build-engine onnx": (["build-engine", "--onnx", onnx], ""),
    }


CASES = list(commands({k: k for k in ("model.pt", "model.onnx", "model.engine", "config.yaml", "bag.mcap", "run")},
                      "d", "o"))


@pytest.mark.parametrize("case", CASES)
def test_a_broken_file_is_one_line_naming_it(case, bad, synth_root, tmp_path, capsys):
    argv, named = commands(bad, synth_root, str(tmp_path / "out"))[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_replay_of_a_broken_bag_names_it(bad, small_onnx, tmp_path, capsys):
    assert main(["replay", "--bag", str(bad["bag.mcap"]), "--model", str(small_onnx), "--out",
                 str(tmp_path / "o.mcap")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bag.mcap: not a readable MCAP file" in err[0], err


def test_no_traceback_from_a_process(bad, synth_root, tmp_path):
    done = subprocess.run([sys.executable, "-m", "fuller", "infer", "--model", str(bad["model.onnx"]), "--data",
                           synth_root, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"fuller: error: {bad['model.onnx']}: not a readable ONNX model")


class _Missing:
    """A dataset whose samples all name a missing file, as the reader does."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        from fuller.data import DatasetError

        raise DatasetError(f"/data/samples/CAM_FRONT/{index}.jpg: file missing (sample s{index})")


def test_an_error_from_a_loader_worker_is_still_one_line():
    """DataLoader workers re-raise with their traceback inside the message; the CLI keeps the last line."""
    from torch.utils.data import DataLoader

    from fuller.cli import one_line
    from fuller.data import DatasetError

    with pytest.raises(DatasetError) as info:
        list(DataLoader(_Missing(), num_workers=1))
    assert "Traceback" in str(info.value)
    assert one_line(info.value) == "/data/samples/CAM_FRONT/0.jpg: file missing (sample s0)"
