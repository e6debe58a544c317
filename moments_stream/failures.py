"""Failed videos: listing them with their errors (``consumer failures``) and giving them another
round of attempts (``consumer requeue``), each requeue one transaction with its new job."""

from __future__ import annotations

import json
from collections.abc import Iterable

import redis

from . import queues
from .redis_conn import text
from .settings import Settings
from .videos import video_id


def failures(client: redis.Redis, settings: Settings) -> list[dict]:
    """Every failed video's record (video, fingerprint, error, worker), sorted by key."""
    records = (json.loads(raw) for raw in client.hvals(settings.keys.failed()))
    return sorted(records, key=lambda record: record["video"])


def as_video_id(known: Iterable[str], bucket: str, name: str) -> str:
    """``name`` as a video id: itself when it is one of ``known``, else a key in ``bucket``."""
    return name if name in known else video_id(bucket, name)


def requeue_failed(client: redis.Redis, settings: Settings, videos: Iterable[str] | None = None) -> list[str]:
    """Give failed videos (all, or those named) another round of attempts; returns those requeued.

    One transaction (``WATCH`` on the failed and seen hashes, retried when either changed
    meanwhile) leaves the failed set, marks the version last enqueued pending again and enqueues its
    job, so a crash leaves each video failed or requeued, never in neither state, and a producer
    enqueueing a replaced file meanwhile never has its newer version marked back to the one the
    requeue read (the seen hash was not watched before: the requeue then won). A failed ``--reclassify`` is
    requeued for the model it was for (the failure's ``for_model``). Their rq jobs leave rq's
    failed registry in the same transaction, so ``rq info`` and ``consumer failures`` agree.
    """
    keys = settings.keys
    registry = queues.video_queue(client, settings).failed_job_registry
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.failed(), keys.seen())
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
                        registry.get_job_ids(), connection=client, serializer=queues.JOB_SERIALIZER
                    )
                    if job is not None and job.args and not set(chosen).isdisjoint(queues.job_videos(job.args)[0])
                ]
                pipe.multi()
                for job in failed_jobs:
                    registry.remove(job, pipeline=pipe)
                    job.delete(pipeline=pipe, remove_from_queue=False)
                pipe.hdel(keys.failed(), *chosen)
                for model_id, group in by_model.items():
                    queues.queue_jobs(pipe, client, settings, group, model_id)
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
