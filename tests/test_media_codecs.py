"""Real-world media: every common codec and container, rotated, odd sizes, 10-bit, variable frame
rate, long videos and broken files, each made here with the ffmpeg imageio-ffmpeg ships.

Where timestamps are sane the sampled frames are reached by seeking, and must equal what a full
walk of the same stream gives; where they are not, the walk is used and the record says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consumer.frames import read_frames, sample_indices
from moments_stream.errors import VideoDecodeError
from tests.media import ffmpeg

PATTERN = "testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"


def make_clip(path: Path, *encode: str, w: int = 128, h: int = 96, fps: int = 30, seconds: float = 2) -> Path:
    ffmpeg("-f", "lavfi", "-i", PATTERN.format(w=w, h=h, fps=fps, seconds=seconds), *encode, str(path))
    return path


# (file name, encoder arguments, the codec FFmpeg reports)
CODECS = [
    ("h264.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], "h264"),
    ("h264-bframes.mkv", ["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p"], "h264"),
    ("hevc.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-tag:v", "hvc1"], "hevc"),
    ("hevc-10bit.mkv", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le"], "hevc"),
    ("vp8.webm", ["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "500k"], "vp8"),
    ("vp9.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "500k"], "vp9"),
    ("vp9-10bit.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p10le"],
     "vp9"),
    ("av1.mp4", ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", "-pix_fmt", "yuv420p"], "libdav1d"),
    ("av1.webm", ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", "-pix_fmt", "yuv420p"], "libdav1d"),
    ("mpeg4.avi", ["-c:v", "mpeg4", "-q:v", "5"], "mpeg4"),
    ("mjpeg.avi", ["-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p"], "mjpeg"),
    ("mjpeg.mov", ["-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj422p"], "mjpeg"),
    ("prores.mov", ["-c:v", "prores_ks", "-profile:v", "0"], "prores"),
    ("h264.mov", ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], "h264"),
]


@pytest.mark.parametrize(("name", "encode", "codec"), CODECS, ids=[name for name, _, _ in CODECS])
def test_every_common_codec_and_container_decodes(tmp_path: Path, name: str, encode: list[str], codec: str) -> None:
    clip = make_clip(tmp_path / name, *encode)
    sampled = read_frames(str(clip), 16, name=f"videos/{name}")
    assert (sampled.frame_count, sampled.codec, sampled.frames.shape) == (60, codec, (16, 96, 128, 3))
    assert sampled.method == "seek"
    walked = read_frames(str(clip), 16, seek=False)
    assert walked.method == "walk" and walked.frame_count == 60
    np.testing.assert_array_equal(sampled.frames, walked.frames)


def test_odd_sized_frames(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "odd.mkv", "-vf", "scale=127:97", "-c:v", "mjpeg", "-pix_fmt", "yuvj444p")
    sampled = read_frames(str(clip), 8)
    assert sampled.frames.shape == (8, 97, 127, 3)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_display_rotation_is_applied_as_players_do(tmp_path: Path, degrees: int) -> None:
    plain = make_clip(tmp_path / "plain.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    rotated = tmp_path / f"rotated{degrees}.mp4"
    ffmpeg("-display_rotation", str(degrees), "-i", str(plain), "-c", "copy", str(rotated))
    # What ffmpeg itself shows (it applies the rotation by default), frame by frame.
    upright = tmp_path / "upright.rgb"
    ffmpeg("-i", str(rotated), "-f", "rawvideo", "-pix_fmt", "rgb24", str(upright))
    height, width = (128, 96) if degrees in (90, 270) else (96, 128)
    reference = np.fromfile(upright, np.uint8).reshape(-1, height, width, 3)

    sampled = read_frames(str(rotated), 4)

    np.testing.assert_array_equal(sampled.frames, reference[sample_indices(len(reference), 4)])


def test_variable_frame_rate_is_walked(tmp_path: Path) -> None:
    clip = tmp_path / "vfr.mkv"
    source = make_clip(tmp_path / "cfr.mkv", "-c:v", "ffv1", seconds=2)
    # The first half at 30 fps, the second at 10 fps (every frame kept, timestamps stretched).
    ffmpeg("-i", str(source), "-vf", "setpts='if(lt(N,30),N,30+(N-30)*3)/30/TB'", "-fps_mode", "vfr",
           "-c:v", "ffv1", str(clip))
    sampled = read_frames(str(clip), 8)
    assert sampled.method == "walk" and sampled.frame_count == 60
    reference = read_frames(str(source), 8)
    np.testing.assert_array_equal(sampled.frames, reference.frames)  # the same frames, by index


def test_single_frame_video(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "one.mp4", "-c:v", "libx264", "-frames:v", "1", "-pix_fmt", "yuv420p")
    sampled = read_frames(str(clip), 16)
    assert sampled.frame_count == 1 and sampled.frames.shape == (16, 96, 128, 3)


def test_long_video_is_sampled_over_its_whole_length_by_seeking(tmp_path: Path) -> None:
    """Five minutes (9,000 frames, a keyframe every 250): samples reach the last segment, and equal a
    full walk's frames."""
    clip = make_clip(tmp_path / "long.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-g", "250",
                     "-pix_fmt", "yuv420p", w=96, h=64, seconds=300)
    sampled = read_frames(str(clip), 16)
    assert sampled.method == "seek" and sampled.frame_count == 9000
    assert sampled.indices[-1] == sample_indices(9000, 16)[-1] > 8400
    walked = read_frames(str(clip), 16, seek=False)
    np.testing.assert_array_equal(sampled.frames, walked.frames)


