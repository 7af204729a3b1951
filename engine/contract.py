"""The exported graph's interface: input/output names, dtypes and metadata keys.

The runtime owns the artefact, so the names live here and the exporter (`fuller.export`) writes
what this module spells; this is the one place they are spelled. Shapes (batch 1, a fixed-capacity voxel list, dynamic pooling geometry):

| input | dtype | shape |
|---|---|---|
| images | float32 | (1, N, 3, H, W), normalised (`fuller.preprocess`) |
| ranks_depth, ranks_feat, ranks_bev | int32 | (P,) dynamic: BEV-pool geometry of the calibration |
| interval_starts, interval_lengths | int32 | (I,) dynamic |
| voxel_features | float32 | (V, 5), V = geometry.max_voxels; rows past voxel_count are ignored |
| voxel_coords | int32 | (V, 4) rows (0, ix, iy, iz), -1 past voxel_count |
| voxel_count | int32 | (1,) |

| output | dtype | shape |
|---|---|---|
| boxes | float32 | (1, K, 9) x, y, z, w, l, h, yaw, vx, vy in the LiDAR frame |
| scores | float32 | (1, K), descending |
| labels | int32 | (1, K) index into geometry.classes |
| map_probs | float32 | (1, C_map, Xm, Ym) |
"""
from __future__ import annotations

GEOMETRY_INPUTS = ("ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths")
CAMERA_INPUTS = ("images", *GEOMETRY_INPUTS)
LIDAR_INPUTS = ("voxel_features", "voxel_coords", "voxel_count")
DET_OUTPUTS = ("boxes", "scores", "labels")
MAP_OUTPUTS = ("map_probs",)
# Dynamic dimension names of the geometry inputs (the TensorRT profile reads them).
DYNAMIC_DIMS = {"ranks_depth": "points", "ranks_feat": "points", "ranks_bev": "points",
                "interval_starts": "intervals", "interval_lengths": "intervals"}

# Keys of the ONNX model's metadata_props.
META_CONFIG = "fuller.config"  # the FullerConfig as YAML: the runtime's only source of geometry
META_CONFIG_HASH = "fuller.config_hash"
META_MAX_POINTS = "fuller.max_frustum_points"  # upper bound of the "points" dimension
META_CHECKPOINT_STEP = "fuller.checkpoint_step"
META_SPARSE_CAPACITIES = "fuller.sparse_capacities"  # rows of each sparse layer, comma-separated
META_PRECISION = "fuller.precision"  # INT8 on a graph with calibrated Q/DQ pairs (fuller quantize); absent: float32
INT8 = "int8"  # the META_PRECISION value of an INT8 graph
META_INT8 = "fuller.int8"  # JSON: how the INT8 graph was calibrated, which nodes stayed float, its float source


def input_names(modalities) -> list[str]:
    return [*(CAMERA_INPUTS if "camera" in modalities else ()), *(LIDAR_INPUTS if "lidar" in modalities else ())]


def output_names(tasks) -> list[str]:
    return [*(DET_OUTPUTS if "det" in tasks else ()), *(MAP_OUTPUTS if "map" in tasks else ())]
