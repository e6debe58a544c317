"""Enqueueing: push onto the rq queue only the videos (key + fingerprint) not enqueued before."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from moments_stream import keys
from moments_stream.queues import enqueue_videos
from moments_stream.settings import Settings

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


def new_objects(client: redis.Redis, batch: list[StoredObject]) -> list[StoredObject]:
    """Those of ``batch`` whose fingerprint differs from the one enqueued last time."""
    known = client.hmget(keys.seen(), [item.key for item in batch])
    return [item for item, seen in zip(batch, known, strict=True) if seen is None or seen.decode() != item.fingerprint]


def enqueue_objects(
    client: redis.Redis, settings: Settings, objects: Iterable[StoredObject], reclassify: bool = False
) -> EnqueueReport:
    """Enqueue the videos among ``objects`` not enqueued before (every one with ``reclassify``)."""
    report = EnqueueReport()
    videos = []
    for item in objects:
        if is_video_key(item.key):
            videos.append(item)
        else:
            report.ignored += 1
        if len(videos) == BATCH:
            _enqueue_batch(client, settings, videos, report, reclassify)
            videos = []
    _enqueue_batch(client, settings, videos, report, reclassify)
    return report


def _enqueue_batch(
    client: redis.Redis, settings: Settings, batch: list[StoredObject], report: EnqueueReport, reclassify: bool
) -> None:
    if not batch:
        return
    fresh = batch if reclassify else new_objects(client, batch)
    report.skipped += len(batch) - len(fresh)
    enqueue_videos(client, settings, {item.key: item.fingerprint for item in fresh})
    report.enqueued += len(fresh)
