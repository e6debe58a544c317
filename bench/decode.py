"""Decoding benchmark, run by hand: the decoders side by side on the same clips, in one run.

For each clip (made here with the ffmpeg imageio-ffmpeg ships, plus the real MiT clip when
../shared/data/juggling.mp4 is there) it takes 16 segment-centre frames and shrinks them to the
model's input size, as a consumer does, with:

- opencv-walk: the previous decoder, OpenCV's wheel walking the stream once (grab() every frame,
  retrieve() the sampled ones), as consumer/frames.py did before PyAV;
- pyav-walk: PyAV decoding every frame (threaded), converting only the sampled ones;
- pyav-noskip: the consumer's decoder with FFmpeg's skip_frame left off (as before issue 24);
- pyav (the consumer's default): PyAV seeking to far samples where timestamps are sane, its
  decoder skipping the frames neither sampled nor referenced.

It prints the median ms per clip of each, the ratio of a 20-minute video's decode to a 3 s
clip's, and the decode share of a video's work at 1080p and 4K against fp32 16-frame inference.

Then, side by side in one run (the decoders interleaved, medians of --repeat): pyav against
pyav-noskip on the clips with B-frames, and a phone video (3 s, stored 1920x1080, displayed
1080x1920: the same H.264 stream with and without a 90-degree display matrix) decoded upright
with the frames turned after shrinking (the consumer now) and before (as before issue 24).

    .venv/bin/python bench/decode.py [--repeat 3] [--skip-long] [--side-by-side-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import imageio_ffmpeg  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import consumer.frames  # noqa: E402
from consumer.engines import InferenceOptions  # noqa: E402
from consumer.frames import read_frames, sample_indices  # noqa: E402
from consumer.model import (  # noqa: E402
    build_model,
    checkpoint_state_dict,
    frame_probabilities,
    make_synthetic_checkpoint,
    prepare_for_inference,
)
from consumer.preprocess import resize_frame, to_model_input  # noqa: E402

FRAMES = 16
MIT_CLIP = REPO.parent / "shared" / "data" / "juggling.mp4"


def make_clip(path: Path, width: int, height: int, seconds: float, codec: list[str]) -> Path:
    import subprocess

    if not path.exists():
        source = f"testsrc2=size={width}x{height}:rate=30:duration={seconds}"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", source, *codec,
                        "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def opencv_walk(path: str) -> np.ndarray:
    """The previous consumer decoder: one sequential OpenCV pass, grab() all, retrieve() the kept."""
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    wanted = set(sample_indices(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), FRAMES))
    kept, index = [], 0
    while capture.grab():
        if index in wanted:
            _, bgr = capture.retrieve()
            kept.append(resize_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        index += 1
    capture.release()
    return np.stack(kept)


def without_skipping(path: str) -> object:
    """The consumer's decoder with skip_frame left off: every frame decoded."""
    codecs = consumer.frames.SKIPPING_CODECS
    consumer.frames.SKIPPING_CODECS = frozenset()
    try:
        return read_frames(path, FRAMES, keep=resize_frame)
    finally:
        consumer.frames.SKIPPING_CODECS = codecs


def turned_after_shrinking(path: str) -> object:
    return read_frames(path, FRAMES, keep=resize_frame)


def turned_before_shrinking(path: str) -> object:
    """As before issue 24: the full frame turned upright, then shrunk (a transform frames.py cannot
    turn itself)."""
    return read_frames(path, FRAMES, keep=lambda frame: resize_frame(frame))


