"""Jobs that carry several videos (``MOMENTS_JOB_BATCH``), run by a real rq ``ConsumerWorker`` in
this process against a real Redis, with an instant classifier: a retried batch classifies only
what it had not published, a batch failing on every attempt splits into single videos, and a
consumer told to stop hands the rest of its batch back. Per-video outcomes stay exactly as with
one video a job."""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aggregator.drain import DrainReport, apply_raws
from consumer import hooks
from consumer.context import WorkerContext, bind_context
from consumer.outcome_buffer import OutcomeBuffer
from consumer.worker import ConsumerWorker, work_until_done
from moments_stream import ledger, outcome, results
from moments_stream.errors import ConfigError
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome
from moments_stream.queues import enqueue_videos, job_videos, video_queue
from moments_stream.results import open_results_queue
from moments_stream.settings import MAX_PUBLISH_LINGER_MS, Settings
from tests.barrier import BARRIER_ENV, install, remove, with_barrier
from tests.instant import MODEL_ID, InMemoryStorage, InstantClassifier, top5_of

BUCKET = "batches"


def videos(count: int) -> dict[str, str]:
    return {f"{BUCKET}/v/{index:02d}.mp4": f"{index}:1" for index in range(count)}


@pytest.fixture()
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings.from_env({"MOMENTS_REDIS_URL": redis_url, "MOMENTS_BUCKET": BUCKET, "MOMENTS_JOB_BATCH": "4"})


@pytest.fixture(autouse=True)
def unbound() -> Iterator[None]:
    yield
    bind_context(None)


def run_consumer(client: redis.Redis, settings: Settings, classifier: InstantClassifier, storage: InMemoryStorage,
                 idle_exit_s: int = 1) -> ConsumerWorker:
    """One consumer with one rq worker, on a thread (rq leaves signal handlers alone there), until idle."""
    context = WorkerContext(classifier, client, storage, open_results_queue(client, settings), settings,  # type: ignore[arg-type]
                            "batch-test")
    bind_context(context)
    forever = time.monotonic() + 3600
    worker = ConsumerWorker([video_queue(client, settings)], connection=client, name=f"batch-test-{time.time_ns()}",
                            deadline=forever, hard_deadline=forever, lease_s=settings.consumer_lease_s,
                            stop_key=settings.keys.stop_consumers())
    context.workers[worker.name] = worker
    thread = threading.Thread(target=work_until_done, args=(worker, idle_exit_s))
    thread.start()
    thread.join()
    return worker


def record_all(client: redis.Redis, settings: Settings) -> None:
    """What an aggregator does with everything published so far (and no more: it does not wait)."""
    queue = open_results_queue(client, settings)
    while raws := queue.receive(0.1, ledger.MAX_BATCH):
        apply_raws(client, settings.keys, raws, DrainReport())


def expected_counts(names: list[str]) -> collections.Counter[str]:
    return collections.Counter(top5_of(name)[0][0] for name in names)


def test_videos_go_to_jobs_in_batches(redis_client: redis.Redis, settings: Settings) -> None:
    enqueue_videos(redis_client, settings, videos(10))
    jobs = video_queue(redis_client, settings).jobs
    assert [len(job_videos(job.args)[0]) for job in jobs] == [4, 4, 2]
    assert [job.timeout for job in jobs] == [size * settings.job_timeout_s for size in (4, 4, 2)]
    assert job_videos(jobs[0].args) == ({name: videos(10)[name] for name in list(videos(10))[:4]}, None)


def test_a_batch_counts_each_video_once(redis_client: redis.Redis, settings: Settings) -> None:
    batch = videos(10)
    enqueue_videos(redis_client, settings, batch)
    classifier = InstantClassifier()
    worker = run_consumer(redis_client, settings, classifier, InMemoryStorage())
    record_all(redis_client, settings)
    assert worker.jobs_run == 3 and set(classifier.calls.values()) == {1}
    assert ledger.counts(redis_client, settings.keys, MODEL_ID) == expected_counts(list(batch))
    assert ledger.pending_count(redis_client, settings.keys) == 0


def test_a_retried_batch_classifies_only_what_it_had_not_published(
    redis_client: redis.Redis, settings: Settings
) -> None:
    settings = settings.replace(job_retries=2, retry_intervals="0")  # retried as soon as the consumer polls
    batch = videos(4)
    names = list(batch)
    enqueue_videos(redis_client, settings, batch)

    def stop_at_the_last(video: str) -> None:  # the retry has run: the consumer may go
        if video == names[-1]:
            redis_client.set(settings.keys.stop_consumers(), "1")

    classifier = InstantClassifier(before=stop_at_the_last)
    # the third video's first read fails: the batch fails there, after publishing the first two
    storage = InMemoryStorage(failing={"v/02.mp4": 1})
    run_consumer(redis_client, settings, classifier, storage, idle_exit_s=120)
    record_all(redis_client, settings)
    assert classifier.calls == {name: 1 for name in names}
    assert ledger.counts(redis_client, settings.keys, MODEL_ID) == expected_counts(names)
    assert redis_client.hlen(settings.keys.failed()) == 0


