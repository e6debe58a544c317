"""Preprocessing equal to the release's ``load_transform()``, with PIL and numpy (no torch).

The release (MIT moments_models test_video.py) resizes each PIL frame to 224x224 (no crop) with
PIL's bilinear filter, then ``ToTensor`` (uint8 / 255) and ImageNet mean/std. This is that,
operation for operation in float32, so every engine sees the very same input and the result is
bit-identical to the release's transform (tests/test_preprocess.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# PIL sizes are (width, height); both are 224.
INPUT_SIZE = (224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Shaped to broadcast over (N, 3, H, W); float32, as torchvision's Normalize casts them to the input's dtype.
_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)


def resize_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 RGB frame resized to 224x224 by PIL's bilinear filter, as the release does.

    A frame already 224x224 comes back unchanged (PIL copies it), so frames shrunk as they are
    decoded give the same model input as full frames.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[-1] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame_rgb.shape} {frame_rgb.dtype}")
    image = Image.fromarray(np.ascontiguousarray(frame_rgb))
    return np.asarray(image.resize(INPUT_SIZE, Image.Resampling.BILINEAR))


def to_model_input(frames_rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames -> (N, 3, 224, 224) float32, normalised like the release."""
    if frames_rgb.ndim != 4 or frames_rgb.shape[-1] != 3 or frames_rgb.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames_rgb.shape} {frames_rgb.dtype}")
    if frames_rgb.shape[1:3] != INPUT_SIZE[::-1]:
        frames_rgb = np.stack([resize_frame(frame) for frame in frames_rgb])
    # The release's order of float32 operations: x / 255, then - mean, then / std (ToTensor, Normalize).
    batch = frames_rgb.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    batch /= np.float32(255)
    batch -= _MEAN
    batch /= _STD
    return batch
