"""Preprocessing is the release's, bit for bit: PIL's bilinear resize to 224x224, then ToTensor and
ImageNet mean/std in float32 (torchvision's own transforms on PIL images are the reference); the
scores built on it (softmax, clip mean, top-k) are plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from consumer.preprocess import resize_frame, to_model_input
from consumer.scores import softmax, split_by_video, top_k, video_probabilities

# MIT moments_models test_video.py, load_transform().
RELEASE_TRANSFORM = T.Compose(
    [T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
)


def random_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), [(96, 128), (224, 224), (240, 320), (480, 480), (223, 641), (1080, 1920)])
def test_model_input_is_the_release_transform_exactly(height: int, width: int) -> None:
    frames = random_frames(3, height, width, seed=height + width)
    expected = torch.stack([RELEASE_TRANSFORM(Image.fromarray(frame)) for frame in frames]).numpy()
    found = to_model_input(frames)
    assert found.dtype == np.float32 and found.shape == (3, 3, 224, 224) and found.flags.c_contiguous
    np.testing.assert_array_equal(found, expected)
    # Frames shrunk as they are decoded give the very same input.
    np.testing.assert_array_equal(to_model_input(np.stack([resize_frame(frame) for frame in frames])), expected)


@pytest.mark.parametrize(("height", "width"), [(60, 80), (480, 480), (720, 1280)])
def test_resize_is_pils_bilinear(height: int, width: int) -> None:
    frame = random_frames(1, height, width, seed=3)[0]
    expected = np.asarray(Image.fromarray(frame).resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_frame(frame), expected)


def test_a_frame_of_the_input_size_is_kept_as_is() -> None:
    frame = random_frames(1, 224, 224, seed=5)[0]
    np.testing.assert_array_equal(resize_frame(frame), frame)


def test_a_rotated_frame_view_is_resized_like_its_copy() -> None:
    frame = random_frames(1, 120, 200, seed=9)[0]
    view = np.rot90(frame)  # what the decoder hands over for phone videos, before its own copy
    np.testing.assert_array_equal(resize_frame(view), resize_frame(np.ascontiguousarray(view)))


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8), np.uint8), np.zeros((1, 8, 8, 3), np.float32)])
def test_anything_but_uint8_rgb_frames_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        to_model_input(bad)


def test_softmax_is_torchs_and_survives_huge_logits() -> None:
    logits = np.random.default_rng(0).normal(0, 650, (16, 339)).astype(np.float32)  # the synthetic model's scale
    found = softmax(logits)
    assert found.dtype == np.float32 and np.isfinite(found).all()
    np.testing.assert_allclose(found, torch.softmax(torch.from_numpy(logits), dim=1).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(found.sum(axis=1), 1.0, atol=1e-5)


def test_clip_scores_and_top_k() -> None:
    frame_probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)
    np.testing.assert_allclose(video_probabilities(frame_probs), [1.4 / 3, 0.7 / 3, 0.3], atol=1e-7)
    first, second = split_by_video(frame_probs, [1, 2])
    np.testing.assert_allclose(first, frame_probs[0])
    np.testing.assert_allclose(second, frame_probs[1:].mean(axis=0))
    assert top_k(np.array([0.2, 0.5, 0.2, 0.1]), ["a", "b", "c", "d"], 3) == [("b", 0.5), ("a", 0.2), ("c", 0.2)]
    assert [name for name, _ in top_k(np.array([0.4, 0.6]), ["a", "b"], 5)] == ["b", "a"]
