"""The rq queue of videos: how a video becomes a job (producer, requeue) and where workers pull.

Jobs are serialised as JSON (rq's ``JSONSerializer``), not rq's default pickle: a job is plain
data (a function path and strings), and nothing the project reads back from Redis can run code.
Every rq object that reads jobs (queues, workers, registries, ``Job.fetch``) must be given
:data:`JOB_SERIALIZER`; ``rq info`` needs ``--serializer rq.serializers.JSONSerializer`` to show them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from rq import Callback, Queue, Retry, worker_registration
from rq.serializers import JSONSerializer

from .redis_conn import text
from .settings import CLASSIFY_JOB, FAILURE_CALLBACK, RETRY_INTERVALS_S, WORKER_MODEL_FIELD, Settings
from .videos import pending_entry, video_id

# Failed jobs stay in rq's failed registry (``rq info``) this long.
FAILURE_TTL_S = 30 * 24 * 3600
JOB_SERIALIZER = JSONSerializer


def video_queue(client: redis.Redis, settings: Settings) -> Queue:
    return Queue(
        settings.queue_name, connection=client, default_timeout=settings.job_timeout_s, serializer=JOB_SERIALIZER
    )


def enqueue_videos(
    client: redis.Redis,
    settings: Settings,
    videos: dict[str, str],
    only_new: bool = False,
    model_id: str | None = None,
) -> int:
    """Mark ``videos`` (video id -> fingerprint) seen and pending and enqueue one job each,
    atomically; returns how many were enqueued.

    ``model_id`` names the model the jobs are for (``producer enqueue --reclassify``): consumers
    running another model hand such a job back, and only that model's outcome clears pending.

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
                _queue_jobs(pipe, client, settings, chosen, model_id)
                pipe.execute()
                return len(chosen)
            except redis.WatchError:
                continue


def _not_seen(pipe: redis.client.Pipeline, seen_key: str, videos: dict[str, str]) -> dict[str, str]:
    known = pipe.hmget(seen_key, list(videos))
    return {
        video: fingerprint
        for (video, fingerprint), seen in zip(videos.items(), known, strict=True)
        if seen is None or text(seen) != fingerprint
    }


def _queue_jobs(
    pipe: redis.client.Pipeline, client: redis.Redis, settings: Settings, videos: dict[str, str], model_id: str | None
) -> None:
    """Queue on ``pipe`` (in MULTI) the seen/pending marks and one rq job per video."""
    keys = settings.keys
    pipe.hset(keys.seen(), mapping={video: fingerprint for video, fingerprint in videos.items()})
    pipe.hset(keys.pending(), mapping={video: pending_entry(fp, model_id) for video, fp in videos.items()})
    video_queue(client, settings).enqueue_many(_jobs(settings, videos, model_id), pipeline=pipe)


def enqueue_jobs_again(
    client: redis.Redis, settings: Settings, videos: dict[str, str], model_id: str | None, batch: int | None = None
) -> None:
    """More jobs for videos already marked seen and pending (a job handed back by a consumer of
    another model or past its time, a failed batch split into single videos). A job for a version
    replaced meanwhile is harmless: its outcome is stale."""
    video_queue(client, settings).enqueue_many(_jobs(settings, videos, model_id, batch))


def _jobs(settings: Settings, videos: dict[str, str], model_id: str | None, batch: int | None = None) -> list:
    """One job per ``batch`` videos (``MOMENTS_JOB_BATCH`` unless given), each a list of
    [video, fingerprint] pairs and the model it is for."""
    retry = Retry(max=settings.job_retries, interval=list(RETRY_INTERVALS_S)) if settings.job_retries else None
    pairs = [[video, fingerprint] for video, fingerprint in videos.items()]
    size = batch or settings.job_batch
    chunks = [pairs[start : start + size] for start in range(0, len(pairs), size)]
    return [
        Queue.prepare_data(
            CLASSIFY_JOB,
            args=(chunk, model_id),
            description=_describe(chunk, model_id),
            # MOMENTS_JOB_TIMEOUT is per video: a batch gets as much for each of its videos
            timeout=settings.job_timeout_s * len(chunk),
            result_ttl=0,
            failure_ttl=FAILURE_TTL_S,
            retry=retry,
            on_failure=Callback(FAILURE_CALLBACK),
        )
        for chunk in chunks
    ]


