"""The runtime: ``Engine.load(artefact)``, ``update_calibration(...)``, ``infer(images, points)``.

No torch and no ``fuller.train`` here: a vehicle installs the runtime, not the training stack. The
runtime owns the artefact's format: the graph's input/output names and metadata keys
(`contract`), default paths and the TensorRT sidecar (`artifacts`), the float16 cast and the engine
build (`fp16`, `tensorrt_build`). Offline tools over a nuScenes split (`offline`, `parity`, `bench`)
stand on the torch-free reader and evaluation of the core.
"""
from .engine import STAGES, Engine, Result
from .frame import Calibration, FrameError
from .postprocess import BEVMap, Detections

__all__ = ["Engine", "Result", "STAGES", "Calibration", "FrameError", "Detections", "BEVMap"]
