"""Training data: nuScenes (real or synthetic, same code) as samples for the network."""
from .nuscenes_dataset import DatasetError, NuScenesDataset, Sample, open_nuscenes
from .transforms import ResizeCrop

__all__ = ["DatasetError", "NuScenesDataset", "Sample", "open_nuscenes", "ResizeCrop"]
