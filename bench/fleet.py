"""Bookkeeping at fleet scale, run by hand: what one Redis and one aggregator spend per video when
classification is instant (a GPU fleet), measured with the real producer, rq job, ledger, outbox
and results-queue code. Only the model and the object store are replaced (an instant classifier,
an in-memory store); everything that talks to Redis is the project's own.

    .venv/bin/python bench/fleet.py                                  # 20,000 videos, 4 consumers
    .venv/bin/python bench/fleet.py --videos 50000 --consumers 8 --aggregators 2 --producers 2

Phases, each against one fresh redis-server (the embedded one, AOF on as `moments-stream run`
starts it):

1. produce: M producer processes enqueue their share of the keys (``producer enqueue``'s path:
   the seen-hash check and the rq jobs in one transaction, in batches);
2. classify: N consumer processes (each one real rq ``ConsumerWorker``) and K aggregators run
   until every video is recorded. Steady state is the window between 20 % and 80 % recorded;
   it prints videos/s, Redis commands per video (INFO commandstats, calls made by Lua scripts
   included) and Redis CPU per video (the server's own user+sys CPU, INFO cpu);
3. drain: outcomes already published (outbox + results queue) for D more videos, then K
   aggregators alone: videos/s recorded.

Redis and the benchmark share this machine's cores, so videos/s is a floor; the per-video
commands and Redis CPU are what decides how far one Redis core goes.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from aggregator.drain import drain  # noqa: E402
from consumer.context import WorkerContext, bind_context  # noqa: E402
from consumer.worker import ConsumerWorker, work_until_done  # noqa: E402
from moments_stream import outcome  # noqa: E402
from moments_stream.embedded_redis import start_redis_server  # noqa: E402
from moments_stream.logs import configure_logging  # noqa: E402
from moments_stream.queues import enqueue_videos, video_queue  # noqa: E402
from moments_stream.redis_conn import connect  # noqa: E402
from moments_stream.results import open_results_queue  # noqa: E402
from moments_stream.settings import Settings  # noqa: E402
from tests.instant import MODEL_ID, InMemoryStorage, InstantClassifier  # noqa: E402

BUCKET = "fleet"
# The producer enqueues in batches of this many keys (producer.enqueue's batch size).
ENQUEUE_BATCH = 1000
IDLE_EXIT_S = 3


def settings_for(redis_url: str, job_batch: int = 1) -> Settings:
    return Settings.from_env({"MOMENTS_REDIS_URL": redis_url, "MOMENTS_BUCKET": BUCKET,
                              "MOMENTS_JOB_BATCH": str(job_batch)})


def video_ids(first: int, count: int) -> dict[str, str]:
    return {f"{BUCKET}/videos/{index:08d}.mp4": f"etag-{index}" for index in range(first, first + count)}


def logs_as_in_production() -> None:
    """The stages' own logging (JSON events; the aggregator logs one per video), its output dropped."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of this bench process
    configure_logging(json_logs=True)


def produce(redis_url: str, first: int, count: int, job_batch: int) -> None:
    logs_as_in_production()
    settings = settings_for(redis_url, job_batch)
    client = connect(redis_url)
    videos = video_ids(first, count)
    names = list(videos)
    for start in range(0, count, ENQUEUE_BATCH):
        batch = {name: videos[name] for name in names[start : start + ENQUEUE_BATCH]}
        enqueue_videos(client, settings, batch, only_new=True)


def consume(redis_url: str, index: int) -> None:
    logs_as_in_production()
    settings = settings_for(redis_url)
    client = connect(redis_url)
    name = f"fleet-{socket.gethostname()}-{os.getpid()}-{index}"
    context = WorkerContext(InstantClassifier(), client, InMemoryStorage(), open_results_queue(client, settings),
                            settings, name)
    bind_context(context)
    forever = time.monotonic() + 24 * 3600
    worker = ConsumerWorker([video_queue(client, settings)], connection=client, name=name, deadline=forever,
                            hard_deadline=forever, lease_s=settings.consumer_lease_s,
                            stop_key=settings.keys.stop_consumers())
    context.workers[name] = worker  # as run_consumer does: a batch asks it whether to stop between videos
    work_until_done(worker, IDLE_EXIT_S)