def test_a_batch_failing_on_every_attempt_splits_and_only_the_culprit_fails(
    redis_client: redis.Redis, settings: Settings
) -> None:
    settings = settings.replace(job_retries=0)
    batch = videos(4)
    names = list(batch)
    enqueue_videos(redis_client, settings, batch)
    classifier = InstantClassifier()
    storage = InMemoryStorage(failing={"v/01.mp4": 2})  # fails in the batch, and again alone
    worker = run_consumer(redis_client, settings, classifier, storage)
    record_all(redis_client, settings)
    # the batch (video 0 published, then failing at video 1), then one job each for videos 1, 2, 3
    assert worker.jobs_run == 4
    assert classifier.calls == {names[0]: 1, names[2]: 1, names[3]: 1}
    failed = {video.decode() for video in redis_client.hkeys(settings.keys.failed())}
    assert failed == {names[1]}
    assert "injected failure reading v/01.mp4" in redis_client.hget(settings.keys.failed(), names[1]).decode()
    good = [names[0], names[2], names[3]]
    assert ledger.counts(redis_client, settings.keys, MODEL_ID) == expected_counts(good)
    assert ledger.pending_count(redis_client, settings.keys) == 0


def test_a_consumer_told_to_stop_hands_the_rest_of_its_batch_back(
    redis_client: redis.Redis, settings: Settings
) -> None:
    batch = videos(4)
    names = list(batch)
    enqueue_videos(redis_client, settings, batch)

    def stop_after_the_first(video: str) -> None:
        if video == names[0]:
            redis_client.set(settings.keys.stop_consumers(), "1")

    classifier = InstantClassifier(before=stop_after_the_first)
    worker = run_consumer(redis_client, settings, classifier, InMemoryStorage())
    assert worker.exit_reason == "stopped" and classifier.calls == {names[0]: 1}
    (handed_back,) = video_queue(redis_client, settings).jobs
    assert job_videos(handed_back.args) == ({name: batch[name] for name in names[1:]}, None)

    redis_client.delete(settings.keys.stop_consumers())
    run_consumer(redis_client, settings, classifier, InMemoryStorage())
    record_all(redis_client, settings)
    assert classifier.calls == {name: 1 for name in names}
    assert ledger.counts(redis_client, settings.keys, MODEL_ID) == expected_counts(names)


