"""Fuller: camera + LiDAR multi-task 3D perception (boxes and a BEV map) on nuScenes.

The core package holds what every part shares: the config/geometry (`fuller.config`), box
geometry (`fuller.geometry`), pictures (`fuller.viz`), the synthetic nuScenes world
(`fuller.synth`) and the `fuller` command line. The parts live in `fuller.train`, `fuller.export`,
`fuller.engine`, `fuller.plugins` and `fuller.ros2_node`.
"""
__version__ = "0.1.0"
