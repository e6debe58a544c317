"""The reconciler (aggregator/reconcile.py) against a real Redis and real rq registries, driven
round by round with an explicit clock: a pending video whose job is lost anywhere comes back, a
video held anywhere is left alone, the rounds are bounded, and two aggregators act once."""

from __future__ import annotations

import json
import threading

import pytest
import redis
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from aggregator.drain import DrainReport, drain
from aggregator.reconcile import KnownJobs, reconcile, totals
from aggregator.status import format_status, status_document
from moments_stream import outcome
from moments_stream.errors import ConfigError
from moments_stream.queues import enqueue_videos, job_videos, video_queue
from moments_stream.results import open_results_queue
from moments_stream.settings import Settings

AFTER_S = 60
A, B, C = "rec/v/a.mp4", "rec/v/b.mp4", "rec/v/c.mp4"


@pytest.fixture()
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings.from_env({"MOMENTS_REDIS_URL": redis_url, "MOMENTS_BUCKET": "rec",
                              "MOMENTS_RECONCILE_AFTER": str(AFTER_S), "MOMENTS_RECONCILE_ROUNDS": "2"})


def lose_every_job(client: redis.Redis, settings: Settings) -> None:
    """The rq queue deleted with its jobs (what a lost job looks like: pending, and no job anywhere)."""
    queue = video_queue(client, settings)
    for job_id in queue.job_ids:
        client.delete(f"rq:job:{job_id}")
    client.delete(queue.key)


def queued(client: redis.Redis, settings: Settings) -> list[tuple[dict[str, str], str | None]]:
    return [job_videos(job.args) for job in video_queue(client, settings).jobs]


def test_a_video_whose_job_was_lost_is_enqueued_again_once_the_setting_has_passed(
    redis_client: redis.Redis, settings: Settings
) -> None:
    enqueue_videos(redis_client, settings, {A: "1:1"}, model_id="model-x")
    lose_every_job(redis_client, settings)
    first = reconcile(redis_client, settings, now=1000.0)
    assert (first.requeued, first.watched) == (0, 1)
    assert reconcile(redis_client, settings, now=1000.0 + AFTER_S - 1).requeued == 0
    assert queued(redis_client, settings) == []
    assert reconcile(redis_client, settings, now=1000.0 + AFTER_S).requeued == 1
    # as its pending entry says: this version, for the model the job was for, fresh attempts
    jobs = video_queue(redis_client, settings).jobs
    assert [job_videos(job.args) for job in jobs] == [({A: "1:1"}, "model-x")]
    assert jobs[0].retries_left == settings.job_retries
    # its job exists again: later rounds leave it alone
    assert reconcile(redis_client, settings, now=5000.0).requeued == 0
    assert len(queued(redis_client, settings)) == 1
    assert totals(redis_client, settings.keys) == {"requeued": 1, "failed": 0, "watched": 0}


def test_only_the_video_whose_job_was_lost_comes_back_and_in_jobs_of_the_batch_size(
    redis_client: redis.Redis, settings: Settings
) -> None:
    settings = settings.replace(job_batch=2)
    names = [f"rec/v/{index}.mp4" for index in range(5)]
    enqueue_videos(redis_client, settings, {name: "1:1" for name in names})  # jobs [0, 1] [2, 3] [4]
    queue = video_queue(redis_client, settings)
    kept, *lost = queue.job_ids
    for job_id in lost:
        queue.remove(job_id)
        redis_client.delete(f"rq:job:{job_id}")
    reconcile(redis_client, settings, now=0.0)
    assert reconcile(redis_client, settings, now=float(AFTER_S)).requeued == 3
    assert [job_videos(job.args)[0] for job in queue.jobs] == [
        {names[0]: "1:1", names[1]: "1:1"}, {names[2]: "1:1", names[3]: "1:1"}, {names[4]: "1:1"}]
    assert queue.job_ids[0] == kept


