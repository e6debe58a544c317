"""Exactly-once holes found in review (issue 23), each against a real Redis, the real ledger script
and, where a job runs, a real rq worker: every enqueued video ends counted once or failed, never in
both states and never in neither."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import get_current_job
from rq.job import Job, JobStatus

from aggregator.drain import DrainReport, apply_raws, recover_unrecorded
from consumer.context import WorkerContext, bind_context
from consumer.jobs import on_job_failure
from consumer.worker import ConsumerWorker, work_until_done
from moments_stream import ledger, queues, results
from moments_stream.errors import ConfigError
from moments_stream.failures import failures, requeue_failed
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome, counted, failed, outbox_field
from moments_stream.queues import JOB_SERIALIZER, enqueue_videos, job_videos, live_consumer_models, video_queue
from moments_stream.redis_conn import text
from moments_stream.results import open_results_queue
from moments_stream.settings import Settings
from moments_stream.videos import pending_entry
from producer.service import enqueue_prefix, reclassify_target
from tests.instant import MODEL_ID, InMemoryStorage, InstantClassifier, top5_of

KEYS = Keys()
MODEL_A = "v1-aaaaaaaaaaaa-11111111"
MODEL_B = "v1-bbbbbbbbbbbb-22222222"


def prediction(video: str, top1: str, fingerprint: str, model_id: str = MODEL_A) -> VideoOutcome:
    return counted(video, fingerprint, model_id, [(top1, 0.9), ("other", 0.1)])


def enqueued(client: redis.Redis, video: str, fingerprint: str, model_id: str | None = None) -> None:
    """What the producer leaves for one video (seen and pending), without a job."""
    client.hset(KEYS.seen(), video, fingerprint)
    client.hset(KEYS.pending(), video, pending_entry(fingerprint, model_id))


def aggregator_dies_holding_every_message(client: redis.Redis) -> None:
    client.delete(KEYS.results_list())


# Finding 3 ------------------------------------------------------------------------------------------


def test_outbox_entries_of_two_versions_and_two_models_never_overwrite_each_other(redis_client: redis.Redis) -> None:
    # b/x.mp4 was replaced (version 2): its live outcome, then a late one of version 1
    enqueued(redis_client, "b/x.mp4", "2:2")
    results.publish(redis_client, KEYS, prediction("b/x.mp4", "juggling", "2:2"))
    results.publish(redis_client, KEYS, prediction("b/x.mp4", "running", "1:1"))
    # b/y.mp4 is reclassified for model B: B's outcome, then one of a consumer still running model A
    enqueued(redis_client, "b/y.mp4", "1:1", MODEL_B)
    results.publish(redis_client, KEYS, prediction("b/y.mp4", "dancing", "1:1", MODEL_B))
    results.publish(redis_client, KEYS, prediction("b/y.mp4", "cooking", "1:1", MODEL_A))
    assert redis_client.hlen(KEYS.outbox()) == 4

    # a retried batch sees what is published: any model's for a job of any model, the named one's else
    assert ledger.unfinished(redis_client, KEYS, {"b/x.mp4": "2:2", "b/y.mp4": "1:1"}, None) == {}
    assert ledger.unfinished(redis_client, KEYS, {"b/y.mp4": "1:1"}, MODEL_B) == {}
    assert ledger.unfinished(redis_client, KEYS, {"b/x.mp4": "2:2"}, MODEL_B) == {"b/x.mp4": "2:2"}

    aggregator_dies_holding_every_message(redis_client)
    report = DrainReport()
    recover_unrecorded(redis_client, KEYS, 0, report)

    assert (report.recovered, report.counted, report.stale) == (4, 3, 1)
    assert ledger.pending_count(redis_client, KEYS) == 0
    assert redis_client.hlen(KEYS.outbox()) == 0
    assert ledger.counts(redis_client, KEYS, MODEL_A) == {"juggling": 1, "cooking": 1}
    assert ledger.counts(redis_client, KEYS, MODEL_B) == {"dancing": 1}


def test_published_outcomes_are_found_whatever_the_video_is_named(redis_client: redis.Redis) -> None:
    names = ["b/we[ir]d *?.mp4", "b/back\\slash ^.mp4", "b/\u00e9t\u00e9 \u52d5\u753b.mp4", "b/plain.mp4"]
    for video in names:
        enqueued(redis_client, video, "1:1")
    for video in names[:-1]:
        results.publish(redis_client, KEYS, prediction(video, "juggling", "1:1", MODEL_B))
    redis_client.hset(KEYS.outbox(), outbox_field("b/plain.mp4x", "1:1", MODEL_B), "{}")  # a longer name
    assert ledger.unfinished(redis_client, KEYS, dict.fromkeys(names, "1:1"), None) == {"b/plain.mp4": "1:1"}


def test_a_failure_without_a_model_leaves_the_outbox_when_recorded(redis_client: redis.Redis) -> None:
    enqueued(redis_client, "b/bad.mp4", "1:1")
    ledger.stage_in_outbox(redis_client, KEYS, failed("b/bad.mp4", "1:1", "cannot decode"))
    recover_unrecorded(redis_client, KEYS, 0, DrainReport())
    assert redis_client.hlen(KEYS.outbox()) == 0 and ledger.pending_count(redis_client, KEYS) == 0
    assert redis_client.hexists(KEYS.failed(), "b/bad.mp4")


# Finding 8 ------------------------------------------------------------------------------------------


def states(client: redis.Redis, video: str) -> dict[str, bool]:
    return {
        "pending": bool(client.hexists(KEYS.pending(), video)),
        "failed": bool(client.hexists(KEYS.failed(), video)),
        **{model: bool(client.hexists(KEYS.predictions(model), video)) for model in (MODEL_A, MODEL_B)},
    }


def test_a_failing_replacement_retracts_the_old_versions_prediction_and_count(redis_client: redis.Redis) -> None:
    enqueued(redis_client, "b/v.mp4", "1:1")
    enqueued(redis_client, "b/w.mp4", "1:1")
    for video in ("b/v.mp4", "b/w.mp4"):
        assert ledger.record(redis_client, KEYS, prediction(video, "juggling", "1:1")) is ledger.RecordResult.RECORDED
    enqueued(redis_client, "b/v.mp4", "1:1", MODEL_B)  # a reclassify: model B counts version 1 too
    ledger.record(redis_client, KEYS, prediction("b/v.mp4", "running", "1:1", MODEL_B))

    enqueued(redis_client, "b/v.mp4", "2:2")  # the file is replaced; its new version cannot be decoded
    failure = failed("b/v.mp4", "2:2", "cannot decode", model_id=MODEL_A)
    assert ledger.record(redis_client, KEYS, failure) is ledger.RecordResult.RECORDED

    assert states(redis_client, "b/v.mp4") == {"pending": False, "failed": True, MODEL_A: False, MODEL_B: False}
    assert ledger.counts(redis_client, KEYS, MODEL_A) == {"juggling": 1}  # b/w.mp4 only
    assert ledger.counts(redis_client, KEYS, MODEL_B) == {}
    # the same failure again, or a late one of the old version, changes nothing
    assert ledger.record(redis_client, KEYS, failure) is ledger.RecordResult.RECORDED
    assert ledger.record(redis_client, KEYS, failed("b/v.mp4", "1:1", "late")) is ledger.RecordResult.STALE
    assert ledger.counts(redis_client, KEYS, MODEL_A) == {"juggling": 1}

    # the new version counted later (a requeue): counted only, its failure cleared
    enqueued(redis_client, "b/v.mp4", "2:2")
    ledger.record(redis_client, KEYS, prediction("b/v.mp4", "dancing", "2:2"))
    assert states(redis_client, "b/v.mp4") == {"pending": False, "failed": False, MODEL_A: True, MODEL_B: False}
    assert ledger.counts(redis_client, KEYS, MODEL_A) == {"juggling": 1, "dancing": 1}


def test_a_failure_retracts_an_old_version_of_a_model_outside_its_batch(
    redis_client: redis.Redis,
) -> None:
    enqueued(redis_client, "b/v.mp4", "1:1")
    late = failed("b/v.mp4", "1:1", "a late failure of the counted version", model_id=MODEL_A)
    batch = [prediction("b/v.mp4", "juggling", "1:1"), late]
    # a failure of the very version counted is ignored: counted stays counted
    recorded = ledger.record_batch(redis_client, KEYS, batch)
    assert recorded == [ledger.RecordResult.RECORDED, ledger.RecordResult.DUPLICATE]
    assert states(redis_client, "b/v.mp4") == {"pending": False, "failed": False, MODEL_A: True, MODEL_B: False}
    enqueued(redis_client, "b/v.mp4", "2:2")
    batch = [failed("b/v.mp4", "2:2", "cannot decode", model_id=MODEL_B)]  # no model of the batch counted it
    assert ledger.record_batch(redis_client, KEYS, batch) == [ledger.RecordResult.RECORDED]
    assert states(redis_client, "b/v.mp4") == {"pending": False, "failed": True, MODEL_A: False, MODEL_B: False}
    assert ledger.counts(redis_client, KEYS, MODEL_A) == {}


# Finding 7 ------------------------------------------------------------------------------------------


def settings_for(redis_url: str, **environ: str) -> Settings:
    return Settings.from_env({"MOMENTS_REDIS_URL": redis_url, "MOMENTS_BUCKET": "b", **environ})


def fail_on_every_attempt(client: redis.Redis, settings: Settings) -> list[Job]:
    """Every queued job fails for good, as its last attempt would leave it: in rq's failed registry,
    and its videos recorded failed through the failure callback, the outbox and the ledger."""
    queue = video_queue(client, settings)
    jobs = queue.jobs
    for job in jobs:
        queue.remove(job)
        job.set_status(JobStatus.FAILED)
        queue.failed_job_registry.add(job, ttl=3600)
        job.retries_left = 0
        on_job_failure(job, client, RuntimeError, RuntimeError("storage said no"), None)
    recover_unrecorded(client, settings.keys, 0, DrainReport())
    return jobs


def test_a_requeue_crashing_half_way_leaves_the_video_failed_and_requeueable(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(redis_url)
    enqueue_videos(redis_client, settings, {"b/v.mp4": "1:1"})
    [job] = fail_on_every_attempt(redis_client, settings)
    assert [record["video"] for record in failures(redis_client, settings)] == ["b/v.mp4"]
    assert ledger.pending_count(redis_client, KEYS) == 0

    def crash(*args: object, **kwargs: object) -> None:
        raise ConnectionError("the requeue's process dies here")

    monkeypatch.setattr(queues, "queue_jobs", crash)  # the step that enqueues the new job
    with pytest.raises(ConnectionError):
        requeue_failed(redis_client, settings, ["v.mp4"])
    monkeypatch.undo()
    # nothing happened: still failed, its rq job still in the failed registry, and requeue-able
    assert [record["video"] for record in failures(redis_client, settings)] == ["b/v.mp4"]
    assert video_queue(redis_client, settings).failed_job_registry.get_job_ids() == [job.id]
    assert ledger.pending_count(redis_client, KEYS) == 0 and video_queue(redis_client, settings).count == 0

    assert requeue_failed(redis_client, settings, ["v.mp4"]) == ["b/v.mp4"]
    assert failures(redis_client, settings) == []
    assert video_queue(redis_client, settings).failed_job_registry.get_job_ids() == []
    assert not redis_client.exists(job.key)
    assert [job_videos(queued.args) for queued in video_queue(redis_client, settings).jobs] == [
        ({"b/v.mp4": "1:1"}, None)
    ]
    assert ledger.pending_count(redis_client, KEYS) == 1


def test_a_failed_reclassify_is_requeued_for_its_model(redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    enqueue_videos(redis_client, settings, {"b/any.mp4": "1:1"})
    enqueue_videos(redis_client, settings, {"b/v.mp4": "1:1", "b/w.mp4": "2:1"}, model_id=MODEL_B)
    fail_on_every_attempt(redis_client, settings)
    assert {record["video"]: record.get("for_model") for record in failures(redis_client, settings)} == {
        "b/any.mp4": None, "b/v.mp4": MODEL_B, "b/w.mp4": MODEL_B,
    }

    assert sorted(requeue_failed(redis_client, settings)) == ["b/any.mp4", "b/v.mp4", "b/w.mp4"]
    requeued: dict[str, str | None] = {}
    for job in video_queue(redis_client, settings).jobs:
        batch, model_id = job_videos(job.args)
        requeued.update(dict.fromkeys(batch, model_id))
    assert requeued == {"b/any.mp4": None, "b/v.mp4": MODEL_B, "b/w.mp4": MODEL_B}
    pending = {text(video): json.loads(entry) for video, entry in redis_client.hgetall(KEYS.pending()).items()}
    assert pending == {
        "b/any.mp4": {"fingerprint": "1:1", "model": None},
        "b/v.mp4": {"fingerprint": "1:1", "model": MODEL_B},
        "b/w.mp4": {"fingerprint": "2:1", "model": MODEL_B},
    }


# Finding 2 ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def unbound() -> Iterator[None]:
    yield
    bind_context(None)


def run_consumer(client: redis.Redis, settings: Settings, classifier: InstantClassifier, storage: InMemoryStorage,
                 hard_deadline_s: float = 3600, idle_exit_s: int = 1) -> ConsumerWorker:
    """One consumer with one real rq worker, on a thread, until idle (``idle_exit_s``) or told to stop."""
    context = WorkerContext(classifier, client, storage, open_results_queue(client, settings),  # type: ignore[arg-type]
                            settings, "exactly-once-test")
    bind_context(context)
    now = time.monotonic()
    worker = ConsumerWorker([video_queue(client, settings)], connection=client, name=f"test-{time.time_ns()}",
                            deadline=now + 3600, hard_deadline=now + hard_deadline_s,
                            lease_s=settings.consumer_lease_s, stop_key=settings.keys.stop_consumers())
    context.workers[worker.name] = worker
    thread = threading.Thread(target=work_until_done, args=(worker, idle_exit_s))
    thread.start()
    thread.join()
    return worker


def record_everything(client: redis.Redis, settings: Settings) -> None:
    """An aggregator's work: the queue, then the outbox."""
    queue = open_results_queue(client, settings)
    while raws := queue.receive(0.1, ledger.MAX_BATCH):
        apply_raws(client, settings.keys, raws, DrainReport())
    recover_unrecorded(client, settings.keys, 0, DrainReport())


