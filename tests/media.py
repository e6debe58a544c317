"""Test clips made on the fly: lossless FFV1 (exact pixels known), H.264 like real MiT clips, mp4v."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np


def synthetic_frames(count: int, height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """RGB frames with seeded coloured blocks drifting across a gradient, so clips differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [(x * rng.uniform(0.5, 2.0)) % 256, (y * rng.uniform(0.5, 2.0)) % 256, ((x + y) * rng.uniform(0.2, 1.0)) % 256],
        axis=-1,
    ).astype(np.uint8)
    blocks = [
        (
            rng.integers(0, height),
            rng.integers(0, width),
            rng.integers(8, 32),
            rng.integers(0, 256, 3),
            rng.integers(-4, 5, 2),
        )
        for _ in range(6)
    ]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        frame = base.copy()
        for top, left, size, colour, (dy, dx) in blocks:
            r, c = int(top + dy * index) % height, int(left + dx * index) % width
            frame[r : r + size, c : c + size] = colour
        frames[index] = frame
    return frames


def write_opencv(path: Path, frames_rgb: np.ndarray, fourcc: str, fps: float = 30.0) -> Path:
    height, width = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for frame in frames_rgb:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_ffv1(path: Path, frames_rgb: np.ndarray, fps: float = 30.0) -> Path:
    """Lossless: decoding gives back exactly ``frames_rgb``."""
    return write_opencv(path, frames_rgb, "FFV1", fps)


def _write_x264(path: Path, frames_rgb: np.ndarray, fps: float, pix_fmt: str, params: list[str]) -> Path:
    """H.264 in MP4 via the ffmpeg that imageio-ffmpeg ships (OpenCV wheels cannot encode it)."""
    height, width = frames_rgb.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out=pix_fmt,
        macro_block_size=1,
        output_params=["-preset", "ultrafast", *params],
    )
    writer.send(None)
    for frame in frames_rgb:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def write_h264(path: Path, frames_rgb: np.ndarray, fps: float = 30.0) -> Path:
    """H.264 in MP4, 4:2:0, as most real clips are."""
    return _write_x264(path, frames_rgb, fps, "yuv420p", [])


def write_h264_lossless(path: Path, frames_rgb: np.ndarray, fps: float = 30.0) -> Path:
    """H.264 in MP4 with x264's lossless mode (qp 0): the codec adds no loss to the YUV frames."""
    return _write_x264(path, frames_rgb, fps, "yuv444p", ["-qp", "0"])


def with_display_rotation(source: Path, path: Path, degrees: int) -> Path:
    """The same stream (copied, not re-encoded) with a display matrix turning it ``degrees``, as
    phones record: the pixels stay as stored and players turn them."""
    ffmpeg("-display_rotation", str(degrees), "-i", str(source), "-c", "copy", str(path))
    return path


def upright_rgb_by_ffmpeg(path: Path, height: int, width: int) -> np.ndarray:
    """Every frame as ffmpeg itself shows it (it applies the display rotation), RGB (N, H, W, 3)."""
    raw = path.with_suffix(".rgb")
    ffmpeg("-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", str(raw))
    return np.fromfile(raw, np.uint8).reshape(-1, height, width, 3)


def set_avi_frame_count(path: Path, declared: int) -> Path:
    """Make an AVI lie about its length (main header and stream header)."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, data.find(b"avih") + 8 + 16, declared)
    struct.pack_into("<I", data, data.find(b"strh") + 8 + 32, declared)
    path.write_bytes(bytes(data))
    return path


def ffmpeg(*args: str) -> None:
    import subprocess

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def write_test_pattern_h264(path: Path, seconds: float, width: int, height: int, fps: int = 30) -> Path:
    """ffmpeg's moving test pattern as H.264: long or huge clips without holding frames in Python."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    return path


def write_audio_only_mp4(path: Path, seconds: float = 1.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-f", "mp4", str(path))
    return path
