"""The FULLER network, one module per stage (see fuller_model.py for the assembly)."""
from .fuller_model import FullerModel, ModelInputs, Targets, build_model

__all__ = ["FullerModel", "ModelInputs", "Targets", "build_model"]
