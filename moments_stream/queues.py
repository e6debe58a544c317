"""The rq queue of videos: how a video becomes a job (producer, requeue) and where workers pull.

Jobs are serialised as JSON (rq's ``JSONSerializer``), not rq's default pickle: a job is plain
data (a function path and strings), and nothing the project reads back from Redis can run code.
Every rq object that reads jobs (queues, workers, registries, ``Job.fetch``) must be given
:data:`JOB_SERIALIZER`; ``rq info`` needs ``--serializer rq.serializers.JSONSerializer`` to show them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import redis
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from .settings import CLASSIFY_JOB, FAILURE_CALLBACK, RETRY_INTERVALS_S, Settings

# Failed jobs stay in rq's failed registry (``rq info``) this long.
FAILURE_TTL_S = 30 * 24 * 3600
JOB_SERIALIZER = JSONSerializer


def video_queue(client: redis.Redis, settings: Settings) -> Queue:
    return Queue(
        settings.queue_name, connection=client, default_timeout=settings.job_timeout_s, serializer=JOB_SERIALIZER
    )


def enqueue_videos(client: redis.Redis, settings: Settings, videos: dict[str, str], only_new: bool = False) -> int:
    """Mark ``videos`` (key -> fingerprint) seen and pending and enqueue one job each, atomically;
    returns how many were enqueued.

    With ``only_new``, videos whose fingerprint is already the one last enqueued are left out, and
    that check is part of the transaction (WATCH on the seen hash, retried when another producer
    changed it), so producers enqueueing the same prefix at once enqueue each video once.
    """
    if not videos:
        return 0
    keys = settings.keys
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                chosen = videos
                if only_new:
                    pipe.watch(keys.seen())
                    chosen = _not_seen(pipe, keys.seen(), videos)
                    if not chosen:
                        pipe.unwatch()
                        return 0
                pipe.multi()
                _queue_jobs(pipe, client, settings, chosen)
                pipe.execute()
                return len(chosen)
            except redis.WatchError:
                continue


def _not_seen(pipe: redis.client.Pipeline, seen_key: str, videos: dict[str, str]) -> dict[str, str]:
    known = pipe.hmget(seen_key, list(videos))
    return {
        video: fingerprint
        for (video, fingerprint), seen in zip(videos.items(), known, strict=True)
        if seen is None or seen.decode() != fingerprint
    }


def _queue_jobs(pipe: redis.client.Pipeline, client: redis.Redis, settings: Settings, videos: dict[str, str]) -> None:
    """Queue on ``pipe`` (in MULTI) the seen/pending marks and one rq job per video."""
    keys = settings.keys
    queue = video_queue(client, settings)
    retry = Retry(max=settings.job_retries, interval=list(RETRY_INTERVALS_S)) if settings.job_retries else None
    jobs = [
        Queue.prepare_data(
            CLASSIFY_JOB,
            args=(key, fingerprint),
            description=f"classify {key}",
            result_ttl=0,
            failure_ttl=FAILURE_TTL_S,
            retry=retry,
            on_failure=Callback(FAILURE_CALLBACK),
        )
        for key, fingerprint in videos.items()
    ]
    pipe.hset(keys.seen(), mapping=videos)
    pipe.hset(keys.pending(), mapping=videos)
    queue.enqueue_many(jobs, pipeline=pipe)


def failures(client: redis.Redis, settings: Settings) -> list[dict]:
    """Every failed video's record (video, fingerprint, error, worker), sorted by key."""
    records = (json.loads(raw) for raw in client.hvals(settings.keys.failed()))
    return sorted(records, key=lambda record: record["video"])


def requeue_failed(client: redis.Redis, settings: Settings, videos: Iterable[str] | None = None) -> list[str]:
    """Give failed videos (all, or those named) another round of attempts; returns those requeued.

    Their rq jobs leave rq's failed registry, so ``rq info`` and ``consumer failures`` agree.
    """
    keys = settings.keys
    records = {record["video"]: record for record in failures(client, settings)}
    chosen = list(records) if videos is None else [video for video in videos if video in records]
    if not chosen:
        return []
    latest = client.hmget(keys.seen(), chosen)
    fingerprints = {
        video: (seen.decode() if seen is not None else records[video]["fingerprint"])
        for video, seen in zip(chosen, latest, strict=True)
    }
    registry = video_queue(client, settings).failed_job_registry
    for job in registry.job_class.fetch_many(registry.get_job_ids(), connection=client, serializer=JOB_SERIALIZER):
        if job is not None and job.args and job.args[0] in fingerprints:
            registry.remove(job, delete_job=True)
    client.hdel(keys.failed(), *chosen)
    enqueue_videos(client, settings, fingerprints)
    return chosen
