"""Where a run stands, read from Redis in one snapshot: every number is one ``redis-cli`` command.

``aggregator status`` prints it; ``--json`` gives scripts the same document, which ``aggregator top``
draws (``aggregator.top``) and ``/metrics`` serves (``aggregator.metrics``). The README's
"Watching a run" section lists the ``redis-cli`` equivalent of each field.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import redis
from rq import Worker
from rq.executions import Execution
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from moments_stream import ledger, results
from moments_stream.queues import JOB_SERIALIZER, job_videos, video_queue
from moments_stream.redis_conn import text
from moments_stream.settings import (
    RECENT_WINDOW_S,
    SYNTHETIC_MODEL_PREFIX,
    THROUGHPUT_WINDOW_S,
    TIMED_STAGES,
    Settings,
)

from . import reconcile
from .drain import BUCKET_LABELS


def redis_now(client: redis.Redis) -> float:
    """Redis' clock, the one the ledger stamps finishes with (consumers' clocks may differ)."""
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


def eta_seconds(pending: int, finished_in_window: int, window_s: float) -> float | None:
    """Time to finish ``pending`` at the recent rate; ``None`` while nothing has finished lately."""
    if pending == 0:
        return 0.0
    if finished_in_window == 0:
        return None
    return pending / (finished_in_window / window_s)


def _age_s(timestamp: str | None, now: float) -> float | None:
    if not timestamp:
        return None
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(max(0.0, now - moment.timestamp()), 1)


def in_flight_videos(client: redis.Redis, registry: StartedJobRegistry) -> dict[str, str]:
    """worker name -> video it is classifying (a batch: how many from which), from rq's started-job
    registry and executions."""
    started = registry.get_job_and_execution_ids(cleanup=False)
    jobs = registry.job_class.fetch_many(
        [job_id for job_id, _ in started], connection=client, serializer=JOB_SERIALIZER
    )
    by_worker = {}
    for (job_id, execution_id), job in zip(started, jobs, strict=True):
        try:
            execution = Execution.fetch(execution_id, job_id, client)
        except ValueError:
            continue
        if job is not None and job.args and execution.worker_name:
            videos = list(job_videos(job.args)[0])
            batch = f"{len(videos)} videos from {videos[0]}"
            by_worker[execution.worker_name] = videos[0] if len(videos) == 1 else batch
    return by_worker


def workers(client: redis.Redis, queue_name: str, now: float) -> list[dict[str, Any]]:
    """The consumers registered on the queue whose rq worker key (their lease) is still alive."""
    names = sorted(text(member) for member in client.smembers(WORKERS_BY_QUEUE_KEY % queue_name))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(name, "state", "last_heartbeat")
        fields = pipe.execute()
    registry = StartedJobRegistry(queue_name, connection=client, serializer=JOB_SERIALIZER)
    videos = in_flight_videos(client, registry)
    alive = []
    for key, (state, heartbeat) in zip(names, fields, strict=True):
        if state is None and heartbeat is None:
            continue  # lease expired: the worker is dead and rq has not pruned it yet
        name = key.removeprefix(Worker.redis_worker_namespace_prefix)
        heartbeat_text = heartbeat.decode() if heartbeat else None
        alive.append(
            {
                "name": name,
                "state": state.decode() if state else None,
                "last_heartbeat": heartbeat_text,
                "heartbeat_age_s": _age_s(heartbeat_text, now),
                "video": videos.get(name),
            }
        )
    return alive


def drain_lag_s(head: bytes | None, now: float) -> float | None:
    """How long the oldest message on the results queue has waited for an aggregator (0 when none
    waits), from the time its consumer published it (its own clock); ``None`` when it is unreadable."""
    if head is None:
        return 0.0
    try:
        published_at = results.decode(head).published_at
    except results.MalformedMessage:
        return None
    return None if published_at is None else round(max(0.0, now - published_at), 3)


def stage_histogram(fields: list[bytes | None]) -> dict[str, Any]:
    """One stage's histogram from its hash's fields (``BUCKET_LABELS``, then sum and count)."""
    *buckets, total, count = fields
    return {
        "buckets": {label: int(value or 0) for label, value in zip(BUCKET_LABELS, buckets, strict=True)},
        "sum": float(total or 0),
        "count": int(count or 0),
    }


def status_document(client: redis.Redis, settings: Settings, model_id: str | None = None) -> dict[str, Any]:
    """Every state's size, the live workers, throughput and ETA, the model's counts per category and
    the stage timings, read in one MULTI snapshot: what ``status``, ``top`` and ``metrics`` show."""
    keys = settings.keys
    model = ledger.resolve_model(client, keys, model_id)
    queue = video_queue(client, settings)
    now = redis_now(client)
    minutes = RECENT_WINDOW_S // 60
    with client.pipeline(transaction=True) as pipe:
        pipe.hlen(keys.pending())
        pipe.llen(queue.key)
        pipe.zcard(StartedJobRegistry(queue.name, connection=client).key)
        pipe.zcard(ScheduledJobRegistry(queue.name, connection=client).key)
        pipe.hlen(keys.outbox())
        pipe.hlen(keys.failed())
        pipe.zcount(keys.recent(), now - THROUGHPUT_WINDOW_S, "+inf")
        pipe.hlen(keys.dead_letters())
        pipe.llen(keys.results_list())
        pipe.lindex(keys.results_list(), 0)  # the oldest message: consumers push on the right
        pipe.hgetall(keys.counts(model or ""))  # read only when there is a model
        for minute in range(minutes - 1, -1, -1):  # finishes per minute, the oldest minute first
            pipe.zcount(keys.recent(), f"({now - (minute + 1) * 60}", now - minute * 60 if minute else "+inf")
        for stage in TIMED_STAGES:
            pipe.hmget(keys.stage_seconds(stage), [*BUCKET_LABELS, "sum", "count"])
        models = ledger.known_models(client, keys)
        for known in models:
            pipe.hlen(keys.predictions(known))
        replies = pipe.execute()
    pending, queued, in_flight, retry_scheduled, outbox, failed, finished, dead_letters, results_queued = replies[:9]
    head, raw_counts = replies[9:11]
    per_minute = replies[11 : 11 + minutes]
    histograms = replies[11 + minutes : 11 + minutes + len(TIMED_STAGES)]
    counted = replies[11 + minutes + len(TIMED_STAGES) :]
    counted_by_model = dict(zip(models, counted, strict=True))
    by_category = ledger.sorted_counts({text(name): int(value) for name, value in raw_counts.items()}) if model else []
    live = workers(client, queue.name, now)
    eta = eta_seconds(pending, finished, THROUGHPUT_WINDOW_S)
    return {
        "model": model,
        "counted": counted_by_model.get(model, 0) if model else 0,
        "failed": failed,
        "pending": pending,
        "queued": queued,
        "in_flight": in_flight,
        "retry_scheduled": retry_scheduled,
        "awaiting_aggregator": outbox,
        "finished_last_minute": finished,
        "throughput_per_s": round(finished / THROUGHPUT_WINDOW_S, 3),
        "eta_s": None if eta is None else round(eta, 1),
        # videos finished (counted or failed) in each of the last minutes, the oldest first
        "finished_per_minute": per_minute,
        "dead_letters": dead_letters,
        # messages on the results queue not yet taken by an aggregator; how long the oldest has waited
        "results_queued": results_queued,
        "drain_lag_s": drain_lag_s(head, now),
        "workers_alive": len(live),
        "workers": live,
        # the model's videos per top-1 category, most frequent first
        "counts": dict(by_category),
        "stage_seconds": {stage: stage_histogram(fields) for stage, fields in zip(TIMED_STAGES, histograms,
                                                                                  strict=True)},
        "counted_by_model": counted_by_model,
        # the reconciler: videos it enqueued again or recorded failed, ever; those it watches now
        "reconciled": reconcile.totals(client, keys),
        "redis_time": round(now, 3),
    }


def model_label(model_id: str | None) -> str:
    if model_id is None:
        return "(nothing counted yet)"
    if model_id.startswith(SYNTHETIC_MODEL_PREFIX):
        return f"{model_id}  (random test weights: these are NOT real predictions)"
    return model_id


def format_duration(seconds: float | None, unknown: str = "unknown (nothing finished in the last minute)") -> str:
    """``14m22s`` / ``1h02m03s``; ``unknown`` when there is no figure (an ETA with no throughput)."""
    if seconds is None:
        return unknown
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _lag(seconds: float | None) -> str:
    return "unknown: unreadable" if seconds is None else f"{seconds:.1f} s"


def format_status(document: dict[str, Any]) -> str:
    lines = [
        f"model        {model_label(document['model'])}",
        f"counted      {document['counted']}",
        f"failed       {document['failed']}",
        # rq's figures are jobs, which hold MOMENTS_JOB_BATCH videos each
        f"pending      {document['pending']}  (rq jobs: queued {document['queued']}, in flight "
        f"{document['in_flight']}, retry scheduled {document['retry_scheduled']}; "
        f"awaiting aggregator {document['awaiting_aggregator']})",
        f"throughput   {document['finished_last_minute']} videos in the last {THROUGHPUT_WINDOW_S} s "
        f"({document['throughput_per_s']:.2f}/s)",
        f"ETA          {format_duration(document['eta_s'])}",
        f"aggregator   {document['results_queued']} on the results queue (oldest waited "
        f"{_lag(document['drain_lag_s'])}), dead letters {document['dead_letters']}",
        f"reconciled   requeued {document['reconciled']['requeued']}, failed {document['reconciled']['failed']} "
        f"(pending with no job anywhere; {document['reconciled']['watched']} watched now)",
        f"workers      {document['workers_alive']} alive",
    ]
    for worker in document["workers"]:
        age = worker["heartbeat_age_s"]
        seen = "never" if age is None else f"{age:.0f} s ago"
        doing = worker["video"] or "-"
        lines.append(f"  {worker['name']}  {worker['state'] or '?'}  heartbeat {seen}  video {doing}")
    others = {model: n for model, n in document["counted_by_model"].items() if model != document["model"]}
    for model, counted in others.items():
        lines.append(f"other model  {model}: counted {counted} (aggregator counts --model ID)")
    return "\n".join(lines)
