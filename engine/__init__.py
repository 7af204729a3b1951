"""The runtime: ``Engine.load(artefact)``, ``update_calibration(...)``, ``infer(images, points)``.

No torch and no ``fuller.train`` on this path (the PyTorch backend is the exception, loaded only
when a checkpoint is given), so a vehicle installs the runtime, not the training stack.
"""
from .engine import STAGES, Engine, Result
from .frame import Calibration, FrameError
from .postprocess import BEVMap, Detections

__all__ = ["Engine", "Result", "STAGES", "Calibration", "FrameError", "Detections", "BEVMap"]
