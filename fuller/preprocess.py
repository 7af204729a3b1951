"""Image preprocessing shared by training and the runtime engine (NumPy and PIL, no torch).

Resizing/cropping to the network input and its ``img_aug`` matrix live here so that the dataset
transform and the engine produce the same pixels and the same geometry. The camera backbone is an ImageNet ResNet layout, so inputs are normalised with ImageNet's
statistics; keeping the constants here means training, export and the engine cannot drift apart.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32, ImageNet-normalised."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    x = images.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resize_crop_matrix(height: int, width: int, image_size: Sequence[int]) -> np.ndarray:
    """3x3 pixel map from a (height, width) camera image to the network input ``image_size`` (H, W):
    scale to cover, keep the bottom rows and the centre columns (the sky carries no information),
    as BEVFusion does at test time."""
    out_h, out_w = int(image_size[0]), int(image_size[1])
    scale = max(out_w / width, out_h / height)
    crop_x = (width * scale - out_w) / 2
    crop_y = height * scale - out_h
    return np.array([[scale, 0.0, -crop_x], [0.0, scale, -crop_y], [0.0, 0.0, 1.0]])


def image_aug_matrix(pixel_map: np.ndarray) -> np.ndarray:
    """The 4x4 ``img_aug`` (original (u, v, depth, 1) -> network-input (u, v, depth, 1)) of a 3x3 pixel map."""
    aug = np.eye(4)
    aug[:2, :2], aug[:2, 3] = pixel_map[:2, :2], pixel_map[:2, 2]
    return aug


def warp_image(image: np.ndarray, matrix: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Apply a 2-D affine pixel map (3x3, pixel centres at integer coordinates) to an image,
    output (H, W) = size, bilinear. PIL puts pixel centres at +0.5 and wants the inverse map."""
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(shift @ matrix @ np.linalg.inv(shift))
    out = Image.fromarray(image).transform((int(size[1]), int(size[0])), Image.Transform.AFFINE,
                                           data=tuple(inverse[:2].ravel()), resample=Image.Resampling.BILINEAR)
    return np.asarray(out)
