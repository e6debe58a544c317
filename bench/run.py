"""moments-stream benchmark, run by hand. Everything is measured side by side in one run and
reported as ratios, so the machine's speed cancels out:

- model-only ceiling: the same consumer layout (processes x torch threads, precision, compile)
  classifying pre-decoded tensors;
- end-to-end: producer enqueue -> every video counted, through a real Redis, warm Lithops
  localhost consumers and the aggregator, on the same clips;
- seed-style baseline: what the original example does per call (model rebuilt, frames extracted
  to JPEG files by ffmpeg as the release's test_video.py does, PIL transforms, fp32, torch's
  default threads);
- latency from enqueue to counted on an idle pipeline (p50/p95);
- producer enqueue rate for 100k keys in localhost storage (the write in use beside the earlier
  ones, ``--enqueue-only`` for that alone), and Redis memory per video.

    .venv/bin/python bench/run.py                       # fp32, 16 frames, 48 clips
    .venv/bin/python bench/run.py --precision bf16 --compile
    .venv/bin/python bench/run.py --enqueue-only --enqueue-rounds 3   # the producer alone, ~2 min

The weights are synthetic (random, release format): speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unittest.mock
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import imageio_ffmpeg  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from lithops.constants import LITHOPS_TEMP_DIR  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from aggregator.status import redis_now  # noqa: E402
from consumer.classify import load_classifier  # noqa: E402
from consumer.engines import InferenceOptions  # noqa: E402
from consumer.frames import read_frames  # noqa: E402
from consumer.model import (  # noqa: E402
    build_model,
    frame_probabilities,
    load_checkpoint,
    make_synthetic_checkpoint,
    prepare_for_inference,
)
from consumer.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_frame, to_model_input  # noqa: E402
from consumer.scores import top_k, video_probabilities  # noqa: E402
from moments_stream import queues  # noqa: E402
from moments_stream.keys import Keys  # noqa: E402
from moments_stream.resources import available_cpus, default_local_workers, threads_per_worker, total_memory_bytes  # noqa: E402
from moments_stream.settings import Settings  # noqa: E402
from producer import enqueue as producer_enqueue  # noqa: E402
from producer.enqueue import BATCH  # noqa: E402
from producer.service import enqueue_prefix  # noqa: E402
from tests.media import synthetic_frames, write_h264  # noqa: E402
from tests.pipeline import run, wait_until  # noqa: E402
from tests.redis_server import running_redis  # noqa: E402

BIN = Path(sys.executable).parent
# Per-video timings every prediction record carries (consumer side, milliseconds).
STAGES = ("download_ms", "decode_ms", "infer_ms", "total_ms")


def make_clips(directory: Path, count: int, width: int = 340, height: int = 256) -> list[Path]:
    """3 s, 30 fps H.264 clips at the size the issue measured (MiT clips are similar)."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        write_h264(directory / f"clip{seed:03d}.mp4", synthetic_frames(90, height, width, seed))
        for seed in range(count)
    ]


def settings_env(args: argparse.Namespace, weights: Path, categories: Path, threads: int) -> dict[str, str]:
    return {
        "MOMENTS_WEIGHTS": str(weights),
        "MOMENTS_CATEGORIES": str(categories),
        "MOMENTS_NUM_FRAMES": str(args.frames),
        "MOMENTS_PRECISION": args.precision,
        "MOMENTS_COMPILE": "1" if args.compile else "0",
        "MOMENTS_THREADS": str(threads),
    }


# --- model-only ceiling ------------------------------------------------------------------------


def _ceiling_worker(env: dict[str, str], clips: list[str], barrier, results) -> None:  # type: ignore[no-untyped-def]
    classifier = load_classifier(Settings.from_env(env), progress=False)
    batches = [
        to_model_input(read_frames(clip, classifier.num_frames, keep=resize_frame).frames) for clip in clips
    ]  # decoded before the clock starts
    classifier.classify_batch(batches[0])  # warm
    barrier.wait()
    started = time.perf_counter()
    for batch in batches:
        classifier.classify_batch(batch)
    results.put(time.perf_counter() - started)


