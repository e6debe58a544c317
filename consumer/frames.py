"""Frame sampling: which frames to take (pure), and taking them from any video with PyAV (the edge).

``sample_indices`` gives the release's segment centres over the whole clip. ``read_frames`` takes
them with FFmpeg through PyAV, chosen by measurement (bench/README.md): it decodes every common
codec (AV1 included, through libdav1d, which OpenCV's wheels lack), seeks, decodes with threads,
and converts to RGB only the frames it keeps.

Two ways to reach the sampled frames, and the prediction says which was used:
- ``seek``: where timestamps are sane (a constant frame rate that agrees with the stream's
  duration and frame count), frame ``i`` is the one at time ``i / fps``. Samples close together
  are reached by decoding forward; a sample far ahead by seeking to the keyframe before it and
  decoding forward to it. Decode work is bounded by the samples, not the duration, and the frames
  are those a full walk would give. On the way, the decoder skips the frames that are neither
  sampled nor referenced by others (skip_frame NONREF, set packet by packet from the packet's
  timestamp; off for the sampled ones), and frames are indexed by timestamp, never by count.
  A sampled frame that does not come out, or a gap not made of skipped frames, means walking.
- ``walk``: where timestamps cannot be trusted (variable frame rate, no duration, missing or
  broken timestamps, a container that lies about its length), the packets are counted (no
  decoding) and one decoding pass keeps the sampled frames; at most ``max_frames`` are walked.

A phone video's display matrix is applied as players do; frames shrunk as they are decoded
(``keep=resize_frame``) are shrunk first and turned after, bit for bit the same model input.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from moments_stream.errors import VideoDecodeError
from moments_stream.settings import DEFAULT_MAX_DECODED_FRAMES, DEFAULT_MAX_FRAME_PIXELS

from .preprocess import resize_frame, resize_turned_frame

# A sample at most this many frames ahead is reached by decoding forward, not by seeking: a seek
# decodes from the keyframe before it (x264's default keyframe interval is 250 frames).
SEEK_GAP_FRAMES = 300
# Timestamps are "sane" when the frame count they imply is within this of the stream's own count.
FRAME_COUNT_TOLERANCE = 0.01
# Codecs whose decoder may skip the frames no other frame refers to (FFmpeg's skip_frame NONREF),
# taken up per packet: in a seek, a frame neither sampled nor referenced is not decoded (a quarter
# of the decode of a stream with B-frames, bench/README.md). AV1 (libdav1d) is left out: asked to,
# it skipped no frame here. Whatever a decoder does, a sampled frame that does not come out is
# noticed (the seek then walks), so the frames stay a full walk's.
SKIPPING_CODECS = frozenset({"h264", "hevc", "vp9"})


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
    method: str  # "seek" or "walk"
    codec: str
    decoded: int = 0  # frames the decoder gave out, in all passes (skipped frames are not)


FrameTransform = Callable[[np.ndarray], np.ndarray]
# Transforms that can take a frame as stored and give what they give for it turned upright: the
# full-size frame is then never turned (for a 1080p phone video, turning cost as much as decoding).
TURNED_TRANSFORMS: dict[FrameTransform, Callable[[np.ndarray, int], np.ndarray]] = {resize_frame: resize_turned_frame}


@dataclass(frozen=True)
class Timeline:
    """How frame indices map to timestamps in a stream whose timestamps are sane."""

    frame_count: int
    fps: Fraction
    time_base: Fraction
    start_pts: int

    def pts_of(self, index: int) -> int:
        return self.start_pts + round(index / (self.fps * self.time_base))

    def grid_position(self, pts: int) -> tuple[int, bool]:
        """The frame index nearest ``pts``, and whether ``pts`` lies on the frame grid (within a
        quarter frame). Integer arithmetic: this runs for every frame decoded."""
        scale = self.time_base * self.fps
        numerator, denominator = (pts - self.start_pts) * scale.numerator, scale.denominator
        index = (2 * numerator + denominator) // (2 * denominator)
        return index, 4 * abs(numerator - index * denominator) <= denominator


def timeline_of(stream: av.video.stream.VideoStream, container_duration_us: int | None) -> Timeline | None:
    """The stream's timeline when its timestamps can address frames, else ``None`` (walk instead)."""
    fps, guessed, time_base = stream.average_rate, stream.guessed_rate, stream.time_base
    if not fps or not time_base or fps <= 0:
        return None
    if guessed and abs(float(guessed) - float(fps)) > float(fps) * FRAME_COUNT_TOLERANCE:
        return None  # variable frame rate: time does not tell the frame index
    if stream.duration:
        seconds = float(stream.duration * time_base)
    elif container_duration_us:
        seconds = container_duration_us / 1_000_000
    else:
        return None
    implied = round(seconds * float(fps))
    if implied < 1:
        return None
    if stream.frames and abs(stream.frames - implied) > max(2, implied * FRAME_COUNT_TOLERANCE):
        return None
    return Timeline(stream.frames or implied, Fraction(fps), Fraction(time_base), stream.start_time or 0)


