"""The Moments in Time ResNet50 in torch: building it, loading release checkpoints, scoring frames.

Only the torch paths import this module (the torch engine, GPUs, --compile, converting for a
compiled engine, make-test-checkpoint, a checkpoint not baked yet): a CPU consumer running the baked
conversion never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torchvision

from moments_stream.errors import CheckpointError

from .engines import InferenceOptions

# Checkpoints written by `consumer make-test-checkpoint` carry this marker, so that output
# from random weights is never mistaken for a real prediction.
SYNTHETIC_MARKER = "moments_stream_synthetic"


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release was saved from ``nn.DataParallel``: its keys start with ``module.``."""
    return {(key[len("module.") :] if key.startswith("module.") else key): value for key, value in state_dict.items()}


def checkpoint_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The tensors of a release-format checkpoint (``{'state_dict': ...}``) or a bare state dict."""
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(
            "checkpoint holds no state_dict of tensors",
            fix="pass the release file moments_RGB_resnet50_imagenetpretrained.pth.tar (or a ResNet50 state dict)",
        )
    return strip_module_prefix(checkpoint)


def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    weight = state_dict.get("fc.weight")
    if weight is None or weight.ndim != 2:
        raise CheckpointError(
            "checkpoint has no fc.weight matrix, so it is not a ResNet classifier",
            fix="pass a Moments in Time ResNet50 checkpoint",
        )
    return int(weight.shape[0])


def build_model(state_dict: Mapping[str, torch.Tensor], expected_classes: int) -> torch.nn.Module:
    """A ResNet50 in eval mode with the checkpoint's weights; refuses a class-count mismatch."""
    found = checkpoint_num_classes(state_dict)
    if found != expected_classes:
        raise CheckpointError(
            f"checkpoint predicts {found} classes but the category list has {expected_classes}",
            fix="pair v1 weights (339 classes) with category_momentsv1.txt and v2 weights (305) with "
            "category_momentsv2.txt, e.g. --model v2 or matching --weights/--categories",
        )
    model = torchvision.models.resnet50(weights=None, num_classes=found)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint does not fit torchvision's resnet50: {str(error).splitlines()[0]}",
            fix="pass a Moments in Time ResNet50 checkpoint (moments_RGB_resnet50_imagenetpretrained.pth.tar)",
        ) from None
    return model.eval()


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Tensors of the checkpoint at ``path`` and whether it is a synthetic test checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: {error.__class__.__name__}: {str(error).splitlines()[0][:200]}",
            fix="delete the file and download it again, or pass --weights with a valid .pth.tar",
        ) from None
    synthetic = isinstance(checkpoint, Mapping) and bool(checkpoint.get(SYNTHETIC_MARKER, False))
    return checkpoint_state_dict(checkpoint), synthetic


def make_synthetic_checkpoint(num_classes: int, seed: int = 0) -> dict[str, Any]:
    """A checkpoint in the exact release format with random weights, marked as synthetic.

    For tests and for trying the pipeline where the real weights cannot be downloaded.
    A random ResNet50's features share one huge common component, so a plain random
    classifier gives every input the same top-1; centring the classifier on the features
    of random calibration images makes top-1 depend on the input, as tests need.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes).eval()
    backbone = torch.nn.Sequential(*list(model.children())[:-1])
    calibration = torch.rand(16, 3, 224, 224, generator=generator) * 2 - 1
    with torch.inference_mode():
        features = backbone(calibration).flatten(1)
    mean = features.mean(dim=0)
    spread = (features - mean).std(dim=0).clamp_min(1e-6)
    weight = (
        torch.randn(num_classes, features.shape[1], generator=generator) / spread * (0.5 / features.shape[1] ** 0.5)
    )
    with torch.no_grad():
        model.fc.weight.copy_(weight)
        model.fc.bias.copy_(-(weight @ mean))
    state = {"module." + key: value for key, value in model.state_dict().items()}
    return {"epoch": 0, "arch": "resnet50", "state_dict": state, SYNTHETIC_MARKER: True}


def prepare_for_inference(model: torch.nn.Module, options: InferenceOptions) -> torch.nn.Module:
    model = model.to(options.device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if options.compile:
        import torch._inductor.config as inductor_config

        # Freezing folds the (constant) weights into the compiled graph: measured here as the
        # difference between 4.1 and 5.7 videos/s with bf16 on CPU.
        inductor_config.freezing = True
        model = cast(torch.nn.Module, torch.compile(model))  # an OptimizedModule: a Module
    return model


def warm_up(model: torch.nn.Module, options: InferenceOptions, batch_size: int) -> None:
    """One forward pass on a batch of the shape the worker will see, so that compilation (and
    allocator warm-up) is paid once at load, not by the first video."""
    frame_probabilities(model, torch.zeros(batch_size, 3, 224, 224), options)


def frame_probabilities(
    model: torch.nn.Module, batch: torch.Tensor | np.ndarray, options: InferenceOptions
) -> torch.Tensor:
    """Softmax per frame: (N, 3, 224, 224) -> (N, classes) float32 probabilities, on the device."""
    batch = torch.as_tensor(batch).to(options.device)
    if options.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.precision)
    device_type = torch.device(options.device).type
    with torch.inference_mode(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(batch)
    return torch.softmax(logits.float(), dim=1)
