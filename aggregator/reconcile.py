"""Liveness: pending videos that no job holds any more are enqueued again, or, after a bounded number
of such rounds, recorded failed.

Nothing but the ledger clears ``pending``, so a lost job (an rq queue deleted, a Redis restored
without it, a job dropped by a bug) would leave its video pending for ever. A video *has a job* when
a job holding it is queued (or being dequeued: rq's intermediate list), in flight (rq's started
registry), scheduled for a retry, in rq's failed registry (its failure callback records it), or
when its outcome awaits the aggregator in the outbox. The reconciler, run by the aggregator every
few seconds, finds pending videos with none, stamps when it first saw each so (Redis clock), and
once one has had no job for ``MOMENTS_RECONCILE_AFTER`` s enqueues it again with fresh attempts,
with the fingerprint and model its pending entry names. After ``MOMENTS_RECONCILE_ROUNDS`` such
rounds the video is recorded failed through the ledger, with a reason that says so.

A round runs under a lock (several aggregators may run at once: one round at a time), and acts
only on videos it finds without a job in two snapshots, the second taken after the first one's
jobs were read: a job that finished between a snapshot and the reading of its jobs has left its
outcome in the outbox (or the video is no longer pending) by the second.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from moments_stream import outcome
from moments_stream.keys import Keys
from moments_stream.logs import get_logger
from moments_stream.outcome import outbox_identity
from moments_stream.queues import JOB_SERIALIZER, enqueue_jobs_again, job_videos, video_queue
from moments_stream.redis_conn import text
from moments_stream.settings import Settings

from .drain import DrainReport, apply_batch

log = get_logger(__name__)

# The worker name the failures the reconciler records carry.
RECONCILER = "reconciler"
# Longest a round may hold the lock (a crashed aggregator's lock lapses after this).
LOCK_TTL_MS = 60_000
# Job hashes read per round trip.
FETCH_CHUNK = 1000
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class PendingEntry:
    fingerprint: str
    model: str | None


def parse_pending(raw: bytes | str) -> PendingEntry:
    """A pending entry: JSON ``{"fingerprint", "model"}`` (``videos.pending_entry``); raises
    ``ValueError``, ``KeyError``, ``TypeError`` or ``AttributeError`` for anything else."""
    document = json.loads(text(raw))
    return PendingEntry(document["fingerprint"], document.get("model"))


@dataclass
class Snapshot:
    """Pending videos and what holds each one, read at one moment (one MULTI), jobs read right after."""

    pending: dict[str, PendingEntry]
    queued: set[str] = field(default_factory=set)  # queued or being dequeued
    in_flight: set[str] = field(default_factory=set)
    scheduled: set[str] = field(default_factory=set)
    failed_registry: set[str] = field(default_factory=set)
    outbox: set[str] = field(default_factory=set)
    # Every video of every job read, with the job's model (check: jobs for a model nobody runs).
    job_models: dict[str | None, int] = field(default_factory=dict)
    # Pending entries that are not JSON entries (videos.pending_entry).
    unreadable: list[str] = field(default_factory=list)

    @property
    def held(self) -> set[str]:
        return self.queued | self.in_flight | self.scheduled | self.failed_registry | self.outbox

    def without_job(self) -> dict[str, PendingEntry]:
        held = self.held
        return {video: entry for video, entry in self.pending.items() if video not in held}


def _job_id(member: bytes | str) -> str:
    """The job id of a started-registry member: rq 3 (``rq>=3`` in pyproject.toml) writes only
    ``JOB_ID:EXECUTION_ID`` there (``StartedJobRegistry.add_execution``)."""
    return text(member).rpartition(":")[0]


# job id -> the videos and model of a job already read. A job's arguments never change (a retry
# keeps them), so an aggregator that keeps this between rounds reads each job once, not every round.
KnownJobs = dict[str, tuple[tuple[str, ...], str | None]]


def _videos_of(client: redis.Redis, job_ids: list[str], snapshot: Snapshot, known: KnownJobs) -> set[str]:
    unread = [job_id for job_id in job_ids if job_id not in known]
    for start in range(0, len(unread), FETCH_CHUNK):
        chunk = unread[start : start + FETCH_CHUNK]
        for job_id, job in zip(chunk, Job.fetch_many(chunk, connection=client, serializer=JOB_SERIALIZER),
                               strict=True):
            if job is None:
                continue  # gone since the snapshot: finished (outbox) or moved; the second snapshot sees it
            try:
                held, model = job_videos(job.args)
            except Exception:  # not a classify job of this project: holds no video
                held, model = {}, None
            known[job_id] = (tuple(held), model)
    videos: set[str] = set()
    for job_id in job_ids:
        if job_id in known:
            held_videos, model = known[job_id]
            videos.update(held_videos)
            if held_videos:
                snapshot.job_models[model] = snapshot.job_models.get(model, 0) + len(held_videos)
    return videos


def take_snapshot(client: redis.Redis, settings: Settings, known_jobs: KnownJobs | None = None) -> Snapshot:
    """Pending videos and the videos every job and outbox entry holds (see the module's docstring).
    ``known_jobs`` (kept between rounds) spares reading jobs read before; it is pruned to this
    snapshot's jobs."""
    known = {} if known_jobs is None else known_jobs
    keys = settings.keys
    queue = video_queue(client, settings)
    registries = [
        StartedJobRegistry(queue.name, connection=client),
        ScheduledJobRegistry(queue.name, connection=client),
        FailedJobRegistry(queue.name, connection=client),
    ]
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.pending())
        pipe.hgetall(keys.outbox())
        pipe.lrange(queue.key, 0, -1)
        pipe.lrange(queue.intermediate_queue_key, 0, -1)
        for registry in registries:
            pipe.zrange(registry.key, 0, -1)
        pending_raw, outbox_raw, queued_ids, dequeuing_ids, started, scheduled, failed = pipe.execute()
    snapshot = Snapshot({})
    for video, raw in pending_raw.items():
        try:
            snapshot.pending[text(video)] = parse_pending(raw)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("pending_entry_unreadable", video=text(video), entry=text(raw)[:200],
                      meaning="neither reconciled nor checked: `aggregator check` lists it")
            snapshot.unreadable.append(text(video))
    snapshot.outbox = {video for name, raw in outbox_raw.items() if (video := _outbox_video(name, raw)) is not None}
    queued_jobs = [text(job_id) for job_id in [*queued_ids, *dequeuing_ids]]
    started_jobs = list(dict.fromkeys(_job_id(member) for member in started))
    scheduled_jobs = [text(job_id) for job_id in scheduled]
    failed_jobs = [text(job_id) for job_id in failed]
    snapshot.queued = _videos_of(client, queued_jobs, snapshot, known)
    snapshot.in_flight = _videos_of(client, started_jobs, snapshot, known)
    snapshot.scheduled = _videos_of(client, scheduled_jobs, snapshot, known)
    snapshot.failed_registry = _videos_of(client, failed_jobs, snapshot, known)
    current = {*queued_jobs, *started_jobs, *scheduled_jobs, *failed_jobs}
    for job_id in [job_id for job_id in known if job_id not in current]:
        del known[job_id]
    return snapshot