class _Decoder:
    """One open video: its first video stream, decoded with threads, errors named for the user."""

    def __init__(self, path: str, name: str, max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS) -> None:
        self.path, self.name = path, name
        self.size = os.path.getsize(path)
        self.max_frame_pixels = max_frame_pixels
        self.decoded = 0  # frames the decoder gave out, over every pass
        self._open()

    def _open(self) -> None:
        path, name = self.path, self.name
        try:
            self.container = av.open(path, metadata_errors="ignore")
        except av.error.FFmpegError as error:
            raise VideoDecodeError(name, f"not a video FFmpeg can read ({_reason(error)})") from None
        if not self.container.streams.video:
            audio = len(self.container.streams.audio)
            self.container.close()
            what = f"{audio} audio stream(s) and no video" if audio else "no video stream"
            raise VideoDecodeError(name, f"the file holds {what}")
        self.stream = self.container.streams.video[0]
        self._refuse_huge_frames()
        # Frame and slice threads: on the idle 2-CPU reference VM, 0.85x the time of slice threads
        # alone on the MiT clip, 0.66x at 4K (bench/README.md).
        self.stream.thread_type = "AUTO"
        # One converter for every kept frame: it keeps its scaling context (2.6x faster than a new one).
        self.to_rgb = VideoReformatter()
        self.codec = self.stream.codec_context.name if self.stream.codec_context else "unknown"
        self.last_position = 0

    def _refuse_huge_frames(self) -> None:
        """Refuse, before a frame is decoded, a stream whose frames are larger than
        ``max_frame_pixels``: decoding them could exhaust the consumer's memory, on every attempt.
        A size the container does not state is checked on the first decoded frame instead."""
        context = self.stream.codec_context
        width, height = (context.width, context.height) if context else (0, 0)
        try:
            self._check_frame_size(width or 0, height or 0)
        except VideoDecodeError:
            self.container.close()
            raise

    def _check_frame_size(self, width: int, height: int) -> None:
        if width * height > self.max_frame_pixels:
            raise VideoDecodeError(
                self.name,
                f"its frames are {width}x{height} ({width * height:,} pixels), more than the "
                f"{self.max_frame_pixels:,}-pixel limit (MOMENTS_MAX_FRAME_PIXELS)",
            )

    def frames(self, before_decoding: Callable[[av.Packet], None] | None = None) -> Iterator[av.VideoFrame]:
        """Decoded frames from the current position; a decoding error names the byte it happened at.
        ``before_decoding`` sees each packet before the decoder does."""
        try:
            for packet in self.container.demux(self.stream):
                if packet.pos is not None and packet.pos >= 0:
                    self.last_position = packet.pos
                if before_decoding is not None:
                    before_decoding(packet)
                for frame in packet.decode():
                    self.decoded += 1
                    self._check_frame_size(frame.width, frame.height)  # a size change mid-stream
                    yield frame
        except av.error.FFmpegError as error:
            raise VideoDecodeError(
                self.name,
                f"{self.codec} stream cannot be decoded at byte {self.last_position:,} of {self.size:,} "
                f"({_reason(error)}): truncated or corrupt",
            ) from None

    def rgb(self, frame: av.VideoFrame, keep: FrameTransform | None) -> np.ndarray:
        """The frame as RGB, turned upright as its display matrix asks (phones record rotated).
        A transform that can turn its own result (``TURNED_TRANSFORMS``) gets the frame as stored."""
        rgb: np.ndarray = self.to_rgb.reformat(frame, format="rgb24").to_ndarray()
        quarter_turns = (int(frame.rotation or 0) // 90) % 4
        if quarter_turns:
            turned = TURNED_TRANSFORMS.get(keep) if keep is not None else None
            if turned is not None:
                return turned(rgb, quarter_turns)
            rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
        return keep(rgb) if keep is not None else rgb

    def skip_frames(self, skip: bool) -> None:
        """Let the decoder skip frames no other frame refers to, from the next packet on (or not)."""
        self.stream.codec_context.skip_frame = "NONREF" if skip else "DEFAULT"

    def rewind(self) -> None:
        """Back to the first frame (reopened: a stream without sane timestamps may not seek)."""
        self.container.close()
        self._open()

    def seek(self, pts: int) -> None:
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)

    def count_packets(self, limit: int) -> int:
        """How many frames the stream holds, from its packets alone (no decoding), at most ``limit``."""
        count = 0
        for packet in self.container.demux(self.stream):
            if packet.size:
                count += 1
                if count >= limit:
                    break
        self.rewind()
        return count

    def close(self) -> None:
        self.container.close()


