"""A consumer cut off past its lease comes back and finishes a job that another consumer took over,
finished and deleted meanwhile (jobs keep no result: ``result_ttl=0``). Its late success must end
as the duplicate it is: never a failed attempt, never a retry that classifies the video again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from rq import get_current_job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from aggregator.drain import DrainReport, apply_raws
from consumer.context import WorkerContext, bind_context
from consumer.worker import ConsumerWorker, work_until_done
from moments_stream import ledger, outcome, results
from moments_stream.queues import enqueue_videos, video_queue
from moments_stream.results import open_results_queue
from moments_stream.settings import Settings
from tests.instant import MODEL_ID, InMemoryStorage, InstantClassifier, top5_of

VIDEO = "late/v/taken-over.mp4"


@pytest.fixture()
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings.from_env({"MOMENTS_REDIS_URL": redis_url, "MOMENTS_BUCKET": "late", "MOMENTS_JOB_RETRIES": "2"})


@pytest.fixture(autouse=True)
def unbound() -> Iterator[None]:
    yield
    bind_context(None)


def record_all(client: redis.Redis, settings: Settings) -> DrainReport:
    report = DrainReport()
    queue = open_results_queue(client, settings)
    while raws := queue.receive(0.1, ledger.MAX_BATCH):
        apply_raws(client, settings.keys, raws, report)
    return report


def test_a_late_success_of_a_job_finished_elsewhere_is_one_duplicate_and_no_retry(
    redis_client: redis.Redis, settings: Settings
) -> None:
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"})
    queue = video_queue(redis_client, settings)
    job_id = queue.job_ids[0]

    def taken_over_and_finished_elsewhere(video: str) -> None:
        """While this worker holds the video, worker 2 (which took the job over when this one's
        lease lapsed) classifies it, its outcome is recorded, and rq deletes the finished job."""
        other = outcome.counted(video, "1:1", MODEL_ID, top5_of(video), worker="worker-2")
        results.publish_many(redis_client, settings.keys, [other])
        assert record_all(redis_client, settings).counted == 1
        job = get_current_job()
        assert job is not None and job.id == job_id
        job.delete()

    classifier = InstantClassifier(before=taken_over_and_finished_elsewhere)
    context = WorkerContext(classifier, redis_client, InMemoryStorage(),  # type: ignore[arg-type]
                            open_results_queue(redis_client, settings), settings, "late-test")
    bind_context(context)
    forever = time.monotonic() + 3600
    worker = ConsumerWorker([queue], connection=redis_client, name=f"late-test-{time.time_ns()}", deadline=forever,
                            hard_deadline=forever, lease_s=settings.consumer_lease_s,
                            stop_key=settings.keys.stop_consumers())
    context.workers[worker.name] = worker
    thread = threading.Thread(target=work_until_done, args=(worker, 1))
    thread.start()
    thread.join()

    report = record_all(redis_client, settings)
    assert (report.counted, report.duplicates, report.failed) == (0, 1, 0)
    assert classifier.calls == {VIDEO: 1}
    # no retry anywhere, and nothing of the job left behind
    assert queue.count == 0
    for registry in (ScheduledJobRegistry, StartedJobRegistry, FailedJobRegistry):
        assert registry(queue.name, connection=redis_client).count == 0, registry.__name__
    assert not redis_client.exists(f"rq:job:{job_id}")
    assert ledger.counts(redis_client, settings.keys, MODEL_ID) == {top5_of(VIDEO)[0][0]: 1}
    assert ledger.pending_count(redis_client, settings.keys) == 0