def test_a_batch_publishes_its_outcomes_together_unless_told_to_publish_each(
    redis_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[int] = []
    publish_many = results.publish_many

    def recorded(client: redis.Redis, keys: Keys, outcomes: list[VideoOutcome], expiry_s: int) -> None:
        published.append(len(outcomes))
        publish_many(client, keys, outcomes, expiry_s)

    monkeypatch.setattr(results, "publish_many", recorded)
    batch = videos(10)
    enqueue_videos(redis_client, settings, batch)
    # instant videos never wait the longest linger: each batch goes out in one round trip at its end
    run_consumer(redis_client, settings.replace(publish_linger_ms=MAX_PUBLISH_LINGER_MS), InstantClassifier(),
                 InMemoryStorage())
    assert published == [4, 4, 2]

    published.clear()
    redis_client.delete(settings.keys.seen())
    enqueue_videos(redis_client, settings, {name: "2:2" for name in batch})  # a new version of each
    run_consumer(redis_client, settings.replace(publish_linger_ms=0), InstantClassifier(), InMemoryStorage())
    assert published == [1] * 10
    record_all(redis_client, settings)
    assert ledger.counts(redis_client, settings.keys, MODEL_ID) == expected_counts(list(batch))


def test_outcomes_wait_no_longer_than_the_linger(redis_client: redis.Redis, settings: Settings) -> None:
    now = [100.0]
    context = WorkerContext(InstantClassifier(), redis_client, InMemoryStorage(),  # type: ignore[arg-type]
                            open_results_queue(redis_client, settings), settings, "linger-test")
    buffer = OutcomeBuffer(context, clock=lambda: now[0])
    for index, at in enumerate((100.0, 100.5, 100.999)):
        now[0] = at
        buffer.add(outcome.failed(f"{BUCKET}/{index}.mp4", "1:1", "x", model_id=MODEL_ID))
    assert redis_client.llen(settings.keys.results_list()) == 0 and len(buffer.outcomes) == 3
    now[0] = 101.0  # the first has waited the linger (1000 ms): all four go out
    buffer.add(outcome.failed(f"{BUCKET}/3.mp4", "1:1", "x", model_id=MODEL_ID))
    assert redis_client.llen(settings.keys.results_list()) == 4 and buffer.outcomes == []
    now[0] = 200.0  # the next one starts a new wait
    buffer.add(outcome.failed(f"{BUCKET}/4.mp4", "1:1", "x", model_id=MODEL_ID))
    assert redis_client.llen(settings.keys.results_list()) == 4
    buffer.flush()
    assert redis_client.llen(settings.keys.results_list()) == 5 and redis_client.hlen(settings.keys.outbox()) == 5


@pytest.mark.parametrize(
    ("name", "value", "fix"),
    [("MOMENTS_JOB_BATCH", "0", "e.g. 64 for GPU consumers"), ("MOMENTS_JOB_BATCH", "1001", "up to 1000"),
     ("MOMENTS_PUBLISH_LINGER_MS", "-1", "0 \\(publish each outcome at once\\)"),
     ("MOMENTS_PUBLISH_LINGER_MS", "60001", "up to 60000")],
)
def test_batch_settings_out_of_range_are_refused_with_the_fix(name: str, value: str, fix: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}={value} is out of range") as refused:
        Settings.from_env({name: value})
    assert re.search(fix, refused.value.fix)


# --- the hook point the fault tests' barrier uses (consumer.hooks; tests/barrier.py) --------------


def test_a_before_publish_hook_holds_a_video_with_the_rest_of_its_batch_published(
    redis_client: redis.Redis, settings: Settings, tmp_path
) -> None:
    """The barrier, installed in this process through the product's hook point: the consumer stops
    before publishing the held video, with its batch-mates before it already published; released,
    it publishes it and goes on."""
    settings = settings.replace(publish_linger_ms=MAX_PUBLISH_LINGER_MS)  # nothing published early by itself
    batch = videos(4)
    names = list(batch)
    enqueue_videos(redis_client, settings, batch)
    held = tmp_path / "hold-02.mp4"
    held.touch()
    barrier = install(tmp_path)
    try:
        consumer = threading.Thread(target=run_consumer,
                                    args=(redis_client, settings, InstantClassifier(), InMemoryStorage()))
        consumer.start()
        reached = tmp_path / "reached-02.mp4"
        while not reached.exists():  # the consumer holds 02.mp4 (no clock: the file says so)
            consumer.join(0.05)
            assert consumer.is_alive(), "the consumer finished without holding the video"
        published = {results.decode(raw).video for raw in redis_client.lrange(settings.keys.results_list(), 0, -1)}
        assert published == set(names[:2])  # the two before it, and neither 02 nor 03
        assert reached.read_text().strip().isdigit()
        held.unlink()
        consumer.join()
    finally:
        remove(barrier)
    record_all(redis_client, settings)
    assert ledger.counts(redis_client, settings.keys, MODEL_ID) == expected_counts(names)
    assert hooks.before_publish == []


HOOKS_IN_A_NEW_PROCESS = "from consumer import hooks; print(len(hooks.before_publish))"


def test_a_process_started_with_the_barrier_has_it_and_one_without_has_no_hook(tmp_path) -> None:
    """What the fault tests' consumers get (``with_barrier``: a test-only ``sitecustomize`` on the path),
    and what the product gets by itself: no hook at all."""
    plain = {name: value for name, value in os.environ.items() if name not in (BARRIER_ENV, "PYTHONPATH")}
    without = subprocess.run([sys.executable, "-c", HOOKS_IN_A_NEW_PROCESS], env=plain, capture_output=True,
                             text=True, check=True)
    with_it = subprocess.run([sys.executable, "-c", HOOKS_IN_A_NEW_PROCESS], env=with_barrier(plain, tmp_path),
                             capture_output=True, text=True, check=True)
    assert (without.stdout.strip(), with_it.stdout.strip()) == ("0", "1")


def test_the_product_carries_no_test_code() -> None:
    """The barrier lives in tests/ alone: no product module names it, its variable or a test hook."""
    repo = Path(__file__).resolve().parents[1]
    sources = [path for package in ("moments_stream", "producer", "consumer", "aggregator", "pipeline")
               for path in (repo / package).rglob("*.py")]
    words = re.compile(r"TEST_BARRIER|test_barrier|hold_for_test|is_held_for_test|barrier_dir")
    assert [str(path.relative_to(repo)) for path in sources if words.search(path.read_text())] == []
    assert "test_barrier_dir" not in {field.name for field in dataclasses.fields(Settings)}
