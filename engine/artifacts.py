"""The deployment artefacts the runtime owns: where they live by default, and the sidecar record that
travels with a TensorRT engine.

`fuller export` writes ``exports/fuller.onnx``; ``python export/build_engine.py --fp16`` (or
``fuller build-engine``) writes ``exports/fuller.engine`` beside it with its sidecar
``fuller.engine.json``. TensorRT engines run only on the TensorRT version and GPU they were built
for, so the sidecar records both (and the precision with the flags that decide it, the config and
the ONNX digest), and `check_sidecar` is what the runtime calls before deserialising an engine: a
mismatch is a clear message instead of a deserialisation failure. Relative paths resolve against the
working directory.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from fuller.errors import UserInputError

from . import contract

DEFAULT_ONNX = Path("exports/fuller.onnx")
DEFAULT_ENGINE = DEFAULT_ONNX.with_suffix(".engine")
# "config" is the exported config YAML: the TensorRT runtime's source of geometry, as the ONNX
# metadata is for ONNX Runtime.
SIDECAR_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "precision_flags",
                "config_hash", "config", "onnx_sha256", "built_at")
REBUILD = "rebuild the engine on this machine with python export/build_engine.py"


class EngineMismatchError(UserInputError):
    """The engine was built for another TensorRT version or GPU (or its sidecar is missing)."""


def sidecar_path(engine: str | Path) -> Path:
    """The JSON record written beside an engine (``model.engine`` -> ``model.engine.json``)."""
    return Path(str(engine) + ".json")


def read_metadata(model) -> dict[str, str]:
    """An ONNX model's ``metadata_props`` as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def graph_precision(metadata: dict[str, str]) -> str:
    """``int8`` for the INT8 graph of fuller quantize (its metadata says so), else ``fp32``."""
    return metadata.get(contract.META_PRECISION, "fp32")


def sidecar_record(*, tensorrt_version: str, gpu_name: str, compute_capability: str, precision: str,
                   precision_flags: dict[str, bool], metadata: dict[str, str], onnx_bytes: bytes) -> dict:
    """What the sidecar JSON records about an engine build. ``precision_flags`` are the build's
    switches behind ``precision`` (`tensorrt_build.precision_flags`): strongly typed, float16 cast,
    TF32."""
    return {"tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "compute_capability": compute_capability,
            "precision": precision, "precision_flags": dict(precision_flags),
            "config_hash": metadata.get(contract.META_CONFIG_HASH, ""),
            "config": metadata.get(contract.META_CONFIG, ""),
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_sidecar(engine_path: str | Path, record: dict) -> Path:
    path = sidecar_path(engine_path)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def check_sidecar(engine_path: str | Path, trt_version: str, gpu_name: str) -> dict:
    """The engine's sidecar record, after checking that it was built with TensorRT ``trt_version``
    on a ``gpu_name`` GPU. Raises :class:`EngineMismatchError` naming what differs (or saying the
    sidecar is missing or unreadable)."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineMismatchError(f"{engine_path}: no sidecar {path} records which TensorRT and GPU the engine was "
                                  f"built for; {REBUILD}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineMismatchError(f"{path}: unreadable engine sidecar ({exc}); {REBUILD}") from exc
    missing = [key for key in SIDECAR_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise EngineMismatchError(f"{path}: engine sidecar lacks {missing}; {REBUILD}")
    differences = []
    if record["tensorrt_version"] != trt_version:
        differences.append(f"TensorRT {record['tensorrt_version']} (this runtime has TensorRT {trt_version})")
    if record["gpu_name"] != gpu_name:
        differences.append(f"a {record['gpu_name']} GPU (this machine has a {gpu_name})")
    if differences:
        flag = {"fp16": " --fp16", "int8": " --int8"}.get(record["precision"], "")
        raise EngineMismatchError(f"{engine_path} was built for {' and '.join(differences)}; engines only run on "
                                  f"the TensorRT version and GPU they were built for: {REBUILD}{flag}")
    return record
