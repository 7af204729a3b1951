"""Sample transforms. Each returns the sample with its data and the matching matrix updated, so
geometry stays exact: images with `img_aug`, points and boxes with `lidar_aug`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .nuscenes_dataset import Sample


def warp_image(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Apply a 2-D affine pixel map (3x3, pixel centres at integer coordinates) to an image,
    output (H, W) = size, bilinear. PIL puts pixel centres at +0.5 and wants the inverse map."""
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(shift @ matrix @ np.linalg.inv(shift))
    out = Image.fromarray(image).transform((size[1], size[0]), Image.Transform.AFFINE,
                                           data=tuple(inverse[:2].ravel()), resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


class ResizeCrop:
    """Scale the images to cover the network input size, keep the bottom rows and the centre
    columns (the sky carries no information), as BEVFusion does at test time."""

    def __init__(self, image_size: Sequence[int]) -> None:
        self.height, self.width = int(image_size[0]), int(image_size[1])

    def matrix(self, height: int, width: int) -> np.ndarray:
        scale = max(self.width / width, self.height / height)
        crop_x = (width * scale - self.width) / 2
        crop_y = height * scale - self.height
        return np.array([[scale, 0.0, -crop_x], [0.0, scale, -crop_y], [0.0, 0.0, 1.0]])

    def __call__(self, sample: "Sample") -> "Sample":
        m = self.matrix(*sample.images.shape[1:3])
        sample.images = np.stack([warp_image(im, m, (self.height, self.width)) for im in sample.images])
        aug = np.eye(4)
        aug[:2, :2], aug[:2, 3] = m[:2, :2], m[:2, 2]
        sample.img_aug = aug @ sample.img_aug
        return sample
