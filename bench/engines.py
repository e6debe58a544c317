"""CPU inference engines side by side, run by hand: videos/s and fp32 GFLOP/s, as ratios to a plain
torch eager fp32 loop measured in the same run.

For each engine (torch as the consumer runs it: channels_last; OpenVINO; ONNX Runtime):
- model-only ceiling: pre-decoded, preprocessed 16-frame batches through the engine;
- end-to-end: ``Classifier.classify_file`` on MiT-like clips (decode, preprocess, inference, top-5),
  what a consumer does per video between download and publish.
The reference is the plain loop: PyAV decode, the same preprocessing, ``torch.softmax(model(x))``
on a contiguous fp32 model. Rounds alternate between the contenders so that a busy machine slows
all of them alike; each figure is the median round.

    .venv/bin/python bench/engines.py [--clips 8] [--rounds 3] [--threads N]

The weights are synthetic (random, release format): speed does not depend on their values.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from consumer.classify import Classifier, load_classifier  # noqa: E402
from consumer.frames import read_frames  # noqa: E402
from consumer.model import build_model, load_checkpoint, make_synthetic_checkpoint  # noqa: E402
from consumer.preprocess import resize_frame, to_model_input  # noqa: E402
from moments_stream.resources import available_cpus  # noqa: E402
from moments_stream.settings import Settings  # noqa: E402
from tests.media import synthetic_frames, write_h264  # noqa: E402

FRAMES = 16
# ResNet50 at 224x224: 4.09 G multiply-accumulates per frame, 2 FLOP each.
GFLOP_PER_FRAME = 2 * 4.09
ENGINES = ("torch", "openvino", "onnxruntime")
# (model-only: preprocessed batches -> None, end-to-end: clips -> None)
Loops = tuple[Callable[[list[np.ndarray]], None], Callable[[list[Path]], None]]


def make_clips(directory: Path, count: int) -> list[Path]:
    """MiT-like clips: the real MiT clip when ../shared has it, and 3 s, 30 fps H.264 clips."""
    clips = []
    juggling = REPO.parent / "shared" / "data" / "juggling.mp4"
    if juggling.is_file():
        clips.append(juggling)
    for seed in range(count - len(clips)):
        clips.append(write_h264(directory / f"clip{seed}.mp4", synthetic_frames(90, 256, 340, seed=seed)))
    return clips


def videos_per_s(work: Callable[[], object], videos: int) -> float:
    started = time.perf_counter()
    work()
    return videos / (time.perf_counter() - started)


def plain_loop(weights: Path, threads: int) -> Loops:
    """The reference: torch eager fp32 on a contiguous model, no engine, no channels_last."""
    state_dict, _ = load_checkpoint(weights)
    model = build_model(state_dict, expected_classes=339)
    torch.set_num_threads(threads)

    def infer(batches: list[np.ndarray]) -> None:
        with torch.inference_mode():
            for batch in batches:
                torch.softmax(model(torch.from_numpy(batch)), dim=1).mean(dim=0)

    def end_to_end(clips: list[Path]) -> None:
        for clip in clips:
            infer([to_model_input(read_frames(str(clip), FRAMES, keep=resize_frame).frames)])

    return infer, end_to_end


def engine_loop(classifier: Classifier) -> Loops:
    def infer(batches: list[np.ndarray]) -> None:
        for batch in batches:
            classifier.engine.frame_probabilities(batch).mean(axis=0)

    def end_to_end(clips: list[Path]) -> None:
        for clip in clips:
            classifier.classify_file(str(clip))

    return infer, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=available_cpus())
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moments-bench-engines-"))
    weights = work / "moments_RGB_resnet50_imagenetpretrained.pth.tar"
    torch.save(make_synthetic_checkpoint(339, seed=0), weights)
    settings = Settings.from_env({}).replace(weights=str(weights), cache_dir=work / "cache", threads=args.threads,
                                             num_frames=FRAMES)
    clips = make_clips(work, args.clips)
    batches = [to_model_input(read_frames(str(clip), FRAMES, keep=resize_frame).frames) for clip in clips]

    contenders = {"plain torch eager fp32 (reference)": plain_loop(weights, args.threads)}
    load_s = {}
    for engine in ENGINES:
        started = time.perf_counter()
        classifier = load_classifier(settings.replace(engine=engine), progress=False)  # converts (cached) once
        load_s[engine] = time.perf_counter() - started
        label = f"{engine}{' (channels_last)' if engine == 'torch' else ''}"
        contenders[label] = engine_loop(classifier)
    for infer, end_to_end in contenders.values():  # warm-up: allocators, one-time kernel selection
        infer(batches[:1])
        end_to_end(clips[:1])

    model_only: dict[str, list[float]] = {name: [] for name in contenders}
    pipeline: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (infer, end_to_end) in contenders.items():
            model_only[name].append(videos_per_s(lambda infer=infer: infer(batches), len(batches)))
            pipeline[name].append(videos_per_s(lambda end_to_end=end_to_end: end_to_end(clips), len(clips)))

    reference = "plain torch eager fp32 (reference)"
    base_model, base_e2e = statistics.median(model_only[reference]), statistics.median(pipeline[reference])
    print(f"{len(clips)} clips x {FRAMES} frames, {args.threads} threads, median of {args.rounds} alternating rounds")
    print(f"{'engine':<36} {'model-only v/s':>14} {'GFLOP/s':>8} {'ratio':>6} {'end-to-end v/s':>15} {'ratio':>6}")
    for name in contenders:
        ceiling, e2e = statistics.median(model_only[name]), statistics.median(pipeline[name])
        print(f"{name:<36} {ceiling:>14.2f} {ceiling * FRAMES * GFLOP_PER_FRAME:>8.0f} {ceiling / base_model:>6.2f} "
              f"{e2e:>15.2f} {e2e / base_e2e:>6.2f}")
    print("first load (conversion included, then cached): "
          + ", ".join(f"{engine} {seconds:.1f} s" for engine, seconds in load_s.items()))
    started = time.perf_counter()
    load_classifier(settings, progress=False)
    print(f"default engine, load from the cached conversion: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
