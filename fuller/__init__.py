"""Fuller: camera + LiDAR multi-task 3D perception (boxes and a BEV map) on nuScenes.

The core package holds what every part shares, torch-free: the config/geometry (`fuller.config`),
box geometry (`fuller.geometry`), image preprocessing, voxelisation and BEV-pool geometry, the
nuScenes reader (`fuller.data`), the evaluation (`fuller.evaluation`), pictures (`fuller.viz`) and
the synthetic nuScenes world (`fuller.synth`). The parts stand on it as a fan: `fuller.train` and
`fuller.engine` side by side, `fuller.export` between them, `fuller.ros2_node` on the engine,
`fuller.plugins` beneath the three that use them; the `fuller` command line (`fuller.cli`,
`fuller.commands`) on top. `tests/test_layering.py` enforces it.
"""
__version__ = "0.1.0"
