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


def to_model_input(frames_rgb: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB frames -> (N, 3, 224, 224) float32 normalised tensor."""
    if frames_rgb.ndim != 4 or frames_rgb.shape[-1] != 3 or frames_rgb.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames_rgb.shape} {frames_rgb.dtype}")
    batch = torch.from_numpy(np.ascontiguousarray(frames_rgb)).permute(0, 3, 1, 2)
    resized = TF.resize(batch, list(INPUT_SIZE), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    scaled = resized.to(torch.float32).div_(255.0)
    return TF.normalize(scaled, list(IMAGENET_MEAN), list(IMAGENET_STD))