def idle_consumers(redis_url: str, first: int, count: int) -> None:
    """``count`` consumers in one process, one rq worker thread each, polling an empty queue with
    their heartbeats until ``consumer stop``'s flag is set: what a large fleet costs Redis idle."""
    logs_as_in_production()
    settings = settings_for(redis_url)
    client = connect(redis_url)
    bind_context(WorkerContext(InstantClassifier(), client, InMemoryStorage(),
                               open_results_queue(client, settings), settings, f"idle-{os.getpid()}"))
    forever = time.monotonic() + 24 * 3600
    workers = []
    for index in range(first, first + count):
        own = connect(redis_url)  # each consumer of a fleet is its own process with its own connections
        workers.append(ConsumerWorker([video_queue(own, settings)], connection=own, name=f"idle-{os.getpid()}-{index}",
                                      deadline=forever, hard_deadline=forever, lease_s=settings.consumer_lease_s,
                                      stop_key=settings.keys.stop_consumers()))
    threads = [threading.Thread(target=work_until_done, args=(worker, None)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def aggregate(redis_url: str) -> None:
    logs_as_in_production()
    settings = settings_for(redis_url)
    client = connect(redis_url)
    drain(client, settings.keys, open_results_queue(client, settings), idle_exit_s=IDLE_EXIT_S)


def publish_outcomes(redis_url: str, first: int, count: int) -> None:
    """Outcomes as consumers leave them: in the outbox and on the results queue."""
    logs_as_in_production()
    settings = settings_for(redis_url)
    client = connect(redis_url)
    queue = open_results_queue(client, settings)
    classifier = InstantClassifier()
    for video, fingerprint in video_ids(first, count).items():
        prediction = classifier.classify_file(video, name=video)
        message = outcome.counted(video, fingerprint, MODEL_ID, prediction.top5, worker="fleet-publisher",
                                  synthetic_weights=True)
        queue.publish([message])


@dataclass(frozen=True)
class Window:
    """Counters read at one moment (``sample``: the clock, videos recorded so far), or what they
    grew by between two of those (``between``)."""

    seconds: float
    videos: int
    calls: dict[str, int]
    cpu_s: float

    @property
    def commands_per_video(self) -> float:
        return sum(self.calls.values()) / self.videos

    @property
    def cpu_us_per_video(self) -> float:
        return self.cpu_s * 1e6 / self.videos

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.seconds


def sample(client: redis.Redis, recorded: int) -> Window:
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    calls = {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}
    return Window(time.monotonic(), recorded, calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


def between(before: Window, after: Window) -> Window:
    calls = {name: count - before.calls.get(name, 0) for name, count in after.calls.items()}
    # the sampling itself (INFO) is the bench's, not the pipeline's
    calls.pop("info", None)
    return Window(after.seconds - before.seconds, after.videos - before.videos,
                  {name: count for name, count in calls.items() if count}, after.cpu_s - before.cpu_s)


def recorded_count(client: redis.Redis, settings: Settings) -> int:
    return int(client.hlen(settings.keys.predictions(MODEL_ID)))


def start_processes(target: Callable[..., None], argument_lists: list[tuple]) -> list[multiprocessing.Process]:
    processes = [multiprocessing.Process(target=target, args=arguments) for arguments in argument_lists]
    for process in processes:
        process.start()
    return processes


def join(processes: list[multiprocessing.Process]) -> None:
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a bench process failed (exit {process.exitcode})")


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) slices of ``range(total)``, ``parts`` of them."""
    size, extra = divmod(total, parts)
    slices, first = [], 0
    for part in range(parts):
        count = size + (part < extra)
        slices.append((first, count))
        first += count
    return slices


def wait_for_recorded(client: redis.Redis, settings: Settings, target: int, poll_s: float = 0.05) -> Window:
    while True:
        recorded = recorded_count(client, settings)
        if recorded >= target:
            return sample(client, recorded)
        time.sleep(poll_s)


def print_window(title: str, window: Window, top: int = 12) -> None:
    print(f"\n{title}: {window.videos} videos in {window.seconds:.2f} s = {window.videos_per_s:,.0f} videos/s")
    print(f"  Redis commands per video: {window.commands_per_video:.1f}")
    print(f"  Redis CPU per video: {window.cpu_us_per_video:.0f} us "
          f"(one Redis core: {1e6 / max(window.cpu_us_per_video, 1e-9):,.0f} videos/s of bookkeeping)")
    ranked = sorted(window.calls.items(), key=lambda item: -item[1])[:top]
    print("  per video: " + ", ".join(f"{name} {count / window.videos:.2f}" for name, count in ranked))


def idle_fleet(client: redis.Redis, redis_url: str, settings: Settings, workers: int, seconds: float) -> None:
    """Phase 4: ``workers`` idle consumers (threads in a few processes) against the same Redis."""
    processes = max(1, min(8, workers // 125))
    fleet = start_processes(idle_consumers, [(redis_url, first, count) for first, count in split(workers, processes)])
    registered_key = f"rq:workers:{settings.queue_name}"
    while client.scard(registered_key) < workers:
        time.sleep(0.5)
    time.sleep(5)  # past the start-up (registrations, first polls)
    before = sample(client, 0)
    time.sleep(seconds)
    after = sample(client, 0)
    client.set(settings.keys.stop_consumers(), "1")
    join(fleet)
    client.delete(settings.keys.stop_consumers())
    window = between(before, after)
    per_s = sum(window.calls.values()) / window.seconds
    busy = window.cpu_s / window.seconds
    print(f"\n{workers} idle consumers, {window.seconds:.0f} s: {per_s:,.0f} Redis commands/s "
          f"({per_s / workers:.2f} per consumer), Redis CPU {busy:.1%} of one core "
          f"({window.cpu_s * 1e6 / window.seconds / workers:.0f} us per consumer-second)")
    ranked = sorted(window.calls.items(), key=lambda item: -item[1])[:10]
    rates = (f"{name} {count / window.seconds / workers:.3f}" for name, count in ranked)
    print("  per consumer-second: " + ", ".join(rates))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def classify_round(client: redis.Redis, redis_url: str, args: argparse.Namespace, first: int, job_batch: int) -> None:
    """Phases 1 and 2 for ``args.videos`` new videos, ``job_batch`` of them per rq job."""
    settings = settings_for(redis_url, job_batch)
    base = recorded_count(client, settings)
    print(f"\n=== {job_batch} video(s) per job")
    client.config_resetstat()
    before = sample(client, base)
    memory_before = int(client.info("memory")["used_memory"])
    slices = split(args.videos, args.producers)
    join(start_processes(produce, [(redis_url, first + offset, count, job_batch) for offset, count in slices]))
    after = sample(client, base + args.videos)
    print_window("produce", between(before, after))
    memory_per_video = (int(client.info("memory")["used_memory"]) - memory_before) / args.videos
    print(f"  Redis memory per enqueued video (rq job, seen, pending): {memory_per_video:,.0f} B")

    client.config_resetstat()
    aggregators = start_processes(aggregate, [(redis_url,)] * args.aggregators)
    consumers = start_processes(consume, [(redis_url, index) for index in range(args.consumers)])
    started = sample(client, base)
    low = wait_for_recorded(client, settings, base + int(args.videos * 0.2))
    high = wait_for_recorded(client, settings, base + int(args.videos * 0.8))
    done = wait_for_recorded(client, settings, base + args.videos)
    join(consumers + aggregators)
    print_window("classify, steady state (20 % to 80 % recorded)", between(low, high))
    print_window("classify, whole round (start-up and idle exit included)", between(started, done))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=20_000)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--aggregators", type=int, default=1)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--drain-videos", type=int, default=30_000)
    parser.add_argument("--job-batches", type=lambda text: [int(size) for size in text.split(",")], default=[1, 64],
                        help="videos per rq job (MOMENTS_JOB_BATCH), one round each: 1,64")
    parser.add_argument("--idle-workers", type=int, default=1000, help="consumers polling an empty queue (0: skip)")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="moments-fleet-"))
    port = free_port()
    start_redis_server(port, data_dir)
    redis_url = f"redis://127.0.0.1:{port}/0"
    client = connect(redis_url)
    settings = settings_for(redis_url)
    print(f"redis-server {client.info('server')['redis_version']} (AOF on), {os.cpu_count()} CPUs; "
          f"{args.videos} videos, {args.producers} producers, {args.consumers} consumers, "
          f"{args.aggregators} aggregators, videos per job {args.job_batches}")
    try:
        first = 0
        for job_batch in args.job_batches:
            classify_round(client, redis_url, args, first, job_batch)
            first += args.videos

        enqueue_videos(client, settings, video_ids(first, args.drain_videos))
        # pending as after a producer, with no jobs left behind: the consumers' part is replayed by
        # publish_outcomes, and the idle fleet must find an empty queue
        video_queue(client, settings).empty()
        join(start_processes(publish_outcomes, [(redis_url, first + offset, count)
                                                for offset, count in split(args.drain_videos, args.producers)]))
        target = recorded_count(client, settings) + args.drain_videos
        before = sample(client, recorded_count(client, settings))
        aggregators = start_processes(aggregate, [(redis_url,)] * args.aggregators)
        after = wait_for_recorded(client, settings, target)
        join(aggregators)
        print_window(f"drain by {args.aggregators} aggregator(s), outcomes already published", between(before, after))
        if args.idle_workers:
            idle_fleet(client, redis_url, settings, args.idle_workers, args.idle_seconds)
    finally:
        with contextlib.suppress(redis.RedisError):  # a plain client: ours retries a vanished server
            redis.Redis.from_url(redis_url).shutdown(nosave=True)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