def _reason(error: av.error.FFmpegError) -> str:
    return getattr(error, "strerror", None) or str(error)


class _Skipping:
    """Decides, packet by packet, whether the decoder may skip the frame: not when it is sampled.

    Every packet is still read, so the frames skipped are known by their timestamps: a gap between
    two decoded frames is sane when every frame in it was a packet the decoder was let skip.
    """

    def __init__(self, decoder: _Decoder, timeline: Timeline, wanted: Sequence[int]) -> None:
        self.decoder, self.timeline, self.wanted = decoder, timeline, set(wanted)
        self.enabled = decoder.codec in SKIPPING_CODECS
        self.skippable: set[int] = set()  # indices of packets the decoder was let skip
        self.skipping = False

    def __call__(self, packet: av.Packet) -> None:
        skip = False
        if self.enabled and packet.pts is not None:
            index, on_grid = self.timeline.grid_position(packet.pts)
            skip = on_grid and index not in self.wanted
            if skip:
                self.skippable.add(index)
        if skip != self.skipping:
            self.decoder.skip_frames(skip)
            self.skipping = skip

    def explains_gap(self, previous: int, index: int) -> bool:
        """Whether the frames between two decoded ones were all skipped (none is missing)."""
        return all(between in self.skippable for between in range(previous + 1, index))

    def last_after(self, position: int) -> int:
        """The index the stream ends at, given the last frame decoded: skipped frames may follow it."""
        while position + 1 in self.skippable:
            position += 1
        return position


def _by_seeking(decoder: _Decoder, timeline: Timeline, wanted: Sequence[int], keep: FrameTransform | None):
    """The wanted frames, reached by decoding forward or seeking; ``None`` when the stream does not
    end where its timeline says, or a wanted frame does not come out (walk instead)."""
    kept: dict[int, np.ndarray] = {}
    skipping = _Skipping(decoder, timeline, wanted)
    frames = _indexed(decoder.frames(skipping), timeline, skipping)
    position = -1
    for target in sorted(set(wanted)):
        frames = _towards(decoder, timeline, frames, position, target, skipping)
        for position, frame in frames:
            if position < 0 or position > target:
                return None  # timestamps off the grid, or the wanted frame did not come out
            if position == target:
                kept[target] = decoder.rgb(frame, keep)
                break
        else:
            return None
    # The stream must end where its timeline says: a container that under-reports its length
    # (an AVI header, say) would otherwise be sampled over its first part only.
    last = timeline.frame_count - 1
    tail = _towards(decoder, timeline, frames, position, last, skipping)
    for position, _ in tail:
        if position < 0:
            return None
    return kept if skipping.last_after(position) == last else None


