"""Camera messages -> the engine's (H, W, 3) uint8 RGB, and back for writers and tests.

Raw `sensor_msgs/Image` rows may be padded (`step` > width * channels), and drivers publish BGR as
often as RGB; both are handled here so the engine only ever sees packed RGB. `CompressedImage`
(image_transport's "compressed" transport: JPEG or PNG) is decoded by Pillow, which yields RGB
whatever channel order the encoder was handed.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage

from .pointcloud import message_bytes
from .types import COMPRESSED_IMAGE, IMAGE, MessageError, msg_class

# encoding -> (channels, the channels that hold R, G, B)
ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)), "bgr8": (3, (2, 1, 0)), "mono8": (1, (0, 0, 0)),
    "rgba8": (4, (0, 1, 2)), "bgra8": (4, (2, 1, 0)),
}
COMPRESSED_FORMATS = ("JPEG", "PNG")
_PIL_FORMATS = {"JPEG", "MPO", "PNG"}  # MPO: a JPEG with extra frames in its EXIF, as some cameras write


def image_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a raw Image; row padding skipped, alpha dropped, mono replicated."""
    if msg.encoding not in ENCODINGS:
        raise MessageError(f"Image.encoding: expected one of {', '.join(ENCODINGS)}, got {msg.encoding!r}")
    channels, rgb = ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height < 1 or width < 1:
        raise MessageError(f"Image.height/width: expected >= 1, got {height} x {width}")
    if step < width * channels:
        raise MessageError(f"Image.step: expected >= width * channels = {width * channels} for "
                           f"{msg.encoding}, got {step}")
    data = message_bytes(msg.data)
    if data.size < height * step:
        raise MessageError(f"Image.data: expected height * step = {height * step} bytes, got {data.size}")
    pixels = data[:height * step].reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    return pixels[..., list(rgb)]


def compressed_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a JPEG or PNG CompressedImage."""
    data = message_bytes(msg.data)
    try:
        with PILImage.open(io.BytesIO(data.tobytes())) as image:
            if image.format not in _PIL_FORMATS:
                raise MessageError(f"CompressedImage.format {msg.format!r}: expected {' or '.join(COMPRESSED_FORMATS)} "
                                   f"data, got {image.format}")
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise MessageError(f"CompressedImage.format {msg.format!r}: could not decode {data.size} bytes as "
                           f"{' or '.join(COMPRESSED_FORMATS)} ({exc})") from None


def image_message(rgb: np.ndarray, header, encoding: str = "rgb8", step: int | None = None):
    """An Image holding `rgb` (H, W, 3) uint8 in `encoding`; rows padded with zeros to `step` bytes.

    mono8 takes a grey picture, (H, W) or (H, W, 3) with equal channels, so the round trip is exact."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {', '.join(ENCODINGS)}, got {encoding!r}")
    rgb = np.asarray(rgb)
    channels, order = ENCODINGS[encoding]
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected uint8, got {rgb.dtype}")
    if encoding == "mono8" and rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb: expected shape (H, W, 3), got {rgb.shape}")
    height, width = rgb.shape[:2]
    if encoding == "mono8":
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError("rgb: mono8 expects a grey picture (equal R, G, B), got colour")
        pixels = rgb[..., :1]
    else:
        pixels = np.empty((height, width, channels), dtype=np.uint8)
        pixels[..., list(order)] = rgb
        if channels == 4:
            pixels[..., 3] = 255
    row = width * channels
    step = row if step is None else int(step)
    if step < row:
        raise ValueError(f"step: expected >= width * channels = {row}, got {step}")
    data = np.zeros((height, step), dtype=np.uint8)
    data[:, :row] = pixels.reshape(height, row)
    return msg_class(IMAGE)(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                            step=step, data=data.reshape(-1))


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.asarray(rgb, dtype=np.uint8), "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def compressed_message(data: bytes, header, format: str = "jpeg"):
    return msg_class(COMPRESSED_IMAGE)(header=header, format=format, data=np.frombuffer(bytes(data), dtype=np.uint8))