def _describe(pairs: list[list[str]], model_id: str | None) -> str:
    what = pairs[0][0] if len(pairs) == 1 else f"{len(pairs)} videos from {pairs[0][0]}"
    return f"classify {what}" + (f" with {model_id}" if model_id else "")


def job_videos(args: Sequence[Any]) -> tuple[dict[str, str], str | None]:
    """The videos (id -> fingerprint) and the model of a classify job's arguments: a list of
    [video, fingerprint] pairs and the model, or, in jobs of releases before batches, one video's
    (video, fingerprint, model)."""
    if args and isinstance(args[0], list):
        return {video: fingerprint for video, fingerprint in args[0]}, (args[1] if len(args) > 1 else None)
    video, fingerprint, *model = args
    return {video: fingerprint}, (model[0] if model else None)


def live_consumer_models(client: redis.Redis, settings: Settings) -> set[str]:
    """The models the live consumers of the video queue run: each consumer's rq workers name theirs
    in their worker hash (:data:`WORKER_MODEL_FIELD`), which lapses with the worker's lease."""
    worker_keys = sorted(worker_registration.get_keys(video_queue(client, settings)))
    if not worker_keys:
        return set()
    with client.pipeline(transaction=False) as pipe:
        for key in worker_keys:
            pipe.hmget(key, [WORKER_MODEL_FIELD, "death"])
        fields = pipe.execute()
    return {text(model) for model, death in fields if model is not None and death is None}


def failures(client: redis.Redis, settings: Settings) -> list[dict]:
    """Every failed video's record (video, fingerprint, error, worker), sorted by key."""
    records = (json.loads(raw) for raw in client.hvals(settings.keys.failed()))
    return sorted(records, key=lambda record: record["video"])


def as_video_id(known: Iterable[str], bucket: str, name: str) -> str:
    """``name`` as a video id: itself when it is one of ``known``, else a key in ``bucket``."""
    return name if name in known else video_id(bucket, name)


def requeue_failed(client: redis.Redis, settings: Settings, videos: Iterable[str] | None = None) -> list[str]:
    """Give failed videos (all, or those named) another round of attempts; returns those requeued.

    One transaction (``WATCH`` on the failed hash, retried when it changed meanwhile) leaves the
    failed set, marks the version last enqueued pending again and enqueues its job, so a crash
    leaves each video failed or requeued, never in neither state. A failed ``--reclassify`` is
    requeued for the model it was for (the failure's ``for_model``). Their rq jobs leave rq's
    failed registry in the same transaction, so ``rq info`` and ``consumer failures`` agree.
    """
    keys = settings.keys
    registry = video_queue(client, settings).failed_job_registry
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.failed())
                records = {record["video"]: record for record in map(json.loads, pipe.hvals(keys.failed()))}
                chosen = _chosen(records, settings.bucket, videos)
                if not chosen:
                    pipe.unwatch()
                    return []
                latest = pipe.hmget(keys.seen(), chosen)
                by_model: dict[str | None, dict[str, str]] = {}
                for video, seen in zip(chosen, latest, strict=True):
                    fingerprint = text(seen) if seen is not None else records[video]["fingerprint"]
                    by_model.setdefault(records[video].get("for_model"), {})[video] = fingerprint
                failed_jobs = [
                    job
                    for job in registry.job_class.fetch_many(
                        registry.get_job_ids(), connection=client, serializer=JOB_SERIALIZER
                    )
                    if job is not None and job.args and not set(chosen).isdisjoint(job_videos(job.args)[0])
                ]
                pipe.multi()
                for job in failed_jobs:
                    registry.remove(job, pipeline=pipe)
                    job.delete(pipeline=pipe, remove_from_queue=False)
                pipe.hdel(keys.failed(), *chosen)
                for model_id, group in by_model.items():
                    _queue_jobs(pipe, client, settings, group, model_id)
                pipe.execute()
                return chosen
            except redis.WatchError:
                continue


def _chosen(records: dict[str, dict], bucket: str, videos: Iterable[str] | None) -> list[str]:
    """The failed videos named (all when ``None``): by id (BUCKET/KEY), or by key in ``bucket``."""
    if videos is None:
        return list(records)
    named = dict.fromkeys(as_video_id(records, bucket, video) for video in videos)
    return [video for video in named if video in records]
