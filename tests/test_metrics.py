"""Prometheus metrics against a real Redis, scraped over HTTP from the real commands
(``aggregator metrics --port 0`` and ``aggregator run --metrics-port 0``) and parsed with
prometheus_client's own parser: every value equals ``aggregator status --json`` for the same state,
and the stage histograms count each outcome the ledger recorded once (never a duplicate or a stale
version)."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rq import SimpleWorker

from aggregator.drain import BUCKET_LABELS, DrainReport, apply_batch
from moments_stream import results
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome, counted, failed
from moments_stream.queues import JOB_SERIALIZER, enqueue_videos, video_queue
from moments_stream.settings import TIMED_STAGES, Settings
from tests.pipeline import Started, run, start, wait_until

CURRENT = "v1-bbbbbbbbbbbb-11111111"  # recorded last, and ahead of OTHER on a tie of the models' times
OTHER = "v1-aaaaaaaaaaaa-11111111"
DEADLINE_S = 60
URL = re.compile(r"serving metrics on (http://\S+/metrics)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def prediction(video: str, top1: str, model: str = CURRENT, ms: tuple[float, float, float] = (4.0, 30.0, 200.0),
               fingerprint: str = "1:1") -> VideoOutcome:
    download, decode, infer = ms
    return counted(video, fingerprint, model, [(top1, 0.7), ("other", 0.3)], worker="w1", download_ms=download,
                   decode_ms=decode, infer_ms=infer)


def record(client: redis.Redis, *outcomes: VideoOutcome) -> DrainReport:
    report = DrainReport()
    apply_batch(client, Keys(), list(outcomes), report)
    return report


@pytest.fixture()
def env(redis_url: str, redis_client: redis.Redis) -> dict[str, str]:
    return dict(os.environ, MOMENTS_REDIS_URL=redis_url, MOMENTS_EMBEDDED_REDIS="0")


@pytest.fixture()
def settings(redis_url: str) -> Settings:
    return Settings.from_env({}).replace(redis_url=redis_url)


def served(process: Started) -> str:
    """The URL a command started with port 0 printed."""
    found: list[str] = []

    def printed() -> bool:
        found[:] = URL.findall(process.output()[0])
        return bool(found) or process.poll() is not None

    wait_until(printed, DEADLINE_S, "the metrics URL")
    assert found, process.output()
    return found[0]


@pytest.fixture()
def stopped_at_end() -> Iterator[list[Started]]:
    processes: list[Started] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def status_json(env: dict[str, str]) -> dict[str, Any]:
    done = run(env, "aggregator", "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def histogram(samples: Samples, stage: str) -> dict[str, Any]:
    name = "moments_stage_duration_seconds"
    return {
        "buckets": {label: value(samples, f"{name}_bucket", stage=stage, le=label) for label in BUCKET_LABELS},
        "sum": value(samples, f"{name}_sum", stage=stage),
        "count": value(samples, f"{name}_count", stage=stage),
    }


def assert_equal_to_status(samples: Samples, status: dict[str, Any]) -> None:
    """Every figure that does not move with the clock, equal to the status document."""
    gauges = {
        "moments_videos_failed": "failed", "moments_videos_pending": "pending", "moments_jobs_queued": "queued",
        "moments_jobs_in_flight": "in_flight", "moments_jobs_retry_scheduled": "retry_scheduled",
        "moments_outcomes_awaiting_aggregator": "awaiting_aggregator",
        "moments_results_queue_messages": "results_queued", "moments_dead_letters": "dead_letters",
        "moments_workers_alive": "workers_alive",
    }
    assert {name: value(samples, name) for name in gauges} == {name: status[field] for name, field in gauges.items()}
    assert value(samples, "moments_current_model_info", model=status["model"]) == 1
    counted_by_model = {dict(labels)["model"]: number for (name, labels), number in samples.items()
                        if name == "moments_videos_counted_total"}
    assert counted_by_model == status["counted_by_model"]
    assert counted_by_model[status["model"]] == status["counted"]
    categories = {dict(labels)["category"]: number for (name, labels), number in samples.items()
                  if name == "moments_category_videos" and dict(labels)["model"] == status["model"]}
    assert categories == status["counts"]
    for action in ("requeued", "failed"):
        assert value(samples, "moments_reconciled_videos_total", action=action) == status["reconciled"][action]
    assert value(samples, "moments_reconcile_watched_videos") == status["reconciled"]["watched"]
    for stage in TIMED_STAGES:
        served, expected = histogram(samples, stage), status["stage_seconds"][stage]
        assert (served["buckets"], served["count"]) == (expected["buckets"], expected["count"]), stage
        assert served["sum"] == pytest.approx(expected["sum"]), stage


def between(sample: float | None, before: float | None, after: float | None) -> bool:
    """A figure that moves one way with the clock, read between two snapshots of it."""
    if sample is None:
        return before is None or after is None
    known = [figure for figure in (before, after) if figure is not None]
    return min(known) - 1e-9 <= sample <= max(known) + 1e-9


def test_stage_histograms_count_recorded_outcomes_only(redis_client: redis.Redis) -> None:
    keys = Keys()
    first = [prediction("v/0.mp4", "juggling", ms=(3.0, 20.0, 150.0)),
             prediction("v/1.mp4", "running", ms=(700.0, 4000.0, 90_000.0)),
             failed("v/2.mp4", "1:1", "cannot decode", "w1", CURRENT)]  # no timings: nothing to observe
    assert record(redis_client, *first).received == 3
    again = record(redis_client, first[0], first[1])  # duplicates: ignored by the ledger, not observed
    assert again.duplicates == 2
    redis_client.hset(keys.seen(), "v/3.mp4", "2:2")  # a newer version was enqueued: the old one's is stale
    assert record(redis_client, prediction("v/3.mp4", "juggling", fingerprint="1:1")).stale == 1

    def fields(stage: str) -> dict[str, str]:
        return {name.decode(): raw.decode() for name, raw in redis_client.hgetall(keys.stage_seconds(stage)).items()}

    infer = fields("infer")
    assert infer["count"] == infer["+Inf"] == "2" and float(infer["sum"]) == pytest.approx(90.15)
    assert [infer.get(label, "0") for label in ("0.1", "0.25", "60.0", "120.0")] == ["0", "1", "1", "2"]
    download = fields("download")
    assert [download.get(label, "0") for label in ("0.005", "0.5", "1.0")] == ["1", "1", "2"]
    assert float(download["sum"]) == pytest.approx(0.703)


def test_metrics_served_alone_equal_status_json(
    env: dict[str, str], settings: Settings, redis_client: redis.Redis, stopped_at_end: list[Started]
) -> None:
    keys = Keys()
    enqueue_videos(redis_client, settings, {f"v/{i}.mp4": "1:1" for i in range(8)})
    record(redis_client, prediction("v/0.mp4", "juggling", OTHER))
    record(redis_client, prediction("v/0.mp4", "juggling"), prediction("v/1.mp4", "juggling", ms=(900.0, 2.0, 7.0)),
           prediction("v/2.mp4", "running"), failed("v/3.mp4", "1:1", "cannot decode", "w1", CURRENT))
    record(redis_client, prediction("v/1.mp4", "juggling"))  # a duplicate
    results.dead_letter(redis_client, keys, results.MalformedMessage("not JSON", "garbage"))
    results.publish_many(redis_client, keys, [prediction("v/4.mp4", "running")])  # waiting for an aggregator
    redis_client.hset(keys.reconcile_totals(), mapping={"requeued": 2, "failed": 1})
    queue = video_queue(redis_client, settings)
    busy = SimpleWorker([queue], connection=redis_client, name="busy-consumer", serializer=JOB_SERIALIZER)
    busy.register_birth()
    job, _ = queue.dequeue_any([queue], timeout=None, connection=redis_client, serializer=JOB_SERIALIZER)
    busy.prepare_execution(job)

    process = start(env, "aggregator", "metrics", "--port", "0", "--addr", "127.0.0.1")
    stopped_at_end.append(process)
    url = served(process)
    before = status_json(env)
    samples = scrape(url)
    after = status_json(env)

    assert_equal_to_status(samples, before)
    assert before["counted_by_model"] == {CURRENT: 3, OTHER: 1} and before["counts"] == {"juggling": 2, "running": 1}
    assert (before["failed"], before["dead_letters"], before["results_queued"], before["awaiting_aggregator"],
            before["workers_alive"], before["in_flight"]) == (1, 1, 1, 1, 1, 1)
    assert before["stage_seconds"]["infer"]["count"] == 4  # every recorded outcome, of either model, once
    assert value(samples, "moments_redis_up") == 1
    for name, field in (("moments_throughput_videos_per_second", "throughput_per_s"),
                        ("moments_eta_seconds", "eta_s"), ("moments_drain_lag_seconds", "drain_lag_s")):
        assert between(value(samples, name), before[field], after[field]), (name, before[field], after[field])
    assert before["drain_lag_s"] is not None and before["drain_lag_s"] >= 0

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE_S) == 0, process.output()


def test_aggregator_run_serves_the_same_metrics_while_it_drains(
    env: dict[str, str], redis_client: redis.Redis, stopped_at_end: list[Started]
) -> None:
    keys = Keys()
    process = start(env, "aggregator", "run", "--metrics-port", "0", "--metrics-addr", "127.0.0.1")
    stopped_at_end.append(process)
    url = served(process)
    outcomes = [prediction("v/0.mp4", "juggling"), prediction("v/1.mp4", "running"),
                prediction("v/2.mp4", "juggling", ms=(50.0, 60.0, 70.0))]
    results.publish_many(redis_client, keys, outcomes)

    def drained(expected: int) -> bool:
        samples = scrape(url)
        return (value(samples, "moments_videos_counted_total", model=CURRENT) == 3
                and value(samples, "moments_stage_duration_seconds_count", stage="infer") == expected
                and value(samples, "moments_results_queue_messages") == 0
                and value(samples, "moments_outcomes_awaiting_aggregator") == 0)

    wait_until(lambda: drained(3), DEADLINE_S, "the aggregator to record the outcomes")
    results.publish_many(redis_client, keys, outcomes[:2])  # duplicates: counted once, observed once
    wait_until(lambda: value(scrape(url), "moments_outcomes_awaiting_aggregator") == 0, DEADLINE_S,
               "the duplicates to be drained")
    assert drained(3)
    samples = scrape(url)
    assert_equal_to_status(samples, status_json(env))
    assert histogram(samples, "decode")["buckets"]["0.05"] == 2 and histogram(samples, "decode")["count"] == 3

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE_S) == 0, process.output()
    assert "counted 3, failed 0, duplicates " in process.output()[0]
