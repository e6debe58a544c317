"""The operator's views (status, export, counts per model) against a real Redis and real rq workers.

Each status figure is checked against the raw Redis command the README gives for it.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
import redis
from rq import SimpleWorker

from aggregator.export import COLUMNS, export_row, export_rows, write_rows
from aggregator.status import eta_seconds, format_status, status_document
from moments_stream import ledger
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome, counted, failed
from moments_stream.queues import JOB_SERIALIZER, enqueue_videos, video_queue
from moments_stream.settings import Settings

MODEL = "v1-aaaaaaaaaaaa-11111111"
SYNTHETIC = "synthetic-v1-bbbbbbbbbbbb-11111111"


def prediction(video: str, top1: str, model_id: str = MODEL) -> VideoOutcome:
    top5 = [(top1, 0.6), ("b", 0.2), ("c", 0.1), ("d", 0.05), ("e", 0.05)]
    return counted(video, "1:1", model_id, top5, worker="w1", decode_ms=30.0, infer_ms=300.0, total_ms=340.0,
                   download_ms=5.0, frame_count=90)


@pytest.fixture()
def settings(redis_url: str) -> Settings:
    return Settings.from_env({}).replace(redis_url=redis_url)


def test_status_figures_equal_the_redis_commands(redis_client: redis.Redis, settings: Settings) -> None:
    enqueue_videos(redis_client, settings, {f"v/{i}.mp4": "1:1" for i in range(6)})
    ledger.record(redis_client, Keys(), prediction("v/0.mp4", "juggling"))
    ledger.record(redis_client, Keys(), failed("v/1.mp4", "1:1", "cannot decode", "w1", MODEL))
    queue = video_queue(redis_client, settings)
    # A consumer takes a video exactly as rq does: dequeue, then an execution in the started registry.
    busy = SimpleWorker([queue], connection=redis_client, name="busy-consumer", serializer=JOB_SERIALIZER)
    busy.register_birth()
    job, _ = queue.dequeue_any([queue], timeout=None, connection=redis_client, serializer=JOB_SERIALIZER)
    busy.prepare_execution(job)
    dead = SimpleWorker([queue], connection=redis_client, name="dead-consumer", serializer=JOB_SERIALIZER)
    dead.register_birth()
    redis_client.delete(dead.key)  # its lease lapsed

    document = status_document(redis_client, settings)

    raw = {
        "counted": redis_client.hlen(f"moments:predictions:{MODEL}"),
        "failed": redis_client.hlen("moments:failed"),
        "pending": redis_client.hlen("moments:pending"),
        "queued": redis_client.llen("rq:queue:moments-videos"),
        "in_flight": redis_client.zcard("rq:wip:moments-videos"),
        "retry_scheduled": redis_client.zcard("rq:scheduled:moments-videos"),
        "awaiting_aggregator": redis_client.hlen("moments:outbox"),
        "finished_last_minute": redis_client.zcount("moments:recent", document["redis_time"] - 60, "+inf"),
    }
    assert {name: document[name] for name in raw} == raw
    assert raw == {"counted": 1, "failed": 1, "pending": 4, "queued": 5, "in_flight": 1, "retry_scheduled": 0,
                   "awaiting_aggregator": 0, "finished_last_minute": 2}
    assert document["model"] == MODEL and document["counted_by_model"] == {MODEL: 1}
    assert document["workers_alive"] == 1
    (worker,) = document["workers"]
    assert worker["name"] == "busy-consumer" and worker["video"] == job.args[0][0][0]
    assert worker["heartbeat_age_s"] is not None and worker["heartbeat_age_s"] < 30
    assert document["eta_s"] == pytest.approx(4 / (2 / 60), abs=0.1)
    text = format_status(document)
    assert "pending      4  (rq jobs: queued 5, in flight 1" in text
    assert "busy-consumer" in text and "dead-consumer" not in text


def test_eta() -> None:
    assert eta_seconds(0, 0, 60) == 0.0
    assert eta_seconds(10, 0, 60) is None
    assert eta_seconds(10, 30, 60) == 20.0


def test_status_of_a_synthetic_model_says_so(redis_client: redis.Redis, settings: Settings) -> None:
    ledger.record(redis_client, Keys(), prediction("v/0.mp4", "juggling", SYNTHETIC))
    assert "NOT real predictions" in format_status(status_document(redis_client, settings))


def test_export_streams_one_row_per_prediction(redis_client: redis.Redis) -> None:
    videos = {f"v/{i:04d}.mp4": ("juggling" if i % 3 else "running") for i in range(1200)}
    for video, top1 in videos.items():
        ledger.record(redis_client, Keys(), prediction(video, top1))
    ledger.record(redis_client, Keys(), prediction("v/0000.mp4", "sketching", SYNTHETIC))
    ledger.record(redis_client, Keys(), failed("v/bad.mp4", "2:2", "cannot decode", "w2", MODEL))

    rows = export_rows(redis_client, Keys(), MODEL)
    assert not isinstance(rows, list)
    rows = list(rows)
    assert {row["video"]: row["top1"] for row in rows} == videos  # the other model's row stays out
    assert len(rows) == 1200 and {row["model_id"] for row in rows} == {MODEL}

    out = io.StringIO()
    assert write_rows(export_rows(redis_client, Keys(), MODEL, include_failed=True), out, "csv") == 1201
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(parsed[0]) == COLUMNS
    failures = [row for row in parsed if row["outcome"] == "failed"]
    assert [(row["video"], row["error"], row["worker"]) for row in failures] == [("v/bad.mp4", "cannot decode", "w2")]
    row = next(row for row in parsed if row["video"] == "v/0001.mp4")
    assert row["top1"] == "juggling" and float(row["top1_probability"]) == 0.6 and row["top5"] == "e"
    assert float(row["total_ms"]) == 340.0

    out = io.StringIO()
    write_rows(export_rows(redis_client, Keys(), SYNTHETIC), out, "jsonl")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["top1"] == "sketching" and json.loads(line)["model_id"] == SYNTHETIC


def test_export_row_matches_the_stored_record() -> None:
    row = export_row(prediction("a b/ü.mp4", "juggling").to_json(), "counted")
    assert row["video"] == "a b/ü.mp4" and row["outcome"] == "counted"
    assert [row[f"top{rank}"] for rank in range(1, 6)] == ["juggling", "b", "c", "d", "e"]
    assert row["error"] is None and set(row) == set(COLUMNS)