def test_a_failure_the_results_queue_refuses_is_still_recorded(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(redis_url, MOMENTS_JOB_RETRIES="0")
    enqueue_videos(redis_client, settings, {"b/v/bad.mp4": "1:1"})

    def refuse(*args: object) -> None:
        raise ConnectionError("the results queue is gone")

    monkeypatch.setattr(results.ResultsQueue, "publish", refuse)
    run_consumer(redis_client, settings, InstantClassifier(), InMemoryStorage(failing={"v/bad.mp4": 1}))
    record_everything(redis_client, settings)
    assert [(record["video"], record["error"]) for record in failures(redis_client, settings)] == [
        ("b/v/bad.mp4", "RuntimeError: injected failure reading v/bad.mp4")
    ]
    assert ledger.pending_count(redis_client, KEYS) == 0


def test_a_failure_callback_that_raises_leaves_the_job_retried_not_the_video_lost(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(redis_url, MOMENTS_JOB_RETRIES="0")
    enqueue_videos(redis_client, settings, {"b/v/bad.mp4": "1:1"})
    broken = {"times": 1}
    stage = ledger.stage_in_outbox

    def refuse(*args: object) -> None:
        raise ConnectionError("the results queue is gone")

    def stage_unless_broken(*args: Any) -> VideoOutcome:
        if broken["times"]:
            broken["times"] -= 1
            raise ConnectionError("Redis refused the outbox write")
        return stage(*args)

    monkeypatch.setattr(results.ResultsQueue, "publish", refuse)
    monkeypatch.setattr(ledger, "stage_in_outbox", stage_unless_broken)
    classifier = InstantClassifier()
    # the video fails on both runs: the job's only attempt, then its retry for the callback's sake
    run_consumer(redis_client, settings, classifier, InMemoryStorage(failing={"v/bad.mp4": 2}))
    record_everything(redis_client, settings)
    assert [record["video"] for record in failures(redis_client, settings)] == ["b/v/bad.mp4"]
    assert ledger.pending_count(redis_client, KEYS) == 0
    assert broken["times"] == 0


def test_an_unreadable_outbox_entry_records_its_pending_video_failed(redis_client: redis.Redis) -> None:
    enqueued(redis_client, "b/v.mp4", "2:2", MODEL_B)
    enqueued(redis_client, "b/done.mp4", "1:1")
    redis_client.hset(KEYS.outbox(), outbox_field("b/v.mp4", "2:2", MODEL_B), "{not json")
    redis_client.hset(KEYS.outbox(), "b/stray.mp4", '{"schema": 1, "video": 3}')  # no outbox_field: names no video
    redis_client.hset(KEYS.outbox(), outbox_field("b/v.mp4", "1:1", MODEL_B), "{stale")  # not the version pending
    ledger.record(redis_client, KEYS, prediction("b/done.mp4", "juggling", "1:1"))
    redis_client.hset(KEYS.outbox(), outbox_field("b/done.mp4", "1:1", MODEL_A), "[]")  # recorded meanwhile
    report = DrainReport()
    recover_unrecorded(redis_client, KEYS, 0, report)

    assert report.dead_letters == 4 and redis_client.hlen(KEYS.dead_letters()) == 4
    assert redis_client.hlen(KEYS.outbox()) == 0 and ledger.pending_count(redis_client, KEYS) == 0
    recorded = {record["video"]: record for record in map(json.loads, redis_client.hvals(KEYS.failed()))}
    assert sorted(recorded) == ["b/v.mp4"]
    assert recorded["b/v.mp4"]["fingerprint"] == "2:2" and recorded["b/v.mp4"]["model_id"] == MODEL_B
    assert recorded["b/v.mp4"]["error"].startswith("its outcome could not be read (payload is not JSON")
    assert ledger.counts(redis_client, KEYS, MODEL_A) == {"juggling": 1}


def test_reclassify_for_a_model_nobody_runs_or_counted_is_refused(redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    with pytest.raises(ConfigError, match="not a model any live consumer runs") as refused:
        enqueue_prefix(settings, "videos/", reclassify=True, model_id="v1-typo")
    assert "known: none yet" in refused.value.message and "start consumers with that model" in refused.value.fix
    assert video_queue(redis_client, settings).count == 0

    ledger.record(redis_client, KEYS, prediction("b/v.mp4", "juggling", "1:1", MODEL_A))  # MODEL_A has counted
    assert reclassify_target(settings, MODEL_A, redis_client) == MODEL_A

    context = WorkerContext(InstantClassifier(), redis_client, InMemoryStorage(),  # type: ignore[arg-type]
                            open_results_queue(redis_client, settings), settings, "live")
    bind_context(context)
    now = time.monotonic()
    live = ConsumerWorker([video_queue(redis_client, settings)], connection=redis_client, name="live-consumer",
                          deadline=now + 60, hard_deadline=now + 60, lease_s=30,
                          stop_key=settings.keys.stop_consumers())
    live.register_birth()
    assert live_consumer_models(redis_client, settings) == {MODEL_ID}
    assert reclassify_target(settings, MODEL_ID, redis_client) == MODEL_ID  # a live consumer runs it
    with pytest.raises(ConfigError, match=f"known: {MODEL_ID}, {MODEL_A}"):
        reclassify_target(settings, MODEL_B, redis_client)
    live.register_death()
    assert live_consumer_models(redis_client, settings) == set()


# Finding 5 ------------------------------------------------------------------------------------------


def test_a_time_limit_cut_with_no_retries_hands_the_video_back_not_failed(
    redis_client: redis.Redis, redis_url: str
) -> None:
    settings = settings_for(redis_url, MOMENTS_JOB_RETRIES="0")
    enqueue_videos(redis_client, settings, {"b/v/long.mp4": "1:1"})
    seen_meta: list[dict] = []

    def busy_until_cut(video: str) -> None:
        job = get_current_job()
        assert job is not None
        seen_meta.append(Job.fetch(job.id, connection=redis_client, serializer=JOB_SERIALIZER).meta)
        if len(seen_meta) > 1:
            return  # the second attempt finishes at once
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:  # a long decode, until the function's time limit cuts it
            time.sleep(0.01)

    classifier = InstantClassifier(before=busy_until_cut)
    # the function's time limit (less its exit slack) comes 1 s after the start: the job is cut there
    run_consumer(redis_client, settings, classifier, InMemoryStorage(), hard_deadline_s=1.5)
    record_everything(redis_client, settings)

    assert classifier.calls == {"b/v/long.mp4": 2}
    assert seen_meta == [{}, {"time_limit_cuts": 1}]
    assert failures(redis_client, settings) == []
    assert ledger.counts(redis_client, KEYS, MODEL_ID) == {top5_of("b/v/long.mp4")[0][0]: 1}
    assert ledger.pending_count(redis_client, KEYS) == 0


# Finding 4 ------------------------------------------------------------------------------------------


def test_a_video_its_batch_mates_kept_from_its_attempts_gets_a_job_of_its_own(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MOMENTS_RETRY_INTERVALS=0: rq retries at once, not 5 s and 30 s later
    settings = settings_for(redis_url, MOMENTS_JOB_BATCH="2", MOMENTS_JOB_RETRIES="1", MOMENTS_RETRY_INTERVALS="0")
    enqueue_videos(redis_client, settings, {"b/v/a.mp4": "1:1", "b/v/b.mp4": "1:1"})

    def stop_once_b_is_classified(video: str) -> None:
        if video == "b/v/b.mp4":
            redis_client.set(settings.keys.stop_consumers(), "1")

    classifier = InstantClassifier(before=stop_once_b_is_classified)
    # attempt 1 fails at a (b never tried); attempt 2, rq's retry, publishes a and fails at b:
    # b was tried once of the batch's two attempts, so it is tried again alone, not failed
    storage = InMemoryStorage(failing={"v/a.mp4": 1, "v/b.mp4": 1})
    worker = run_consumer(redis_client, settings, classifier, storage, idle_exit_s=10)
    record_everything(redis_client, settings)

    assert worker.exit_reason == "stopped"
    assert failures(redis_client, settings) == []
    assert classifier.calls == {"b/v/a.mp4": 1, "b/v/b.mp4": 1}
    assert ledger.counts(redis_client, KEYS, MODEL_ID) == collections.Counter(
        top5_of(video)[0][0] for video in ("b/v/a.mp4", "b/v/b.mp4")
    )
    assert ledger.pending_count(redis_client, KEYS) == 0


def test_a_video_tried_on_every_attempt_of_its_batch_fails_at_once(redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url, MOMENTS_JOB_BATCH="2", MOMENTS_JOB_RETRIES="0")
    enqueue_videos(redis_client, settings, {"b/v/a.mp4": "1:1", "b/v/b.mp4": "1:1"})
    storage = InMemoryStorage(failing={"v/b.mp4": 5})
    worker = run_consumer(redis_client, settings, InstantClassifier(), storage)
    record_everything(redis_client, settings)
    assert worker.jobs_run == 1 and storage.failing == {"v/b.mp4": 4}
    assert [record["video"] for record in failures(redis_client, settings)] == ["b/v/b.mp4"]
    assert ledger.pending_count(redis_client, KEYS) == 0


# Finding 1 ------------------------------------------------------------------------------------------


def test_a_threaded_consumer_records_a_job_abandoned_on_its_last_attempt(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Decode threads run rq's maintenance off the main thread, where rq's registries could not time
    the failure callback (SIGALRM): the callback never ran, and the video stayed pending."""
    settings = settings_for(redis_url, MOMENTS_JOB_RETRIES="0")
    enqueue_videos(redis_client, settings, {"b/v/killer.mp4": "1:1"})
    queue = video_queue(redis_client, settings)
    [job] = queue.jobs
    queue.remove(job)
    job.set_status(JobStatus.STARTED)
    # what a consumer killed mid-video leaves once its lease has lapsed: an expired started entry
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:dead-execution": 0})
    context = WorkerContext(InstantClassifier(), redis_client, InMemoryStorage(),  # type: ignore[arg-type]
                            open_results_queue(redis_client, settings), settings, "threaded")
    bind_context(context)
    now = time.monotonic()
    worker = ConsumerWorker([queue], connection=redis_client, name="threaded-0", deadline=now + 60,
                            hard_deadline=now + 60, lease_s=30, stop_key=settings.keys.stop_consumers())
    cleaner = threading.Thread(target=worker.clean_registries, name="decode-thread-1")
    cleaner.start()
    cleaner.join()
    record_everything(redis_client, settings)

    [record] = failures(redis_client, settings)
    assert record["video"] == "b/v/killer.mp4" and record["error"].startswith("its consumer died while classifying")
    assert ledger.pending_count(redis_client, KEYS) == 0
    assert queue.failed_job_registry.get_job_ids() == [job.id]


# Finding 9 ------------------------------------------------------------------------------------------


def test_settings_that_change_predictions_change_the_model_id(base_settings: Settings) -> None:
    from consumer.classify import configured_model_id, load_classifier, prediction_variant

    default = load_classifier(base_settings, progress=False)
    eight = load_classifier(base_settings.replace(num_frames=8), progress=False)
    assert default.model_id == configured_model_id(base_settings)  # the release's settings: the id as before
    assert not default.model_id.endswith(("-16f", "-fp32"))
    assert eight.model_id == default.model_id + "-8f" == configured_model_id(base_settings.replace(num_frames=8))
    assert configured_model_id(base_settings.replace(precision="bf16")) == default.model_id + "-bf16"
    assert prediction_variant(4, "fp16") == "-4f-fp16" and prediction_variant(16, "fp32") == ""
