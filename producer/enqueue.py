"""Enqueueing: push onto the rq queue only the videos (key + fingerprint) not enqueued before."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import redis
from rq import Callback, Queue, Retry

from moments_stream import keys
from moments_stream.queues import video_queue
from moments_stream.settings import CLASSIFY_JOB, FAILURE_CALLBACK, RETRY_INTERVALS_S, Settings

from .listing import StoredObject, is_video_key

BATCH = 1000


@dataclass
class EnqueueReport:
    enqueued: int = 0
    skipped: int = 0
    ignored: int = 0  # not a video extension

    def __str__(self) -> str:
        return f"enqueued {self.enqueued}, skipped {self.skipped}"


def _batches(objects: Iterable[StoredObject], size: int) -> Iterator[list[StoredObject]]:
    iterator = iter(objects)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def new_objects(client: redis.Redis, batch: list[StoredObject]) -> list[StoredObject]:
    """Those of ``batch`` whose fingerprint differs from the one enqueued last time."""
    known = client.hmget(keys.seen(), [item.key for item in batch])
    return [item for item, seen in zip(batch, known, strict=True) if seen is None or seen.decode() != item.fingerprint]


def enqueue_objects(client: redis.Redis, settings: Settings, objects: Iterable[StoredObject]) -> EnqueueReport:
    queue = video_queue(client, settings)
    report = EnqueueReport()
    videos = (item for item in objects if is_video_key(item.key) or _count_ignored(report))
    retry = Retry(max=settings.job_retries, interval=list(RETRY_INTERVALS_S)) if settings.job_retries else None
    for batch in _batches(videos, BATCH):
        fresh = new_objects(client, batch)
        report.skipped += len(batch) - len(fresh)
        if not fresh:
            continue
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.seen(), mapping={item.key: item.fingerprint for item in fresh})
            pipe.hset(keys.pending(), mapping={item.key: item.fingerprint for item in fresh})
            jobs = [
                Queue.prepare_data(
                    CLASSIFY_JOB,
                    args=(item.key, item.fingerprint),
                    description=f"classify {item.key}",
                    result_ttl=0,
                    failure_ttl=30 * 24 * 3600,
                    retry=retry,
                    on_failure=Callback(FAILURE_CALLBACK),
                )
                for item in fresh
            ]
            queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()
        report.enqueued += len(fresh)
    return report


def _count_ignored(report: EnqueueReport) -> bool:
    report.ignored += 1
    return False
