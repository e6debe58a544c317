"""Preprocessing equal to the release's ``load_transform()``.

The release resizes each PIL frame to 224x224 (no crop) with bilinear filtering, then
applies ImageNet mean/std. torchvision's antialiased bilinear resize of uint8 tensors
reproduces PIL's filter (identical on downscales, at most one grey level off otherwise),
and runs on the whole batch of frames at once.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

INPUT_SIZE = (224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_input_size(images: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) uint8 -> (..., C, 224, 224), PIL-equal bilinear; input already that size is kept."""
    if tuple(images.shape[-2:]) == INPUT_SIZE:
        return images
    return TF.resize(images, list(INPUT_SIZE), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def resize_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 frame resized to the model's input size, as :func:`to_model_input` would."""
    tensor = torch.from_numpy(np.ascontiguousarray(frame_rgb)).permute(2, 0, 1)
    return _to_input_size(tensor).permute(1, 2, 0).numpy()


def to_model_input(frames_rgb: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB frames -> (N, 3, 224, 224) float32 normalised tensor."""
    if frames_rgb.ndim != 4 or frames_rgb.shape[-1] != 3 or frames_rgb.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames_rgb.shape} {frames_rgb.dtype}")
    batch = torch.from_numpy(np.ascontiguousarray(frames_rgb)).permute(0, 3, 1, 2)
    scaled = _to_input_size(batch).to(torch.float32).div_(255.0)
    return TF.normalize(scaled, list(IMAGENET_MEAN), list(IMAGENET_STD))