def test_audio_only_file_says_so(tmp_path: Path) -> None:
    from tests.media import write_audio_only_mp4

    with pytest.raises(VideoDecodeError, match="audio stream") as caught:
        read_frames(str(write_audio_only_mp4(tmp_path / "talk.mp4")), 16, name="bucket/in/talk.mp4")
    assert "bucket/in/talk.mp4" in str(caught.value)


def test_truncated_video_names_where_it_breaks(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "whole.mkv", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[:1500])
    with pytest.raises(VideoDecodeError, match="truncated or corrupt") as caught:
        read_frames(str(cut), 16, name="bucket/in/cut.mkv")
    assert "bucket/in/cut.mkv" in str(caught.value) and "1,500" in str(caught.value)


def test_a_truncated_tail_still_classifies_what_is_there(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "whole.mkv", "-c:v", "mjpeg", "-pix_fmt", "yuvj420p")
    data = clip.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    sampled = read_frames(str(cut), 8)
    assert 20 < sampled.frame_count < 60 and sampled.method == "walk"


# (file name, encoder arguments, whether its decoder skips frames in a seek: non-reference B-frames)
SKIPPING = [
    ("h264-bframes.mp4", ["-c:v", "libx264", "-preset", "medium", "-bf", "3", "-g", "48", "-pix_fmt", "yuv420p"],
     True),
    ("h264-bpyramid.mkv", ["-c:v", "libx264", "-preset", "medium", "-bf", "5", "-b-pyramid", "normal", "-g", "30",
                           "-pix_fmt", "yuv420p"], True),
    ("hevc-bframes.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "bframes=4:log-level=error",
                          "-pix_fmt", "yuv420p", "-tag:v", "hvc1"], True),
    ("vp9-altref.webm", ["-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "8", "-b:v", "300k",
                         "-auto-alt-ref", "1", "-lag-in-frames", "16"], False),
    ("av1.mp4", ["-c:v", "libaom-av1", "-cpu-used", "8", "-pix_fmt", "yuv420p"], False),
]


