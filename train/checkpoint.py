"""Atomic checkpoints that hold everything needed for an exact resume, and load without running code.

A checkpoint is written to a temporary file in the same folder and renamed over the old one
(`os.replace` is atomic on POSIX), so a crash mid-write leaves the previous checkpoint intact.
It holds model, optimiser, scheduler and calibrator states, every RNG state, the step and the
full config, so `fuller eval` and `fuller export` need nothing else.

Only tensors and plain containers (dict, list, tuple, str, bytes, numbers, None) go in, so it loads
with ``torch.load(weights_only=True)``: a shared checkpoint cannot run code on the machine that
loads it. RNG states are stored as bytes and lists rather than tensors and arrays: plain data, and
untouched by ``map_location`` (a CUDA ``map_location`` would move a saved RNG ByteTensor to the GPU,
where ``torch.set_rng_state`` refuses it).
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuller.config import ConfigError, FullerConfig, config_from_dict, config_to_dict
from fuller.errors import UserInputError

FORMAT = "fuller-checkpoint-2"
# What every checkpoint holds (eval and export read these); a resume also reads the trainer's states.
REQUIRED = {"config": dict, "step": int, "model": dict, "rng": dict}


class CheckpointError(UserInputError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def rng_states() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": (version, list(mt), gauss), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
              "torch": torch.get_rng_state().numpy().tobytes()}
    if torch.cuda.is_available():
        states["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return states


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def restore_rng_states(states: dict[str, Any]) -> None:
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_byte_tensor(states["torch"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(s) for s in states["cuda"]])


def save_checkpoint(path: str | Path, cfg: FullerConfig, step: int, **states: Any) -> Path:
    """Write ``{format, config, step, rng, **states}`` atomically to ``path``."""
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


def _read(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated, foreign or unsafe files
        named = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if isinstance(exc, pickle.UnpicklingError) and named:  # weights_only refused a global it would call
            raise CheckpointError(f"{path}: refused: its pickle calls code, which a checkpoint never needs "
                                  f"(checkpoints load with torch.load(weights_only=True)): {named[0]}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[FullerConfig, dict[str, Any]]:
    """(config, payload) of a checkpoint written by `save_checkpoint`, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    payload = _read(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {FORMAT} checkpoint, got {got!r}")
    for key, kind in REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            got = "nothing" if key not in payload else type(payload[key]).__name__
            raise CheckpointError(f"{path}: {key}: expected a {kind.__name__}, got {got}")
    try:
        return config_from_dict(payload["config"]), payload
    except ConfigError as exc:
        raise CheckpointError(f"{path}: config: {exc}") from None
