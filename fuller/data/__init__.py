"""The nuScenes reader (real or synthetic roots, same code): keyframes as `Sample`s in the LiDAR frame,
with calibration, multi-sweep points, boxes and rasterised map masks. Torch-free: training wraps it
(`fuller.train.dataset`), the runtime's offline tools read splits with it directly. `check_dataset`
validates a root without the devkit (`fuller check-data`)."""
from .check import CheckReport, Problem, check_dataset
from .nuscenes_dataset import DatasetError, NuScenesDataset, open_nuscenes
from .sample import Sample, Transform
from .transforms import ResizeCrop

__all__ = ["CheckReport", "DatasetError", "NuScenesDataset", "Problem", "Sample", "Transform", "check_dataset",
           "open_nuscenes", "ResizeCrop"]