def _towards(
    decoder: _Decoder,
    timeline: Timeline,
    frames: Iterator[tuple[int, av.VideoFrame]],
    position: int,
    target: int,
    skipping: _Skipping,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Frames that lead from ``position`` to ``target``: the ones in hand when it is near, else
    those after a seek to the keyframe before it."""
    if target - position <= SEEK_GAP_FRAMES:
        return frames
    decoder.seek(timeline.pts_of(target))
    return _indexed(decoder.frames(skipping), timeline, skipping)


def _indexed(
    frames: Iterator[av.VideoFrame], timeline: Timeline, skipping: _Skipping
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Frames with their index on the timeline (from their timestamp, never by counting: skipped
    frames leave gaps); -1 once the timestamps stop following it (a frame without one, off the
    frame grid, or not the next frame after the previous one but for frames skipped): the
    stream's rate is not constant after all."""
    previous = None
    for frame in frames:
        if frame.pts is None:
            yield -1, frame
            return
        index, on_grid = timeline.grid_position(frame.pts)
        if not on_grid or (previous is not None and (index <= previous or not skipping.explains_gap(previous, index))):
            yield -1, frame
            return
        previous = index
        yield index, frame


def _by_walking(decoder: _Decoder, wanted: Sequence[int], max_frames: int, keep: FrameTransform | None):
    """One decoding pass from the start keeping the wanted frames; returns them and the frames decoded."""
    wanted_set = set(wanted)
    kept: dict[int, np.ndarray] = {}
    index = 0
    for frame in decoder.frames():
        if index >= max_frames:
            break
        if index in wanted_set:
            kept[index] = decoder.rgb(frame, keep)
        index += 1
    return kept, index


def read_frames(
    path: str,
    num_frames: int,
    max_frames: int = DEFAULT_MAX_DECODED_FRAMES,
    keep: FrameTransform | None = None,
    name: str | None = None,
    seek: bool = True,
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
) -> SampledFrames:
    """Decode ``num_frames`` RGB frames at the segment centres of the video at ``path``.

    Raises :class:`VideoDecodeError` naming ``name`` (the storage key; default the path) and the
    cause for anything that is not a decodable video. ``keep`` is applied to each kept frame as it
    is decoded (the classifier shrinks it to the model's input size), so a 4K video holds
    ``num_frames`` small frames. ``max_frames`` bounds a walk (streams without sane timestamps);
    ``seek=False`` forces the walk. A stream whose frames exceed ``max_frame_pixels`` (width x
    height) is refused before decoding.
    """
    name = name or path
    _check_readable(path, name)
    decoder = _Decoder(path, name, max_frame_pixels)
    try:
        timeline = timeline_of(decoder.stream, decoder.container.duration) if seek else None
        if timeline is not None:
            wanted = sample_indices(timeline.frame_count, num_frames)
            kept = _by_seeking(decoder, timeline, wanted, keep)
            if kept is not None:
                return _sampled(decoder, kept, wanted, timeline.frame_count, "seek")
            decoder.rewind()
        counted = decoder.count_packets(max_frames)
        wanted = sample_indices(counted, num_frames) if counted else []
        kept, decoded = _by_walking(decoder, wanted, max_frames, keep)
        if decoded == 0:
            raise VideoDecodeError(
                name, f"no frame of its {decoder.codec} stream decodes ({decoder.size:,} bytes): truncated or corrupt"
            )
        if decoded != counted:  # packets that held no frame: sample again against the frames decoded
            decoder.rewind()
            wanted = sample_indices(decoded, num_frames)
            kept, decoded = _by_walking(decoder, wanted, decoded, keep)
        return _sampled(decoder, kept, wanted, decoded, "walk")
    finally:
        decoder.close()


def _check_readable(path: str, name: str) -> None:
    """Refuse, with the cause and its fix, a path that is not a readable, non-empty file."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(name, "file does not exist") from None
    except OSError as error:  # a folder on the way that cannot be searched, say
        raise _unreadable(name, path, error) from None
    if stat.S_ISDIR(status.st_mode):
        directory = VideoDecodeError(name, "it is a directory, not a file")
        directory.fix = "pass the path of a video file (a directory's videos are passed one by one)"
        raise directory
    if stat.S_ISREG(status.st_mode) and status.st_size == 0:
        raise VideoDecodeError(name, "file is empty (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise _unreadable(name, path, error) from None


def _unreadable(name: str, path: str, error: OSError) -> VideoDecodeError:
    reason = error.strerror or str(error)
    unreadable = VideoDecodeError(name, f"file cannot be read ({reason}), though it may be a good video")
    if isinstance(error, PermissionError):
        unreadable.fix = (
            f"let user {_user()} read {path!r} (and search the folders above it), e.g. chmod a+r, "
            "or run as a user who can"
        )
    else:
        unreadable.fix = f"check that {path!r} can be read by this process ({reason})"
    return unreadable


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _sampled(
    decoder: _Decoder, kept: dict[int, np.ndarray], wanted: list[int], frame_count: int, method: str
) -> SampledFrames:
    missing = [index for index in wanted if index not in kept]
    if missing:
        raise VideoDecodeError(decoder.name, f"frames {missing[:5]} of its {decoder.codec} stream could not be decoded")
    frames = np.stack([kept[index] for index in wanted])
    return SampledFrames(frames, frame_count, tuple(wanted), method, decoder.codec, decoder.decoded)