def hold_in(place: str, client: redis.Redis, settings: Settings) -> None:
    """Move the one job of the namespace to ``place``, as rq (or a consumer) would leave it there."""
    queue = video_queue(client, settings)
    (job_id,) = queue.job_ids
    if place == "queued":
        return
    if place == "being dequeued":
        client.lmove(queue.key, queue.intermediate_queue_key)
        return
    client.delete(queue.key)
    if place == "in flight":
        client.zadd(StartedJobRegistry(queue.name, connection=client).key, {f"{job_id}:execution-1": 1e12})
    elif place == "retry scheduled":
        client.zadd(ScheduledJobRegistry(queue.name, connection=client).key, {job_id: 1e12})
    elif place == "rq's failed registry":
        client.zadd(FailedJobRegistry(queue.name, connection=client).key, {job_id: 1e12})
    elif place == "outbox":
        client.delete(f"rq:job:{job_id}")
        published = outcome.counted(A, "1:1", "model-x", [("juggling", 0.9)]).published(1.0)
        client.hset(settings.keys.outbox(), published.outbox_field, published.encode())
    elif place == "unreadable outbox":  # awaiting the aggregator, which dead-letters it (and records the video)
        client.delete(f"rq:job:{job_id}")
        client.hset(settings.keys.outbox(), outcome.outbox_field(A, "1:1", None), "{not json")
    else:
        raise AssertionError(place)


@pytest.mark.parametrize(
    "place",
    ["queued", "being dequeued", "in flight", "retry scheduled", "rq's failed registry", "outbox", "unreadable outbox"],
)
def test_a_video_with_a_job_anywhere_is_never_enqueued_again(
    place: str, redis_client: redis.Redis, settings: Settings
) -> None:
    enqueue_videos(redis_client, settings, {A: "1:1"})
    hold_in(place, redis_client, settings)
    jobs_before = redis_client.keys("rq:job:*")
    for now in (0.0, float(AFTER_S), 10.0 * AFTER_S, 100.0 * AFTER_S):
        report = reconcile(redis_client, settings, now=now)
        assert (report.requeued, report.failed, report.watched) == (0, 0, 0), now
    assert redis_client.keys("rq:job:*") == jobs_before
    assert redis_client.hlen(settings.keys.failed()) == 0
    assert redis_client.hget(settings.keys.pending(), A) is not None


def test_after_the_bound_the_video_is_recorded_failed_with_the_reason(
    redis_client: redis.Redis, settings: Settings
) -> None:
    enqueue_videos(redis_client, settings, {A: "1:1", B: "2:2"}, model_id="model-x")
    now = 0.0
    for round_number in (1, 2):
        lose_every_job(redis_client, settings)
        reconcile(redis_client, settings, now=now)
        now += AFTER_S
        assert reconcile(redis_client, settings, now=now).requeued == 2, round_number
    lose_every_job(redis_client, settings)
    reconcile(redis_client, settings, now=now)
    report = reconcile(redis_client, settings, now=now + AFTER_S)
    assert (report.requeued, report.failed) == (0, 2)
    assert queued(redis_client, settings) == []
    # the ledger's path: pending cleared, the failure recorded with its reason and model
    assert redis_client.hlen(settings.keys.pending()) == 0
    failure = json.loads(redis_client.hget(settings.keys.failed(), A) or "{}")
    assert failure["worker"] == "reconciler" and failure["model_id"] == "model-x"
    assert "after 2 re-enqueue(s) by the reconciler" in failure["error"]
    assert "MOMENTS_RECONCILE_AFTER" in failure["error"]
    assert totals(redis_client, settings.keys) == {"requeued": 4, "failed": 2, "watched": 0}
    # nothing of it left to the reconciler
    assert not redis_client.exists(settings.keys.reconcile_orphans(), settings.keys.reconcile_rounds())
    document = status_document(redis_client, settings)
    assert document["reconciled"] == {"requeued": 4, "failed": 2, "watched": 0}
    assert "reconciled   requeued 4, failed 2" in format_status(document)