def model_ceiling(env: dict[str, str], clips: list[Path], workers: int) -> float:
    """Videos/s of ``workers`` processes classifying pre-decoded clips in parallel."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    shares = [[str(clip) for clip in clips[index::workers]] for index in range(workers)]
    processes = [context.Process(target=_ceiling_worker, args=(env, share, barrier, results)) for share in shares]
    for process in processes:
        process.start()
    seconds = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    return len(clips) / max(seconds)


# --- seed-style baseline -----------------------------------------------------------------------


def extract_frames_seed_style(video: Path, num_frames: int, directory: Path) -> list[Image.Image]:
    """Frames the way the release's test_video.py gets them: ask ffmpeg for the duration, have it
    write ``num_frames`` JPEGs at ``num_frames / duration`` fps, read them back with PIL."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    probe = subprocess.run([ffmpeg, "-i", str(video)], capture_output=True, text=True)
    hours, minutes, seconds = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", probe.stderr).groups()
    duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    subprocess.run([ffmpeg, "-i", str(video), "-vf", f"fps={num_frames / duration}", "-vframes", str(num_frames),
                    "-loglevel", "panic", str(directory / "%d.jpg")], check=True)
    paths = sorted(directory.glob("*.jpg"), key=lambda path: int(path.stem))
    frames = [Image.open(path).convert("RGB") for path in paths]
    for path in paths:
        path.unlink()
    return frames