def side_by_side(works: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, float]]:
    """Median wall ms and median CPU ms (this process, all its threads) of each, the works
    interleaved round by round so load drifts reach them alike. CPU time moves less than wall
    time when other work shares the machine."""
    wall: dict[str, list[float]] = {name: [] for name in works}
    cpu: dict[str, list[float]] = {name: [] for name in works}
    for work in works.values():
        work()  # warm: imports, caches, the file in the page cache
    for _ in range(repeat):
        for name, work in works.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            work()
            wall[name].append((time.perf_counter() - started) * 1000)
            cpu[name].append((time.process_time() - started_cpu) * 1000)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in works}


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def inference_ms(repeat: int) -> float:
    """fp32 inference of one video's 16 frames (torch's threads: all CPUs), synthetic weights."""
    model = build_model(checkpoint_state_dict(make_synthetic_checkpoint(339, seed=0)), expected_classes=339)
    options = InferenceOptions(precision="fp32", device="cpu", compile=False)
    model = prepare_for_inference(model, options)
    batch = to_model_input(np.zeros((FRAMES, 224, 224, 3), np.uint8))
    with torch.inference_mode():
        frame_probabilities(model, batch, options)
        return median_ms(lambda: frame_probabilities(model, batch, options), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-long", action="store_true", help="leave out the 20-minute video")
    parser.add_argument("--side-by-side-only", action="store_true",
                        help="only skip_frame and rotation, side by side (not the decoders' table)")
    args = parser.parse_args()
    work = Path(tempfile.gettempdir()) / "moments-bench-decode"
    work.mkdir(exist_ok=True)
    if not args.side_by_side_only:
        decoders_table(args, work)
    issue_24_side_by_side(args, work)


def decoders_table(args: argparse.Namespace, work: Path) -> None:
    x264 = ["-c:v", "libx264", "-preset", "ultrafast"]
    clips = {"3 s 640x360 H.264": make_clip(work / "short360.mp4", 640, 360, 3, x264)}
    if MIT_CLIP.exists():
        clips["3 s MiT clip 480x480 H.264"] = MIT_CLIP
    clips["3 s 1080p H.264"] = make_clip(work / "hd.mp4", 1920, 1080, 3, x264)
    clips["3 s 4K H.264"] = make_clip(work / "uhd.mp4", 3840, 2160, 3, x264)
    clips["3 s 480x480 AV1"] = make_clip(work / "av1.mp4", 480, 480, 3,
                                         ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime"])
    if not args.skip_long:
        # x264's default keyframe interval (250 frames) and a 2 s one, common in phone and web video.
        for gop in (250, 60):
            long_clip = make_clip(work / f"long-g{gop}.mp4", 640, 360, 1200, [*x264, "-g", str(gop)])
            clips[f"20 min 640x360 H.264, keyframe every {gop}"] = long_clip

    decoders: dict[str, Callable[[str], object]] = {
        "opencv-walk": opencv_walk,
        "pyav-walk": lambda path: read_frames(path, FRAMES, keep=resize_frame, seek=False),
        "pyav-noskip": without_skipping,
        "pyav": lambda path: read_frames(path, FRAMES, keep=resize_frame),
    }
    print(f"decode of {FRAMES} frames per video, shrunk to 224x224, median of {args.repeat} runs (ms)")
    print(f"{'clip':<44}" + "".join(f"{name:>14}" for name in decoders) + "   method")
    results: dict[str, dict[str, float]] = {}
    for label, path in clips.items():
        row = {}
        for name, decode in decoders.items():
            try:
                row[name] = median_ms(lambda decode=decode, path=path: decode(str(path)), args.repeat)
            except Exception:  # OpenCV's wheel cannot decode AV1
                row[name] = float("nan")
        results[label] = row
        method = read_frames(str(path), FRAMES).method
        print(f"{label:<44}" + "".join(f"{row[name]:>14.1f}" for name in decoders) + f"   {method}")

    short = results["3 s 640x360 H.264"]
    for label, row in results.items():
        if label.startswith("20 min"):
            print(f"{label} / the 3 s clip of the same size: pyav {row['pyav'] / short['pyav']:.1f}x, "
                  f"opencv-walk {row['opencv-walk'] / short['opencv-walk']:.0f}x")
    infer = inference_ms(args.repeat)
    print(f"fp32 inference of {FRAMES} frames: {infer:.0f} ms")
    for label in ("3 s 1080p H.264", "3 s 4K H.264"):
        for name in ("opencv-walk", "pyav"):
            decode = results[label][name]
            print(f"decode share {label:<18} {name:<12} {decode / (decode + infer):6.1%}")


def issue_24_side_by_side(args: argparse.Namespace, work: Path) -> None:
    print(f"\nside by side, interleaved, median of {args.repeat} rounds: wall ms (CPU ms, all threads)")
    bframes = make_clip(work / "hd-bframes.mp4", 1920, 1080, 3, ["-c:v", "libx264", "-preset", "medium"])
    skip_clips = {"3 s 1080p H.264 (x264 medium, B-frames)": bframes}
    if MIT_CLIP.exists():
        skip_clips = {"3 s MiT clip 480x480 H.264": MIT_CLIP, **skip_clips}
    for label, path in skip_clips.items():
        times = side_by_side({"noskip": lambda path=path: without_skipping(str(path)),
                              "skip": lambda path=path: read_frames(str(path), FRAMES, keep=resize_frame)},
                             args.repeat)
        decoded = read_frames(str(path), FRAMES, keep=resize_frame)
        (noskip, noskip_cpu), (skip, skip_cpu) = times["noskip"], times["skip"]
        print(f"skip_frame NONREF {label:<40} {noskip:7.1f} -> {skip:7.1f}   {skip / noskip:.2f}x"
              f"   (CPU {noskip_cpu:.1f} -> {skip_cpu:.1f}, {skip_cpu / noskip_cpu:.2f}x)"
              f"   {decoded.decoded} of {decoded.frame_count} frames decoded")
    plain = make_clip(work / "phone-plain.mp4", 1920, 1080, 3, ["-c:v", "libx264", "-preset", "medium"])
    rotated = work / "phone-rotated.mp4"
    if not rotated.exists():
        import subprocess

        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90",
                        "-i", str(plain), "-c", "copy", str(rotated)], check=True)
    times = side_by_side({"unrotated": lambda: turned_after_shrinking(str(plain)),
                          "rotated, turned after shrinking": lambda: turned_after_shrinking(str(rotated)),
                          "rotated, turned before shrinking": lambda: turned_before_shrinking(str(rotated))},
                         args.repeat)
    base, base_cpu = times["unrotated"]
    for name, (value, value_cpu) in times.items():
        print(f"phone video 1080x1920 {name:<34} {value:7.1f}   {value / base:.2f}x the unrotated"
              f"   (CPU {value_cpu:.1f}, {value_cpu / base_cpu:.2f}x)")


if __name__ == "__main__":
    main()