def _outbox_video(name: bytes, raw: bytes) -> str | None:
    """The video an outbox entry is for: its outcome's ``video``, else the one its field names
    (``outcome.outbox_field``); ``None`` for an entry that names none."""
    try:
        video = json.loads(raw).get("video")
    except (ValueError, AttributeError):
        video = None
    if isinstance(video, str):
        return video
    identity = outbox_identity(text(name))
    return identity[0] if identity is not None else None


@dataclass
class ReconcileReport:
    requeued: int = 0
    failed: int = 0
    # Pending videos seen with no job, not yet for MOMENTS_RECONCILE_AFTER s.
    watched: int = 0
    # Another aggregator held the round's lock: this one did nothing.
    skipped: bool = False


def reconcile_interval_s(settings: Settings) -> float:
    """How often an aggregator runs a round: often enough that a video is acted on soon after
    ``MOMENTS_RECONCILE_AFTER``, rarely enough that reading every job stays cheap."""
    return max(0.5, min(settings.reconcile_after_s / 4, 30.0))


def redis_clock(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


def reconcile(
    client: redis.Redis,
    settings: Settings,
    now: float | None = None,
    drain_report: DrainReport | None = None,
    report: ReconcileReport | None = None,
    known_jobs: KnownJobs | None = None,
) -> ReconcileReport:
    """One round: stamp the pending videos with no job, enqueue again (or record failed) those that
    have had none for ``MOMENTS_RECONCILE_AFTER`` s. ``now`` is the Redis clock unless given (tests).
    ``drain_report`` (an aggregator's :class:`~aggregator.drain.DrainReport`) counts the failures
    recorded; ``report`` adds this round's figures to an aggregator's running ones; ``known_jobs``,
    kept between rounds, spares reading every job each round."""
    keys = settings.keys
    report = ReconcileReport() if report is None else report
    report.skipped = False
    token = uuid.uuid4().hex
    if not client.set(keys.reconcile_lock(), token, nx=True, px=LOCK_TTL_MS):
        report.skipped = True
        return report
    try:
        _round(client, settings, redis_clock(client) if now is None else now, report, drain_report,
               {} if known_jobs is None else known_jobs)
    finally:
        client.register_script(_RELEASE_LOCK)(keys=[keys.reconcile_lock()], args=[token])
    return report


def _round(client: redis.Redis, settings: Settings, now: float, report: ReconcileReport,
           drain_report: DrainReport | None, known_jobs: KnownJobs) -> None:
    keys = settings.keys
    report.watched = 0
    if not client.hlen(keys.pending()):
        client.delete(keys.reconcile_orphans(), keys.reconcile_rounds())
        return
    snapshot = take_snapshot(client, settings, known_jobs)
    orphans = snapshot.without_job()
    stamps = {text(video): float(at) for video, at in client.hgetall(keys.reconcile_orphans()).items()}
    _forget(client, keys.reconcile_orphans(), [video for video in stamps if video not in orphans])
    _forget(client, keys.reconcile_rounds(), [text(video) for video in client.hkeys(keys.reconcile_rounds())
                                      if text(video) not in snapshot.pending])
    fresh = [video for video in orphans if video not in stamps]
    if fresh:
        client.hset(keys.reconcile_orphans(), items=[part for video in fresh for part in (video, now)])
    due = [video for video in orphans if video in stamps and now - stamps[video] >= settings.reconcile_after_s]
    report.watched = len(orphans) - len(due)  # this round's figure, not a running one
    if not due:
        return
    again = take_snapshot(client, settings, known_jobs).without_job()
    due = [video for video in due if video in again and again[video] == orphans[video]]
    if not due:
        return
    done = client.hmget(keys.reconcile_rounds(), due)
    requeue: dict[str | None, dict[str, str]] = {}
    give_up: list[str] = []
    for video, rounds in zip(due, done, strict=True):
        if int(rounds or 0) >= settings.reconcile_rounds:
            give_up.append(video)
        else:
            requeue.setdefault(orphans[video].model, {})[video] = orphans[video].fingerprint
    for model, videos in requeue.items():
        _requeue(client, settings, videos, model, now - min(stamps[video] for video in videos), report)
    if give_up:
        _fail(client, settings, {video: orphans[video] for video in give_up}, report, drain_report)


def _forget(client: redis.Redis, key: str, videos: Iterable[str]) -> None:
    names = list(videos)
    if names:
        client.hdel(key, *names)


def _requeue(client: redis.Redis, settings: Settings, videos: dict[str, str], model: str | None, idle_s: float,
             report: ReconcileReport) -> None:
    keys = settings.keys
    enqueue_jobs_again(client, settings, videos, model)
    with client.pipeline(transaction=True) as pipe:
        for video in videos:
            pipe.hincrby(keys.reconcile_rounds(), video, 1)
        pipe.hdel(keys.reconcile_orphans(), *videos)
        pipe.hincrby(keys.reconcile_totals(), "requeued", len(videos))
        rounds = pipe.execute()[: len(videos)]
    report.requeued += len(videos)
    for (video, fingerprint), round_number in zip(videos.items(), rounds, strict=True):
        log.warning("video_reconciled", action="requeued", video=video, fingerprint=fingerprint, model=model,
                    round=round_number, of=settings.reconcile_rounds, without_job_s=round(idle_s, 1),
                    meaning="pending with no job anywhere: enqueued again with fresh attempts")


def failure_reason(settings: Settings) -> str:
    return (f"no job held it for {settings.reconcile_after_s} s (MOMENTS_RECONCILE_AFTER) after "
            f"{settings.reconcile_rounds} re-enqueue(s) by the reconciler (MOMENTS_RECONCILE_ROUNDS): its jobs "
            f"kept being lost; `consumer requeue` tries again")


def _fail(client: redis.Redis, settings: Settings, videos: dict[str, PendingEntry], report: ReconcileReport,
          drain_report: DrainReport | None) -> None:
    keys = settings.keys
    reason = failure_reason(settings)
    failures = [outcome.failed(video, entry.fingerprint, reason, worker=RECONCILER, model_id=entry.model,
                                for_model=entry.model)
                for video, entry in videos.items()]
    recorded = drain_report if drain_report is not None else DrainReport()
    before = recorded.failed
    apply_batch(client, keys, failures, recorded)
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.reconcile_rounds(), *videos)
        pipe.hdel(keys.reconcile_orphans(), *videos)
        pipe.hincrby(keys.reconcile_totals(), "failed", recorded.failed - before)
        pipe.execute()
    report.failed += recorded.failed - before
    for video, entry in videos.items():
        log.error("video_reconciled", action="failed", video=video, fingerprint=entry.fingerprint, model=entry.model,
                  rounds=settings.reconcile_rounds, error=reason)


def totals(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """What the reconciler did, ever (``requeued``, ``failed``) and the videos it watches now (``watched``)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hmget(keys.reconcile_totals(), "requeued", "failed")
        pipe.hlen(keys.reconcile_orphans())
        (requeued, failed), watched = pipe.execute()
    return {"requeued": int(requeued or 0), "failed": int(failed or 0), "watched": int(watched)}
