"""What the model's outputs mean, in numpy: softmax per frame, the release's clip score, top-k.

Pure functions on float32 arrays, shared by every engine, so that a consumer without torch scores
a clip exactly as one with it does.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax per row of (N, classes) logits, in float32. The row maximum is subtracted first so
    that large logits cannot overflow ``exp``."""
    logits = np.asarray(logits, dtype=np.float32)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def video_probabilities(frame_probs: np.ndarray) -> np.ndarray:
    """The release's clip score: the mean over frames of per-frame softmax."""
    return np.asarray(frame_probs, dtype=np.float32).mean(axis=0)


def split_by_video(frame_probs: np.ndarray, frame_counts: list[int]) -> list[np.ndarray]:
    """Per-video clip scores for a batch that concatenates several videos' frames, in order."""
    if sum(frame_counts) != frame_probs.shape[0]:
        raise ValueError(f"{frame_probs.shape[0]} frame results for videos of {frame_counts} frames")
    boundaries = np.cumsum(frame_counts)[:-1]
    return [video_probabilities(chunk) for chunk in np.split(frame_probs, boundaries)]


def top_k(probabilities: np.ndarray, categories: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable categories, most probable first (ties: the lower class index first)."""
    probabilities = np.asarray(probabilities)
    # A stable sort of the negated scores keeps tied classes in index order: deterministic output.
    order = np.argsort(-probabilities, kind="stable")[: min(k, probabilities.shape[-1])]
    return [(categories[int(index)], float(probabilities[index])) for index in order]