def test_rounds_count_across_versions_only_while_pending(redis_client: redis.Redis, settings: Settings) -> None:
    enqueue_videos(redis_client, settings, {A: "1:1"})
    lose_every_job(redis_client, settings)
    reconcile(redis_client, settings, now=0.0)
    assert reconcile(redis_client, settings, now=float(AFTER_S)).requeued == 1
    # counted meanwhile: its round is forgotten
    redis_client.hdel(settings.keys.pending(), A)
    reconcile(redis_client, settings, now=2.0 * AFTER_S)
    assert not redis_client.exists(f"{settings.keys.namespace}:reconcile:rounds")


def test_two_reconcilers_at_once_enqueue_a_video_once(redis_client: redis.Redis, settings: Settings) -> None:
    enqueue_videos(redis_client, settings, {A: "1:1"})
    lose_every_job(redis_client, settings)
    reconcile(redis_client, settings, now=0.0)
    clients = [redis.Redis.from_url(settings.redis_url) for _ in range(2)]
    start = threading.Barrier(2)
    reports = []

    def aggregator(client: redis.Redis) -> None:
        start.wait()
        reports.append(reconcile(client, settings, now=float(AFTER_S)))

    threads = [threading.Thread(target=aggregator, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(report.requeued for report in reports) == 1
    assert queued(redis_client, settings) == [({A: "1:1"}, None)]


def test_a_round_another_aggregator_holds_does_nothing(redis_client: redis.Redis, settings: Settings) -> None:
    enqueue_videos(redis_client, settings, {A: "1:1"})
    lose_every_job(redis_client, settings)
    reconcile(redis_client, settings, now=0.0)
    redis_client.set(f"{settings.keys.namespace}:reconcile:lock", "another-aggregator")
    assert reconcile(redis_client, settings, now=float(AFTER_S)).skipped
    assert queued(redis_client, settings) == []
    # the lock is the other aggregator's: this one leaves it
    assert redis_client.get(f"{settings.keys.namespace}:reconcile:lock") == b"another-aggregator"
    redis_client.delete(f"{settings.keys.namespace}:reconcile:lock")
    assert reconcile(redis_client, settings, now=float(AFTER_S)).requeued == 1


@pytest.mark.parametrize(("name", "value"), [("MOMENTS_RECONCILE_AFTER", "0"), ("MOMENTS_RECONCILE_ROUNDS", "-1"),
                                             ("MOMENTS_RECONCILE_ROUNDS", "101")])
def test_reconciler_settings_out_of_range_are_refused_with_the_fix(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as refused:
        Settings.from_env({name: value})
    assert refused.value.fix


def test_an_aggregator_reads_each_job_once_and_still_notices_a_lost_one(
    redis_client: redis.Redis, settings: Settings
) -> None:
    enqueue_videos(redis_client, settings, {A: "1:1", B: "2:2"})
    queue = video_queue(redis_client, settings)
    known: KnownJobs = {}
    reconcile(redis_client, settings, now=0.0, known_jobs=known)
    assert sorted(known) == sorted(queue.job_ids)
    # the hashes are not read again (were they, these jobs would hold nothing)
    for job_id in queue.job_ids:
        redis_client.delete(f"rq:job:{job_id}")
    assert reconcile(redis_client, settings, now=0.0, known_jobs=known).watched == 0
    # a job gone from everywhere is forgotten, and its video seen without a job
    redis_client.delete(queue.key)
    assert reconcile(redis_client, settings, now=1.0, known_jobs=known).watched == 2
    assert known == {}
    assert reconcile(redis_client, settings, now=1.0 + AFTER_S, known_jobs=known).requeued == 2


def test_a_failing_round_does_not_stop_the_aggregator(redis_client: redis.Redis, settings: Settings) -> None:
    stop = threading.Event()
    calls = []

    def round_(report: DrainReport) -> None:
        calls.append(report)
        if len(calls) == 1:
            raise ValueError("a bug in a round")
        stop.set()

    drain(redis_client, settings.keys, open_results_queue(redis_client, settings), stop_event=stop, poll_s=0.1,
          reconcile=round_, reconcile_every_s=0)
    assert len(calls) == 2
