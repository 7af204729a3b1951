"""``fuller selftest --gpu`` refuses cleanly where there is no GPU (it runs on GPU machines only)."""
from __future__ import annotations

import pytest
import torch

from fuller.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the selftest would run (minutes)")
def test_selftest_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert main(["selftest", "--gpu", "--out", str(out), "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]
    assert not out.exists() and not (tmp_path / "work").exists()
