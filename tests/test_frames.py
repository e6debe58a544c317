from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consumer.frames import read_frames, sample_indices
from moments_stream.errors import VideoDecodeError
from tests.media import set_avi_frame_count, synthetic_frames, write_ffv1, write_h264


@pytest.mark.parametrize(
    ("frame_count", "num_frames", "expected"),
    [
        (90, 16, [2, 8, 14, 19, 25, 30, 36, 42, 47, 53, 59, 64, 70, 75, 81, 87]),
        (16, 16, list(range(16))),
        (32, 4, [4, 12, 20, 28]),
        (1, 4, [0, 0, 0, 0]),
        (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),
        (7, 1, [3]),
    ],
)
def test_sample_indices(frame_count: int, num_frames: int, expected: list[int]) -> None:
    assert sample_indices(frame_count, num_frames) == expected


@pytest.mark.parametrize("frame_count", [1, 2, 15, 16, 17, 90, 1000, 18000])
@pytest.mark.parametrize("num_frames", [1, 8, 16])
def test_sample_indices_properties(frame_count: int, num_frames: int) -> None:
    indices = sample_indices(frame_count, num_frames)
    assert len(indices) == num_frames
    assert indices == sorted(indices)
    assert all(0 <= i < frame_count for i in indices)
    if frame_count >= num_frames:
        assert len(set(indices)) == num_frames


def test_sample_indices_rejects_empty() -> None:
    with pytest.raises(ValueError):
        sample_indices(0, 16)


@pytest.fixture()
def lossless_clip(tmp_path: Path) -> tuple[Path, np.ndarray]:
    frames = synthetic_frames(40, seed=3)
    return write_ffv1(tmp_path / "clip.avi", frames), frames


def test_read_frames_returns_exact_rgb_frames_at_sampled_indices(lossless_clip: tuple[Path, np.ndarray]) -> None:
    path, frames = lossless_clip
    sampled = read_frames(str(path), 8)
    assert sampled.frame_count == 40
    assert list(sampled.indices) == sample_indices(40, 8)
    np.testing.assert_array_equal(sampled.frames, frames[sample_indices(40, 8)])


@pytest.mark.parametrize("declared", [0, 5, 39, 41, 400])
def test_read_frames_survives_a_lying_frame_count(lossless_clip: tuple[Path, np.ndarray], declared: int) -> None:
    path, frames = lossless_clip
    set_avi_frame_count(path, declared)
    sampled = read_frames(str(path), 8)
    assert sampled.frame_count == 40
    np.testing.assert_array_equal(sampled.frames, frames[sample_indices(40, 8)])


def test_clip_shorter_than_num_frames_repeats_frames(tmp_path: Path) -> None:
    frames = synthetic_frames(3, seed=1)
    sampled = read_frames(str(write_ffv1(tmp_path / "short.avi", frames)), 16)
    assert sampled.frames.shape[0] == 16
    np.testing.assert_array_equal(sampled.frames, frames[sample_indices(3, 16)])


def test_single_frame_clip(tmp_path: Path) -> None:
    sampled = read_frames(str(write_h264(tmp_path / "one.mp4", synthetic_frames(1, seed=2))), 16)
    assert sampled.frames.shape == (16, 96, 128, 3)


def test_real_mit_clip(juggling: Path) -> None:
    sampled = read_frames(str(juggling), 16)
    assert sampled.frame_count == 90
    assert sampled.frames.shape == (16, 480, 480, 3)
    assert sampled.frames.dtype == np.uint8


def test_h264_is_converted_from_bgr_to_rgb(tmp_path: Path) -> None:
    red = np.zeros((30, 64, 64, 3), dtype=np.uint8)
    red[..., 0] = 220
    sampled = read_frames(str(write_h264(tmp_path / "red.mp4", red)), 4)
    mean = sampled.frames.reshape(-1, 3).mean(axis=0)
    assert mean[0] > 180 and mean[1] < 60 and mean[2] < 60


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.mp4", b"", "empty"),
        ("noise.mp4", bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8)), "not a video"),
        ("notes.avi", b"this is a text file, not a video\n" * 100, "not a video"),
    ],
)
def test_bad_inputs_raise_one_clear_error(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError) as caught:
        read_frames(str(path), 16, name=f"bucket/videos/{name}")
    assert "bucket/videos/" + name in str(caught.value)  # the storage key, not the temporary path
    assert reason in caught.value.reason
    assert caught.value.fix


def test_truncated_video_raises_or_decodes_what_is_there(tmp_path: Path, juggling: Path) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(juggling.read_bytes()[:2000])
    with pytest.raises(VideoDecodeError):
        read_frames(str(truncated), 16)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="does not exist"):
        read_frames(str(tmp_path / "absent.mp4"), 16)


