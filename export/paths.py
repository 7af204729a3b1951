"""Default locations of the deployment artefacts, shared by the exporter, the engine build and the
runtime so that plain ``fuller export`` then ``python export/build_engine.py --fp16`` find each
other's files. Relative paths resolve against the working directory."""
from __future__ import annotations

from pathlib import Path

DEFAULT_ONNX = Path("exports/fuller.onnx")
DEFAULT_ENGINE = DEFAULT_ONNX.with_suffix(".engine")


def sidecar_path(engine: str | Path) -> Path:
    """The JSON record written beside an engine (``model.engine`` -> ``model.engine.json``)."""
    return Path(str(engine) + ".json")
