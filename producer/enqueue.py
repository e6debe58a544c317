"""Enqueueing: push onto the rq queue only the videos (key + fingerprint) not enqueued before."""

from __future__ import annotations

import collections
import multiprocessing
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import redis

from moments_stream.queues import enqueue_videos
from moments_stream.redis_conn import connect
from moments_stream.settings import Settings
from moments_stream.videos import video_id

from .listing import StoredObject, is_video_key

BATCH = 1000


@dataclass
class EnqueueReport:
    enqueued: int = 0
    skipped: int = 0
    ignored: int = 0  # not a video extension

    def __str__(self) -> str:
        return f"enqueued {self.enqueued}, skipped {self.skipped}"

    def add(self, other: EnqueueReport) -> None:
        self.enqueued += other.enqueued
        self.skipped += other.skipped
        self.ignored += other.ignored


def enqueue_objects(
    client: redis.Redis,
    settings: Settings,
    objects: Iterable[StoredObject],
    reclassify: bool = False,
    processes: int = 1,
    model_id: str | None = None,
) -> EnqueueReport:
    """Enqueue the videos among ``objects`` (in ``settings.bucket``) not enqueued before (every one
    with ``reclassify``), their jobs for ``model_id`` when given (else for any model).

    rq builds each job in Python (about 0.1 ms a video: 10 s per 100k keys on one core), so large
    listings spread their batches over ``processes`` worker processes; each batch stays atomic.
    """
    report = EnqueueReport()
    videos = 0
    with BatchWriter(settings, processes, only_new=not reclassify, model_id=model_id) as writer:
        batch: list[StoredObject] = []
        for item in objects:
            if is_video_key(item.key):
                batch.append(item)
                videos += 1
            else:
                report.ignored += 1
            if len(batch) == BATCH:
                _enqueue_batch(client, writer, batch)
                batch = []
        _enqueue_batch(client, writer, batch)
    report.enqueued = writer.enqueued
    report.skipped = videos - writer.enqueued
    return report


def _enqueue_batch(client: redis.Redis, writer: BatchWriter, batch: list[StoredObject]) -> None:
    """Hand a batch to the writer; what was enqueued before is left out inside its transaction."""
    if batch:
        writer.write(client, {video_id(writer.settings.bucket, item.key): item.fingerprint for item in batch})


_worker_client: redis.Redis | None = None


def _connect_worker(redis_url: str) -> None:
    global _worker_client
    _worker_client = connect(redis_url)


def _write_in_worker(settings: Settings, videos: dict[str, str], only_new: bool, model_id: str | None) -> int:
    assert _worker_client is not None
    return enqueue_videos(_worker_client, settings, videos, only_new=only_new, model_id=model_id)


class BatchWriter:
    """Writes batches in this process, or from the second batch on in a pool of forked processes;
    ``enqueued`` counts the videos written once every batch is done."""

    def __init__(self, settings: Settings, processes: int, only_new: bool, model_id: str | None = None) -> None:
        self.settings = settings
        self.only_new = only_new
        self.model_id = model_id
        self.enqueued = 0
        # Forking a process that runs other threads can deadlock it: stay in this process then.
        self.processes = processes if threading.active_count() == 1 else 1
        self.pool: ProcessPoolExecutor | None = None
        self.in_flight: collections.deque[Future] = collections.deque()
        self.batches = 0

    def write(self, client: redis.Redis, videos: dict[str, str]) -> None:
        self.batches += 1
        if not videos:
            return
        if self.processes <= 1 or self.batches == 1:
            self.enqueued += enqueue_videos(client, self.settings, videos, self.only_new, self.model_id)
            return
        if self.pool is None:
            fork = multiprocessing.get_context("fork")
            self.pool = ProcessPoolExecutor(
                self.processes, mp_context=fork, initializer=_connect_worker, initargs=(self.settings.redis_url,)
            )
        self.in_flight.append(self.pool.submit(_write_in_worker, self.settings, videos, self.only_new, self.model_id))
        while len(self.in_flight) > 2 * self.processes:
            self.enqueued += self.in_flight.popleft().result()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self.in_flight:
                self.enqueued += self.in_flight.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