def test_walk_stops_at_the_decoded_frame_cap(lossless_clip: tuple[Path, np.ndarray]) -> None:
    path, frames = lossless_clip
    sampled = read_frames(str(path), 4, max_frames=20, seek=False)
    assert sampled.frame_count == 20 and sampled.method == "walk"
    np.testing.assert_array_equal(sampled.frames, frames[sample_indices(20, 4)])


def test_frames_are_shrunk_as_they_are_decoded(tmp_path: Path) -> None:
    from consumer.preprocess import resize_frame, to_model_input

    frames = synthetic_frames(6, height=1080, width=1920, seed=4)
    path = str(write_ffv1(tmp_path / "hd.avi", frames))
    small = read_frames(path, 4, keep=resize_frame)
    full = read_frames(path, 4)
    assert small.frames.shape == (4, 224, 224, 3) and full.frames.shape == (4, 1080, 1920, 3)
    # Shrinking early must not change what the model sees.
    np.testing.assert_array_equal(to_model_input(small.frames), to_model_input(full.frames))


@pytest.mark.parametrize("quarter_turns", [0, 1, 2, 3])
@pytest.mark.parametrize(("height", "width"), [(96, 128), (136, 240), (97, 127), (224, 224), (360, 640), (1080, 1920)])
def test_a_frame_resized_then_turned_is_bit_for_bit_the_turned_frame_resized(
    height: int, width: int, quarter_turns: int
) -> None:
    """Turning the 224x224 result, not the full frame, gives the model the same input. The sizes
    include frames whose upright version PIL resizes rows first and columns first."""
    from consumer.preprocess import resize_frame, resize_turned_frame

    frame = np.random.default_rng(height * width + quarter_turns).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = resize_frame(np.ascontiguousarray(np.rot90(frame, quarter_turns)))
    np.testing.assert_array_equal(resize_turned_frame(frame, quarter_turns), expected)


@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize(("height", "width"), [(96, 128), (136, 240)])  # upright, PIL resizes rows / columns first
def test_a_rotated_video_gives_the_model_its_frames_turned_upright(
    tmp_path: Path, degrees: int, height: int, width: int
) -> None:
    """A phone video (a display matrix on the stored frames): the sampled frames, shrunk as the
    consumer shrinks them, are exactly the unrotated clip's frames turned as ffmpeg turns them,
    then preprocessed. The content is asymmetric, so a turn the wrong way fails."""
    from consumer.preprocess import resize_frame, to_model_input
    from tests.media import upright_rgb_by_ffmpeg, with_display_rotation, write_h264_lossless

    plain = write_h264_lossless(tmp_path / "plain.mp4", synthetic_frames(12, height=height, width=width, seed=7))
    rotated = with_display_rotation(plain, tmp_path / f"rotated{degrees}.mp4", degrees)
    turns = degrees // 90
    stored = read_frames(str(plain), 4).frames
    upright = np.rot90(stored, turns, axes=(1, 2))
    # The direction, independently: ffmpeg's own upright frames are the stored ones turned so.
    shape = (width, height) if turns % 2 else (height, width)
    np.testing.assert_array_equal(upright_rgb_by_ffmpeg(rotated, *shape)[sample_indices(12, 4)], upright)

    sampled = read_frames(str(rotated), 4, keep=resize_frame)

    assert sampled.frames.shape == (4, 224, 224, 3)
    np.testing.assert_array_equal(to_model_input(sampled.frames), to_model_input(upright))
    wrong_way = to_model_input(np.rot90(stored, -turns, axes=(1, 2)))
    assert turns == 2 or not np.array_equal(to_model_input(sampled.frames), wrong_way)


def test_a_directory_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="directory") as caught:
        read_frames(str(tmp_path), 16, name="bucket/videos/")
    assert "does not exist" not in str(caught.value)
    assert "video file" in caught.value.fix


def test_an_unreadable_file_says_so_and_how_to_fix_it(
    tmp_path: Path, lossless_clip: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    path, _ = lossless_clip
    if os.geteuid() == 0:  # root reads any file: the refusal the OS would give, given here
        def refuse(file: str, *args: object, **kwargs: object) -> object:
            raise PermissionError(13, "Permission denied", file)

        monkeypatch.setattr("consumer.frames.open", refuse, raising=False)
    else:
        path.chmod(0)
    with pytest.raises(VideoDecodeError, match="cannot be read") as caught:
        read_frames(str(path), 16, name="bucket/videos/clip.avi")
    assert "Permission denied" in caught.value.reason and "does not exist" not in str(caught.value)
    assert "chmod" in caught.value.fix and str(path) in caught.value.fix
