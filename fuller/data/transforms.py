"""Sample transforms. Each returns the sample with its data and the matching matrix updated, so
geometry stays exact: images with `img_aug`, points and boxes with `lidar_aug`."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fuller.preprocess import image_aug_matrix, resize_crop_matrix, warp_image

from .sample import Sample


class ResizeCrop:
    """Scale the images to cover the network input size, keep the bottom rows and the centre
    columns (the sky carries no information), as BEVFusion does at test time."""

    def __init__(self, image_size: Sequence[int]) -> None:
        self.height, self.width = int(image_size[0]), int(image_size[1])

    def matrix(self, height: int, width: int) -> np.ndarray:
        return resize_crop_matrix(height, width, (self.height, self.width))

    def __call__(self, sample: Sample) -> Sample:
        m = self.matrix(*sample.images.shape[1:3])
        sample.images = np.stack([warp_image(im, m, (self.height, self.width)) for im in sample.images])
        sample.img_aug = image_aug_matrix(m) @ sample.img_aug
        return sample
