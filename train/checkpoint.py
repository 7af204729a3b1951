"""Atomic checkpoints that hold everything needed for an exact resume.

A checkpoint is written to a temporary file in the same folder and renamed over the old one
(`os.replace` is atomic on POSIX), so a crash mid-write leaves the previous checkpoint intact.
It holds model, optimiser, scheduler and calibrator states, every RNG state, the step and the
full config, so `fuller eval` and `fuller export` need nothing else.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuller.config import FullerConfig, config_from_dict, config_to_dict
from fuller.errors import UserInputError

FORMAT = "fuller-checkpoint-1"


class CheckpointError(UserInputError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, cfg: FullerConfig, step: int, **states: Any) -> Path:
    """Write ``{format, config, step, **states}`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "config": config_to_dict(cfg), "step": step, "rng": rng_states(), **states}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[FullerConfig, dict[str, Any]]:
    """(config, payload) of a checkpoint written by `save_checkpoint`, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {FORMAT} checkpoint, got {got!r}")
    return config_from_dict(payload["config"]), payload
