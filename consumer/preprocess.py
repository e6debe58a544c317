"""Preprocessing equal to the release's ``load_transform()``, with PIL and numpy (no torch).

The release (MIT moments_models test_video.py) resizes each PIL frame to 224x224 (no crop) with
PIL's bilinear filter, then ``ToTensor`` (uint8 / 255) and ImageNet mean/std. This is that,
operation for operation in float32, so every engine sees the very same input and the result is
bit-identical to the release's transform (tests/test_preprocess.py).
"""

from __future__ import annotations

from functools import lru_cache

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


def resize_turned_frame(frame_rgb: np.ndarray, quarter_turns: int) -> np.ndarray:
    """``resize_frame(np.rot90(frame_rgb, quarter_turns))`` bit for bit, without turning the full frame.

    Phones record rotated: the frame is stored on its side and a display matrix says how to turn it
    upright. Turning a 1080p frame costs about as much as resizing it; this resizes it first and
    turns the 224x224 result. Equal bits need care, as PIL resizes in two passes (along rows, then
    columns, or with the result of the other order for some sizes), each rounding to 8 bits: the
    passes run in the order that matches PIL's for the upright frame, each along the same pixels in
    the same direction.
    A quarter turn swaps rows and columns (a transpose, done last on the small result) and reverses
    one axis; a reversal (a flip) commutes with a pass along the other axis, so it waits until the
    pass along its own axis, which then meets the 224-pixel result of the first pass where it can.
    """
    turns = quarter_turns % 4
    if turns == 0:
        return resize_frame(frame_rgb)
    if frame_rgb.ndim != 3 or frame_rgb.shape[-1] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame_rgb.shape} {frame_rgb.dtype}")
    # np.rot90(F, k) is: F flipped left-right (k = 1, 2) and upside down (k = 2, 3), then
    # transposed (k = 1, 3).
    flip_columns, flip_rows, transpose = turns in (1, 2), turns in (2, 3), turns % 2 == 1
    height, width = frame_rgb.shape[:2]
    upright_height, upright_width = (width, height) if transpose else (height, width)
    upright_passes = ("rows", "columns") if _rows_first(upright_height, upright_width) else ("columns", "rows")
    # The same passes on the stored frame's axes: a transpose swaps them.
    swap = {"rows": "columns", "columns": "rows"}
    passes = [swap[one] if transpose else one for one in upright_passes]
    image = Image.fromarray(np.ascontiguousarray(frame_rgb))
    for along in passes:
        # A pass along rows (horizontal) reads each row left to right: the left-right flip first.
        if along == "rows":
            if flip_columns:
                image, flip_columns = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), False
            image = image.resize((INPUT_SIZE[0], image.height), Image.Resampling.BILINEAR)
        else:
            if flip_rows:
                image, flip_rows = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM), False
            image = image.resize((image.width, INPUT_SIZE[1]), Image.Resampling.BILINEAR)
    if flip_columns:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_rows:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if transpose:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    return np.asarray(image)


@lru_cache(maxsize=64)
def _rows_first(height: int, width: int) -> bool:
    """Whether PIL resizes a ``height`` x ``width`` RGB image to 224x224 along rows first.

    Pillow's source resizes along rows, then columns, but the installed Pillow 13.0 gives the
    result of columns first for some sizes (a 360x640 portrait frame, width x height; rows first
    for a 1080x1920 one), so which order matches is asked: once per size in a process, on noise,
    where the two orders' 8-bit roundings part (~20 ms for a 1080p size, once).
    """
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    whole = np.asarray(image.resize(INPUT_SIZE, Image.Resampling.BILINEAR))
    rows = image.resize((INPUT_SIZE[0], height), Image.Resampling.BILINEAR)
    return bool(np.array_equal(whole, np.asarray(rows.resize(INPUT_SIZE, Image.Resampling.BILINEAR))))


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