@pytest.mark.parametrize(("name", "encode", "skips"), SKIPPING, ids=[name for name, _, _ in SKIPPING])
def test_frames_skipped_in_a_seek_leave_the_sampled_frames_a_full_walks(
    tmp_path: Path, name: str, encode: list[str], skips: bool
) -> None:
    """FFmpeg's skip_frame NONREF: frames neither sampled nor referenced are not decoded, and the
    sampled ones (non-reference B-frames among them, at 45 of 120) are exactly a full walk's."""
    clip = make_clip(tmp_path / name, *encode, seconds=4)
    for num_frames in (16, 45):
        sampled = read_frames(str(clip), num_frames)
        walked = read_frames(str(clip), num_frames, seek=False)
        assert sampled.method == "seek" and sampled.frame_count == walked.frame_count == 120
        np.testing.assert_array_equal(sampled.frames, walked.frames)
        assert walked.decoded == 120
        assert (sampled.decoded < 120) == skips  # frames were skipped where the codec can


def test_a_sampled_frame_the_decoder_skipped_is_noticed_and_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were a sampled frame skipped (a decoder that takes skip_frame up late, say), the seek sees
    the frame missing and walks instead: the frames stay a full walk's."""
    import consumer.frames

    clip = make_clip(tmp_path / "h264.mp4", *SKIPPING[0][1], seconds=4)
    walked = read_frames(str(clip), 45, seek=False)

    def skip_everything(self: consumer.frames._Skipping, packet: object) -> None:
        self.decoder.skip_frames(True)

    monkeypatch.setattr(consumer.frames._Skipping, "__call__", skip_everything)
    sampled = read_frames(str(clip), 45)
    assert sampled.method == "walk"
    np.testing.assert_array_equal(sampled.frames, walked.frames)


LONG_WITH_B_FRAMES = {
    "h264.mp4": ["-c:v", "libx264", "-preset", "superfast", "-bf", "3", "-g", "250", "-pix_fmt", "yuv420p"],
    "hevc-open-gop.mkv": ["-c:v", "libx265", "-preset", "fast", "-pix_fmt", "yuv420p",
                          "-x265-params", "bframes=4:keyint=250:open-gop=1:log-level=error"],
}


@pytest.mark.parametrize("name", LONG_WITH_B_FRAMES)
def test_a_long_video_with_b_frames_is_sampled_by_seeking_and_skipping(tmp_path: Path, name: str) -> None:
    """200 s (6,000 frames, B-frames, a keyframe every 250; HEVC's open GOPs too): samples 375
    frames apart are reached by seeks, the frames between them skipped where they can be, and
    equal a full walk's."""
    clip = make_clip(tmp_path / name, *LONG_WITH_B_FRAMES[name], w=96, h=64, seconds=200)
    sampled = read_frames(str(clip), 16)
    walked = read_frames(str(clip), 16, seek=False)
    assert sampled.method == "seek" and sampled.frame_count == walked.frame_count == 6000
    assert sampled.decoded < 16 * 250
    np.testing.assert_array_equal(sampled.frames, walked.frames)


def test_variable_frame_rate_with_b_frames_is_walked(tmp_path: Path) -> None:
    """Timestamps that do not follow a constant rate: walked (no frame skipped), frames by index,
    equal to those the same frames at a constant rate give by seeking and skipping."""
    source = make_clip(tmp_path / "source.mkv", "-c:v", "ffv1", seconds=2)
    lossless = ["-c:v", "libx264", "-qp", "0", "-bf", "3", "-pix_fmt", "yuv444p"]
    constant, variable = tmp_path / "cfr.mkv", tmp_path / "vfr.mkv"
    ffmpeg("-i", str(source), *lossless, str(constant))
    ffmpeg("-i", str(source), "-vf", "setpts='if(lt(N,30),N,30+(N-30)*3)/30/TB'", "-fps_mode", "vfr",
           *lossless, str(variable))
    sampled = read_frames(str(variable), 8)
    reference = read_frames(str(constant), 8)
    assert sampled.method == "walk" and sampled.frame_count == 60
    assert reference.method == "seek" and reference.frame_count == 60
    np.testing.assert_array_equal(sampled.frames, reference.frames)