def seed_style(weights: Path, categories: list[str], clips: list[Path], num_frames: int) -> float:
    """Videos/s of the original example's per-call work: load and build the model for every video,
    extract frames with ffmpeg to JPEG files, PIL transforms, fp32, torch's default threads."""
    options = InferenceOptions(precision="fp32", device="cpu", channels_last=False)
    transform = transforms.Compose(
        [transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    frames_dir = Path(tempfile.mkdtemp(prefix="seed-frames-"))
    started = time.perf_counter()
    for clip in clips:
        state, _ = load_checkpoint(weights)
        model = prepare_for_inference(build_model(state, len(categories)), options)
        frames = extract_frames_seed_style(clip, num_frames, frames_dir)
        batch = torch.stack([transform(frame) for frame in frames])
        top_k(video_probabilities(frame_probabilities(model, batch, options).numpy()), categories, 5)
    elapsed = time.perf_counter() - started
    shutil.rmtree(frames_dir, ignore_errors=True)
    return len(clips) / elapsed


# --- end-to-end --------------------------------------------------------------------------------


def run_cli(env: dict[str, str], *command: str) -> str:
    done = run(env, *command)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return done.stdout


def end_to_end(env: dict[str, str], folder: Path, latency_prefixes: list[str], workers: int,
               consumer_env: dict[str, str] | None = None) -> dict:
    """Throughput from enqueue to all counted on warm consumers, then idle-system latency of the
    videos already uploaded under ``latency_prefixes`` (one each). ``consumer_env``: the launcher's
    environment where it differs from the other stages' (bench/containers.py)."""
    client = redis.Redis.from_url(env["MOMENTS_REDIS_URL"])
    run_cli(env, "producer", "upload", str(folder), "bench/")
    aggregator = subprocess.Popen([str(BIN / "aggregator"), "run"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    consumers = subprocess.Popen([str(BIN / "consumer"), "start", "--workers", str(workers)], env=consumer_env or env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def workers_alive() -> int:
            return json.loads(run_cli(env, "aggregator", "status", "--json"))["workers_alive"]

        wait_until(lambda: workers_alive() == workers, 600, "warm consumers", interval=1)
        time.sleep(2)  # every consumer idle in its poll loop
        settings = Settings.from_env(env)
        started = time.perf_counter()
        report = enqueue_prefix(settings, "bench/")
        wait_until(lambda: client.hlen(Keys().pending()) == 0, 1800, "every video counted", interval=0.02)
        throughput = report.enqueued / (time.perf_counter() - started)

        latencies = []
        for prefix in latency_prefixes:
            time.sleep(0.5)  # an idle pipeline: every consumer waiting
            enqueued_at = redis_now(client)
            enqueue_prefix(settings, prefix)
            wait_until(lambda: client.hlen(Keys().pending()) == 0, 300, "the latency video", interval=0.02)
            # The ledger stamps each recorded video in moments:recent with Redis' clock.
            ((_, counted_at),) = client.zrange(Keys().recent(), -1, -1, withscores=True)
            latencies.append(counted_at - enqueued_at)
        return {"throughput": throughput, "latencies": latencies}
    finally:
        run_cli(env, "consumer", "stop")
        consumers.wait(timeout=300)
        aggregator.terminate()
        aggregator.wait(timeout=60)


# --- producer at scale -------------------------------------------------------------------------


def enqueue_with_watch(client: redis.Redis, settings: Settings, videos: dict[str, str], only_new: bool = False,
                       model_id: str | None = None) -> int:
    """The producer's write before issue 24, for comparison: the seen check in a transaction with
    ``WATCH`` on the whole seen hash, so a write of any other batch to it (the producer's own writer
    processes too) aborts the transaction, whose jobs are then built again."""
    keys = settings.keys
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.seen())
                known = pipe.hmget(keys.seen(), list(videos))
                chosen = {video: fingerprint for (video, fingerprint), seen in zip(videos.items(), known, strict=True)
                          if seen is None or seen.decode() != fingerprint}
                if not chosen:
                    pipe.unwatch()
                    return 0
                pipe.multi()
                queues.queue_jobs(pipe, client, settings, chosen, model_id)
                pipe.execute()
                return len(chosen)
            except redis.WatchError:
                continue


def enqueue_unchecked(client: redis.Redis, settings: Settings, videos: dict[str, str], only_new: bool = False,
                      model_id: str | None = None) -> int:
    """The producer's write before the seen check moved into the transaction (the 7.0 s of
    bench/README.md): a read of the seen hash, then a transaction that does not check it again
    (two producers listing the same new videos at once both enqueue them)."""
    known = client.hmget(settings.keys.seen(), list(videos))
    chosen = {video: fingerprint for (video, fingerprint), seen in zip(videos.items(), known, strict=True)
              if seen is None or seen.decode() != fingerprint}
    if chosen:
        with client.pipeline(transaction=True) as pipe:
            queues.queue_jobs(pipe, client, settings, chosen, model_id)
            pipe.execute()
    return len(chosen)


# The producer's writes the enqueue benchmark runs side by side: the one in use, and the earlier ones.
ENQUEUE_WRITES = {
    "script": None,  # moments_stream.queues.enqueue_videos as it stands
    "watch": enqueue_with_watch,
    "unchecked": enqueue_unchecked,
}


@contextlib.contextmanager
def many_keys(count: int) -> Iterator[str]:
    """A bucket of Lithops localhost storage holding ``count`` empty .mp4 keys under ``many/``."""
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    root = Path(LITHOPS_TEMP_DIR, bucket, "many")
    for shard in range(0, count, 1000):
        directory = root / f"{shard // 1000:04d}"
        directory.mkdir(parents=True)
        for index in range(shard, min(shard + 1000, count)):
            (directory / f"{index:07d}.mp4").write_bytes(b"")
    try:
        yield bucket
    finally:
        shutil.rmtree(Path(LITHOPS_TEMP_DIR, bucket), ignore_errors=True)


def cpu_seconds(client: redis.Redis) -> tuple[float, float]:
    """CPU seconds used so far by this process and its reaped children (the producer's writer
    processes), and by the Redis server."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = client.info("cpu")
    return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            float(server["used_cpu_user"]) + float(server["used_cpu_sys"]))


def enqueue_at_scale(redis_url: str, bucket: str, write: str = "script") -> dict[str, float]:
    """Seconds to enqueue every key of ``bucket`` (all new) with the producer's write ``write``
    (:data:`ENQUEUE_WRITES`), CPU seconds of the producer and of Redis, and Redis bytes per key."""
    client = redis.Redis.from_url(redis_url, socket_timeout=600)  # flushing 100k jobs on a busy machine
    client.flushdb()
    client.config_resetstat()
    before = int(client.info("memory")["used_memory"])
    replacement = ENQUEUE_WRITES[write]
    patch = (unittest.mock.patch.object(producer_enqueue, "enqueue_videos", replacement) if replacement
             else contextlib.nullcontext())
    try:
        settings = Settings.from_env({}).replace(redis_url=redis_url, bucket=bucket)
        with patch:  # the producer's writer processes are forked inside, so they write the same way
            cpu_before, server_before = cpu_seconds(client)
            started = time.perf_counter()
            report = enqueue_prefix(settings, "many/")
            seconds = time.perf_counter() - started
            cpu_after, server_after = cpu_seconds(client)
        per_video = (int(client.info("memory")["used_memory"]) - before) / report.enqueued
        stats = client.info("commandstats")
        # EXECs aborted by a WATCH count as calls; a script's first call, refused before it is loaded, as failed
        transactions = {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                        - int(stats.get(f"cmdstat_{name}", {}).get("failed_calls", 0)) for name in ("exec", "evalsha")}
        return {"keys": report.enqueued, "seconds": seconds, "bytes_per_video": per_video,
                "producer_cpu": cpu_after - cpu_before, "redis_cpu": server_after - server_before,
                "writes": transactions["exec"] + transactions["evalsha"]}
    finally:
        client.flushdb()


def enqueue_side_by_side(redis_url: str, count: int, rounds: int) -> dict[str, dict[str, float]]:
    """:func:`enqueue_at_scale` of the same ``count`` keys for every write of :data:`ENQUEUE_WRITES`,
    ``rounds`` rounds alternating between them; the median round of each (by seconds). Each round
    starts with the next write: the first of a round ran up to 1.5x slower on a busy machine."""
    writes = list(ENQUEUE_WRITES)
    results: dict[str, list[dict[str, float]]] = {write: [] for write in writes}
    with many_keys(count) as bucket:
        for round_ in range(rounds):
            for write in writes[round_ % len(writes) :] + writes[: round_ % len(writes)]:
                results[write].append(enqueue_at_scale(redis_url, bucket, write))
    return {write: sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2] for write, runs in results.items()}


def enqueue_lines(scale: dict[str, dict[str, float]]) -> list[str]:
    current = scale["script"]
    rate = current["keys"] / current["seconds"]
    lines = [f"enqueue {current['keys']:,} keys     {current['seconds']:7.2f} s  ({rate:,.0f} keys/s; target <= 7 s)"]
    labels = {"script": "seen check in one script (now)", "watch": "seen check under WATCH (before)",
              "unchecked": "no check in the write (older)"}
    for write, one in scale.items():
        lines.append(f"  {labels[write]:31} {one['seconds']:6.2f} s  x{one['seconds'] / current['seconds']:.2f}, "
                     f"CPU s: producer {one['producer_cpu']:.1f}, Redis {one['redis_cpu']:.1f}; "
                     f"{one['writes']:.0f} writes of {BATCH} keys tried")
    return lines


# --- the run -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--baseline-videos", type=int, default=12)
    parser.add_argument("--latency-videos", type=int, default=20)
    parser.add_argument("--enqueue-keys", type=int, default=100_000)
    parser.add_argument("--enqueue-rounds", type=int, default=1,
                        help="rounds of the enqueue benchmark, alternating between the producer's writes (median)")
    parser.add_argument("--enqueue-only", action="store_true", help="run the enqueue benchmark alone")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, help="consumer processes (default: as moments-stream run picks)")
    args = parser.parse_args()
    if args.enqueue_only:
        with tempfile.TemporaryDirectory(prefix="moments-bench-") as work, running_redis(Path(work) / "redis") as url:
            scale = enqueue_side_by_side(url, args.enqueue_keys, args.enqueue_rounds)
        print(f"moments-stream enqueue bench: {available_cpus()} CPUs, {BATCH} keys per write, "
              f"{args.enqueue_rounds} round(s) alternating (median)")
        memory = f"Redis memory              {scale['script']['bytes_per_video']:7.0f} B per enqueued video"
        print("\n".join([*enqueue_lines(scale), memory]))
        return 0

    cpus = available_cpus()
    workers = args.workers or default_local_workers(cpus, total_memory_bytes())
    threads = threads_per_worker(cpus, workers)
    work = Path(tempfile.mkdtemp(prefix="moments-bench-"))
    try:
        weights = work / "weights.pth.tar"
        torch.save(make_synthetic_checkpoint(339, seed=0), weights)
        categories = work / "categories.txt"
        categories.write_text("\n".join(f"category{index}" for index in range(339)))
        clips = make_clips(work / "clips", args.videos)
        latency_clips = make_clips(work / "latency", args.latency_videos)
        env_model = settings_env(args, weights, categories, threads)

        print(f"clips ready in {work}; measuring...", file=sys.stderr)
        ceiling_before = model_ceiling(env_model, clips, workers)
        baseline = seed_style(weights, categories.read_text().split("\n"), clips[: args.baseline_videos], args.frames)
        with running_redis(work / "redis") as url:
            env = dict(os.environ, **env_model, MOMENTS_REDIS_URL=url, MOMENTS_EMBEDDED_REDIS="0",
                       MOMENTS_BUCKET=f"bench-{uuid.uuid4().hex[:8]}", MOMENTS_DATA_DIR=str(work / "data"))
            latency_prefixes = []
            for index, clip in enumerate(latency_clips):
                single = work / "latency-dirs" / f"{index:03d}"
                single.mkdir(parents=True)
                shutil.copy(clip, single / clip.name)
                latency_prefixes.append(f"latency/{index:03d}/")
                run_cli(env, "producer", "upload", str(single), latency_prefixes[-1])
            e2e = end_to_end(env, work / "clips", latency_prefixes, workers)
            client = redis.Redis.from_url(url)
            model_id = client.zrevrange(Keys().models(), 0, 0)[0].decode()
            predictions = Keys().predictions(model_id)
            counted_bytes = client.memory_usage(predictions) / client.hlen(predictions)
            records = [json.loads(raw) for raw in client.hvals(predictions)]
            stages = {stage: statistics.median(r[stage] for r in records) for stage in STAGES}
            shutil.rmtree(Path(LITHOPS_TEMP_DIR, env["MOMENTS_BUCKET"]), ignore_errors=True)
            scale = enqueue_side_by_side(url, args.enqueue_keys, args.enqueue_rounds)
        # Measured again after the pipeline and averaged: this machine's speed drifts by a few %.
        ceiling_after = model_ceiling(env_model, clips, workers)
        ceiling = (ceiling_before + ceiling_after) / 2
    finally:
        shutil.rmtree(work, ignore_errors=True)

    latencies = sorted(e2e["latencies"])
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    ratio_ceiling = e2e["throughput"] / ceiling
    ratio_baseline = e2e["throughput"] / baseline
    layout = f"{workers} consumer process(es) x {threads} torch thread(s)"
    lines = [
        f"moments-stream bench: {cpus} CPUs, torch {torch.__version__}, {args.precision}"
        f"{' + torch.compile' if args.compile else ''}, channels_last, {args.frames} frames/video,",
        f"  {args.videos} clips of 3 s 340x256 H.264, {layout}, synthetic weights",
        f"model-only ceiling        {ceiling:7.2f} videos/s  (pre-decoded tensors, same layout/settings;"
        f" {ceiling_before:.2f} before, {ceiling_after:.2f} after the pipeline)",
        f"end-to-end pipeline       {e2e['throughput']:7.2f} videos/s  (enqueue -> all counted, warm)",
        f"seed-style baseline       {baseline:7.2f} videos/s  (per video: model rebuilt, ffmpeg JPEGs, fp32)",
        "  per video in the pipeline (median ms): "
        + ", ".join(f"{stage.removesuffix('_ms')} {stages[stage]:.0f}" for stage in STAGES)
        + f"; ceiling {1000 * workers / ceiling:.0f} per video per process",
        f"end-to-end / ceiling      {ratio_ceiling:7.2f}   (target >= 0.9)",
        f"end-to-end / baseline     {ratio_baseline:7.2f}   (target >= 4)",
        f"latency enqueue->counted  p50 {p50:.2f} s, p95 {p95:.2f} s  ({len(latencies)} videos, one at a time)",
        *enqueue_lines(scale),
        f"Redis memory              {scale['script']['bytes_per_video']:7.0f} B per enqueued video, "
        f"{counted_bytes:.0f} B per counted prediction",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
