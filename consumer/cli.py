"""``consumer``: classify videos directly, or run the long-running Lithops workers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from moments_stream.cli_common import add_command, run_cli, settings_from_args
from moments_stream.errors import MomentsError
from moments_stream.logs import get_logger, stream_is_tty, tell
from moments_stream.settings import DEFAULT_WORKERS, MODEL_RELEASES

from . import assets
from .classify import (
    DecodedVideo,
    Prediction,
    bake_model,
    cpu_supports_bf16,
    decode_video,
    load_classifier,
    resolve_device,
    resolve_model_files,
)
from .engines import DEFAULT_CPU_ENGINE, InferenceOptions, resolve_engine

log = get_logger(__name__)

SYNTHETIC_BANNER = "WARNING: synthetic random test weights - these are NOT real action predictions"


def _print_prediction(prediction: Prediction) -> None:
    print(f"RESULT ON {prediction.video}")
    for name, probability in prediction.top5:
        print(f"{probability:.3f} -> {name}")


def cmd_classify(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    failures = 0
    # The model loads (OpenVINO compiles it) while the first video decodes: a cold start pays the
    # longer of the two, not both.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load") as pool:
        loading = pool.submit(load_classifier, settings, stream_is_tty(sys.stderr))
        for index, video in enumerate(args.videos):
            decoded: DecodedVideo | MomentsError
            try:
                decoded = decode_video(video, settings.num_frames, settings.max_decoded_frames,
                                       settings.max_frame_pixels)
            except MomentsError as error:
                decoded = error
            classifier = loading.result()
            if index == 0 and classifier.synthetic_weights and not args.json:
                tell(log, "synthetic_weights", SYNTHETIC_BANNER, level="warning")
            try:
                if isinstance(decoded, MomentsError):
                    raise decoded
                prediction = classifier.classify_decoded(decoded)
            except MomentsError as error:
                failures += 1
                tell(log, "video_failed", f"error: {error.message}", level="error", video=video)
                if args.json:
                    print(json.dumps({"video": video, "error": error.message}))
                continue
            if args.json:
                print(json.dumps(prediction.to_dict()))
            else:
                _print_prediction(prediction)
    return 1 if failures else 0


def cmd_make_test_checkpoint(args: argparse.Namespace) -> int:
    import torch

    from .model import make_synthetic_checkpoint

    classes = args.classes or MODEL_RELEASES[args.model or "v1"].num_classes
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make_synthetic_checkpoint(classes, seed=args.seed), out)
    tell(log, "checkpoint_written", f"wrote synthetic {classes}-class checkpoint to {out} ({SYNTHETIC_BANNER})")
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    """Download (or find) the weights and categories in the cache and record their SHA-256 there;
    convert the model for the CPU engine; with --bake, write the baked model a runtime image carries."""
    if args.without_weights and not args.bake:
        tell(log, "bad_arguments", "--without-weights leaves the weights out of the baked model: pass it with --bake",
             level="error")
        return 2
    settings = settings_from_args(args)
    if args.cache_dir:
        settings = settings.replace(cache_dir=Path(args.cache_dir))
    weights, categories = resolve_model_files(settings, progress=stream_is_tty(sys.stderr))
    digests = {path: assets.sha256_of(path) for path in (weights, categories)}
    cached = [f"{digest}  {path.relative_to(settings.cache_dir)}" for path, digest in digests.items()
              if path.is_relative_to(settings.cache_dir)]
    if cached:  # `sha256sum -c SHA256SUMS` in the cache directory re-checks them (runtime images do)
        (settings.cache_dir / "SHA256SUMS").write_text("\n".join(cached) + "\n")
    for path, digest in digests.items():
        print(f"{digest}  {path}")
    options = InferenceOptions(precision=settings.precision, device=resolve_device(settings.device),
                               compile=settings.compile)
    engine = resolve_engine(settings.engine, options, cpu_supports_bf16())
    if args.bake:
        # The CPU engine always (a consumer without torch runs it), and the engine asked for if it is
        # another compiled one.
        engines = sorted({DEFAULT_CPU_ENGINE} | ({engine} - {"torch"}))
        directory, manifest = bake_model(settings, with_weights=not args.without_weights, engines=engines,
                                         progress=stream_is_tty(sys.stderr))
        tell(log, "model_baked", f"baked {manifest.model_id} for {', '.join(engines)} into {directory}"
             f"{'' if manifest.weights else ' (without the weights)'}")
    elif engine != "torch":  # convert now, so that functions started from this cache load it ready-made
        converted = getattr(load_classifier(settings, progress=False).engine, "converted", None)
        tell(log, "model_converted", f"converted for {engine}: {converted}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from moments_stream.embedded_redis import ensure_redis

    from .launcher import run_consumers

    settings = settings_from_args(args)
    ensure_redis(settings)
    summaries = run_consumers(
        settings, args.workers, idle_exit_s=args.idle_exit, function_timeout_s=args.function_timeout
    )
    for summary in summaries:
        print(json.dumps(summary))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .launcher import request_stop

    told = request_stop(settings_from_args(args))
    print(f"stop requested; {told} running worker(s) told to finish their current video")
    return 0


def cmd_failures(args: argparse.Namespace) -> int:
    from moments_stream.failures import failures
    from moments_stream.redis_conn import connect

    settings = settings_from_args(args)
    records = failures(connect(settings.redis_url), settings)
    for record in records:
        print(json.dumps(record) if args.json else f"{record['video']}\t{record['error']}")
    if not args.json:
        tell(log, "failures_listed", f"{len(records)} failed video(s); `consumer requeue --all` tries them again")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from moments_stream.failures import as_video_id, requeue_failed
    from moments_stream.redis_conn import connect

    if not args.all and not args.videos:
        tell(log, "bad_arguments", "name the videos to requeue, or pass --all", level="error")
        return 2
    settings = settings_from_args(args)
    requeued = requeue_failed(connect(settings.redis_url), settings, None if args.all else args.videos)
    unknown = sorted(name for name in args.videos if as_video_id(requeued, settings.bucket, name) not in requeued)
    print(f"requeued {len(requeued)}")
    if unknown:
        tell(log, "videos_unknown", f"not in the failed set: {', '.join(unknown)}", level="error")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consumer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    classify = add_command(sub, cmd_classify, "classify", help="print the top-5 categories of local video files",
                           model=True)
    classify.add_argument("videos", nargs="+", help="video files")
    classify.add_argument("--json", action="store_true", help="one JSON object per video on stdout")

    checkpoint = add_command(sub, cmd_make_test_checkpoint, "make-test-checkpoint",
                             help="write a random-weight checkpoint in the release format (tests only)")
    checkpoint.add_argument("out", help="output .pth.tar path")
    checkpoint.add_argument("--model", choices=sorted(MODEL_RELEASES))
    checkpoint.add_argument("--classes", type=int, help="class count (default: the release's)")
    checkpoint.add_argument("--seed", type=int, default=0)

    fetch = add_command(sub, cmd_fetch_model, "fetch-model", model=True,
                        help="download the weights and categories into the cache, print their SHA-256, "
                        "and convert the model for the CPU engine (runtime images bake all of it)")
    fetch.add_argument("--cache-dir", help="cache to fill (default MOMENTS_CACHE_DIR); runtime images bake it")
    fetch.add_argument("--bake", action="store_true",
                       help="also write CACHE_DIR/baked/: the manifest, categories, the OpenVINO conversion and the "
                       "weights, which consumers use with no setting and without torch")
    fetch.add_argument("--without-weights", action="store_true",
                       help="with --bake: leave the checkpoint out (an image for CPUs needs only the conversion)")

    start = add_command(sub, cmd_start, "start", help="run N long-running consumer functions on Lithops",
                        model=True, redis=True)
    start.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="functions to keep running")
    start.add_argument("--idle-exit", type=int, metavar="S", help="a function exits after S seconds without work")
    start.add_argument(
        "--function-timeout",
        type=int,
        metavar="S",
        help="time limit per function (default: the backend's runtime_timeout; 3600 on localhost); "
        "consumers exit before it and are relaunched",
    )

    add_command(sub, cmd_stop, "stop", help="tell every running consumer to finish its current video and exit",
                redis=True)

    failed = add_command(sub, cmd_failures, "failures", help="list the videos that failed, with their errors",
                         redis=True)
    failed.add_argument("--json", action="store_true", help="one JSON record per video")

    requeue = add_command(sub, cmd_requeue, "requeue", help="give failed videos another round of attempts",
                          redis=True)
    requeue.add_argument("videos", nargs="*", help="video keys (as `consumer failures` prints them)")
    requeue.add_argument("--all", action="store_true", help="every failed video")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
