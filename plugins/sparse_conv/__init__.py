"""``fuller::SparseConv3d``: one sparse 3-D convolution on a fixed-capacity voxel list (SPEC.md)."""
