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


def resize_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 frame resized to the model's input size, as :func:`to_model_input` would."""
    if frame_rgb.shape[:2] == INPUT_SIZE:
        return frame_rgb
    tensor = torch.from_numpy(np.ascontiguousarray(frame_rgb)).permute(2, 0, 1)
    resized = TF.resize(tensor, list(INPUT_SIZE), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return resized.permute(1, 2, 0).numpy()


def to_model_input(frames_rgb: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB frames -> (N, 3, 224, 224) float32 normalised tensor."""
    if frames_rgb.ndim != 4 or frames_rgb.shape[-1] != 3 or frames_rgb.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames_rgb.shape} {frames_rgb.dtype}")
    batch = torch.from_numpy(np.ascontiguousarray(frames_rgb)).permute(0, 3, 1, 2)
    if tuple(batch.shape[-2:]) == INPUT_SIZE:
        resized = batch
    else:
        resized = TF.resize(batch, list(INPUT_SIZE), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    scaled = resized.to(torch.float32).div_(255.0)
    return TF.normalize(scaled, list(IMAGENET_MEAN), list(IMAGENET_STD))
