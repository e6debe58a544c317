"""Frame sampling: which frames to take, and taking them with OpenCV.

``sample_indices`` is the pure part (segment centres, as TSN-style video models expect);
``read_frames`` is the I/O edge. It walks the stream once with ``grab()`` and decodes to
pixels (``retrieve()``) only the frames it keeps, because seeking in H.264 is several times
slower than grabbing sequentially and most frames are never needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from moments_stream.errors import VideoDecodeError
from moments_stream.settings import DEFAULT_MAX_DECODED_FRAMES


def sample_indices(frame_count: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames evenly spread over a clip of ``frame_count`` frames.

    Each index is the centre of one of ``num_frames`` equal segments. A clip shorter than
    ``num_frames`` repeats frames instead of failing, so every clip gets a prediction.
    """
    if frame_count < 1:
        raise ValueError(f"frame_count must be positive, got {frame_count}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return [min(frame_count - 1, int((segment + 0.5) * frame_count / num_frames)) for segment in range(num_frames)]


@dataclass(frozen=True)
class SampledFrames:
    """RGB frames (N, H, W, 3) uint8, plus what decoding learnt about the clip."""

    frames: np.ndarray
    frame_count: int
    indices: tuple[int, ...]


def _open(path: str) -> cv2.VideoCapture:
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise VideoDecodeError(path, "not a video OpenCV/ffmpeg can open (corrupt, truncated or unsupported)")
    return capture


FrameTransform = Callable[[np.ndarray], np.ndarray]


def _collect(
    path: str, wanted: Sequence[int], max_frames: int, keep: FrameTransform | None
) -> tuple[dict[int, np.ndarray], int]:
    """One sequential pass: the wanted frames as RGB, and the true number of frames.

    The container's frame count can be wrong or zero, so the stream is walked to its end
    (``grab`` without ``retrieve`` is cheap) to learn the real count.
    """
    wanted_set = set(wanted)
    kept: dict[int, np.ndarray] = {}
    capture = _open(path)
    try:
        index = 0
        while index < max_frames and capture.grab():
            if index in wanted_set:
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    raise VideoDecodeError(path, f"frame {index} could not be decoded")
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                kept[index] = keep(rgb) if keep is not None else rgb
            index += 1
    finally:
        capture.release()
    return kept, index


def reported_frame_count(path: str) -> int:
    """What the container claims; may be wrong, 0 or negative."""
    capture = _open(path)
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def read_frames(
    path: str,
    num_frames: int,
    max_frames: int = DEFAULT_MAX_DECODED_FRAMES,
    keep: FrameTransform | None = None,
) -> SampledFrames:
    """Decode ``num_frames`` evenly spaced RGB frames of the video at ``path``.

    Raises :class:`VideoDecodeError` naming the file for anything that is not a decodable
    video. ``max_frames`` bounds the walk (default: 30 minutes at 30 fps); longer videos are
    sampled over their first ``max_frames`` frames. ``keep`` is applied to each frame as it is
    decoded (the classifier shrinks it to the model's input size), so a 4K or 8K video holds
    ``num_frames`` small frames in memory, not full-resolution ones.
    """
    claimed = reported_frame_count(path)
    guess = min(claimed, max_frames) if claimed > 0 else 0
    wanted = sample_indices(guess, num_frames) if guess > 0 else []
    kept, actual = _collect(path, wanted, max_frames, keep)
    if actual == 0:
        raise VideoDecodeError(path, "the stream holds no decodable frames")
    if actual != guess:
        # The container lied about its length: sample again against the true count.
        wanted = sample_indices(actual, num_frames)
        kept, actual = _collect(path, wanted, max_frames, keep)
    missing = [index for index in wanted if index not in kept]
    if missing:
        raise VideoDecodeError(path, f"frames {missing[:5]} could not be decoded on a second pass")
    frames = np.stack([kept[index] for index in wanted])
    return SampledFrames(frames=frames, frame_count=actual, indices=tuple(wanted))
