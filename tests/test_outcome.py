"""The outcome message: one type, its JSON form versioned so that releases can run side by side."""

from __future__ import annotations

import json

import pytest
import redis

from aggregator.drain import drain
from moments_stream import ledger, results
from moments_stream.keys import Keys
from moments_stream.outcome import (
    SCHEMA_VERSION,
    InvalidOutcome,
    UnsupportedSchema,
    VideoOutcome,
    counted,
    failed,
    outbox_field,
)
from moments_stream.videos import pending_entry

KEYS = Keys("outcome-test")
MODEL = "v1-aaaaaaaaaaaa-11111111"
# A counted message as a consumer publishes it.
COUNTED_MESSAGE = {
    "schema": SCHEMA_VERSION, "video": "bucket/a.mp4", "top5": [["juggling", 0.9], ["running", 0.05]],
    "model_id": MODEL, "frame_count": 90,
    "decode_ms": 50.0, "infer_ms": 800.0, "synthetic_weights": False, "sampling": "seek", "codec": "h264",
    "extra": {}, "outcome": "counted", "fingerprint": "10:1", "total_ms": 900.0, "worker": "w1", "download_ms": 4.0,
}


def test_counted_and_failed_round_trip_through_json() -> None:
    for outcome in (
        counted("bucket/a.mp4", "10:1", MODEL, [("juggling", 0.9123456789)], worker="w1", total_ms=12.5,
                synthetic_weights=True, sampling="walk"),
        failed("bucket/bad.mp4", "3:1", "cannot decode", worker="w2", model_id=MODEL),
    ):
        document = json.loads(outcome.encode())
        assert document["schema"] == SCHEMA_VERSION
        again = VideoOutcome.decode(outcome.encode())
        assert again == VideoOutcome.from_json(document)
        assert (again.outcome, again.video, again.fingerprint, again.worker) == (
            outcome.outcome, outcome.video, outcome.fingerprint, outcome.worker)
    assert VideoOutcome.decode(counted("v", "1:1", MODEL, [("juggling", 0.9123456789)]).encode()).top5 == (
        ("juggling", 0.912346),)


def test_fields_a_later_release_adds_are_ignored() -> None:
    outcome = VideoOutcome.from_json({**counted("v", "1:1", MODEL, [("a", 1.0)]).to_json(), "gpu": "H100"})
    assert outcome.top1 == "a"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([1, 2], "payload is not a JSON object"),
        ({"schema": 1, "video": "v", "outcome": "counted"}, "missing or non-text field(s): fingerprint"),
        ({"schema": 1, "video": "v", "fingerprint": "1:1", "outcome": "exploded"}, "unknown outcome 'exploded'"),
        ({"schema": 1, "video": "v", "fingerprint": "1:1", "outcome": "counted", "model_id": MODEL},
         "a counted outcome needs"),
        ({"schema": 1, "video": "v", "fingerprint": "1:1", "outcome": "counted", "top5": [["a", "high"]]},
         "top5 is not a list"),
        ({"video": "v", "fingerprint": "1:1", "outcome": "failed", "schema": "one"}, "schema 'one' is not"),
        ({"video": "v", "fingerprint": "1:1", "outcome": "failed", "error": "x"}, "no schema field"),
    ],
)
def test_what_is_not_an_outcome_is_refused_with_the_reason(document: object, reason: str) -> None:
    with pytest.raises(InvalidOutcome) as refused:
        VideoOutcome.from_json(document)
    assert refused.value.reason.startswith(reason) and not isinstance(refused.value, UnsupportedSchema)


def test_a_newer_schema_is_refused_as_such() -> None:
    with pytest.raises(UnsupportedSchema, match=f"schema {SCHEMA_VERSION + 1} is newer"):
        VideoOutcome.from_json({**COUNTED_MESSAGE, "schema": SCHEMA_VERSION + 1})


def test_this_and_a_newer_releases_consumers_side_by_side_during_an_upgrade(redis_client: redis.Redis) -> None:
    """An aggregator records its own release's message; a newer release's message is neither
    recorded nor dead-lettered: it stays in the outbox for an upgraded aggregator."""
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=60)
    # (The newer release's video is left out of pending only so that this drain can end when idle.)
    for video, fingerprint in (("bucket/a.mp4", "10:1"), ("bucket/c.mp4", "7:1")):
        redis_client.hset(KEYS.pending(), video, pending_entry(fingerprint, None))
    newer = {**COUNTED_MESSAGE, "video": "bucket/new.mp4", "fingerprint": "5:1", "schema": SCHEMA_VERSION + 1,
             "published_at": 0}
    newer_field = outbox_field("bucket/new.mp4", "5:1", MODEL)
    redis_client.hset(KEYS.outbox(), newer_field, json.dumps(newer))
    redis_client.rpush(KEYS.results_list(), json.dumps(COUNTED_MESSAGE))  # a consumer not yet upgraded
    redis_client.rpush(KEYS.results_list(), json.dumps(newer))  # a newer consumer, already upgraded
    results.publish(redis_client, KEYS, counted("bucket/c.mp4", "7:1", MODEL, [("running", 0.8)]))

    report = drain(redis_client, KEYS, queue, idle_exit_s=0, poll_s=0.1, recover_after_s=0)

    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 1, "running": 1}
    assert (report.counted, report.dead_letters) == (2, 0)
    assert report.newer_schema == 2  # from the queue, then from the outbox when the queue ran dry
    assert json.loads(redis_client.hget(KEYS.outbox(), newer_field))["schema"] == SCHEMA_VERSION + 1


def test_an_unreadable_outbox_entry_becomes_a_dead_letter(redis_client: redis.Redis) -> None:
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=60)
    field = outbox_field("bucket/x.mp4", "1:1", MODEL)
    redis_client.hset(KEYS.outbox(), field, "{not json")
    report = drain(redis_client, KEYS, queue, idle_exit_s=0, poll_s=0.1, recover_after_s=0)
    assert report.dead_letters == 1 and not redis_client.hexists(KEYS.outbox(), field)
    (letter,) = map(json.loads, redis_client.hvals(KEYS.dead_letters()))
    assert letter["reason"].startswith("payload is not JSON") and letter["excerpt"]
