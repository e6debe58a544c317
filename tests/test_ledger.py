"""The video state transitions against a real Redis: idempotent, exact, atomic."""

from __future__ import annotations

import json

import redis

from moments_stream import keys, ledger


def prediction(video: str, top1: str, fingerprint: str = "10:1") -> dict:
    return {"video": video, "fingerprint": fingerprint, "top5": [[top1, 0.9], ["other", 0.1]], "model_id": "m"}


def test_prediction_counted_once_even_if_delivered_twice(redis_client: redis.Redis) -> None:
    redis_client.hset(keys.pending(), "a.mp4", "10:1")
    assert ledger.record_prediction(redis_client, prediction("a.mp4", "juggling"))
    assert not ledger.record_prediction(redis_client, prediction("a.mp4", "juggling"))
    assert ledger.counts(redis_client) == {"juggling": 1}
    assert ledger.pending_count(redis_client) == 0
    assert json.loads(redis_client.hget(keys.predictions(), "a.mp4"))["top5"][0][0] == "juggling"


def test_replaced_file_moves_its_count(redis_client: redis.Redis) -> None:
    ledger.record_prediction(redis_client, prediction("a.mp4", "juggling", "10:1"))
    ledger.record_prediction(redis_client, prediction("b.mp4", "juggling", "10:1"))
    redis_client.hset(keys.pending(), "a.mp4", "12:2")
    assert ledger.record_prediction(redis_client, prediction("a.mp4", "running", "12:2"))
    assert ledger.counts(redis_client) == {"juggling": 1, "running": 1}
    assert ledger.pending_count(redis_client) == 0


def test_count_reaching_zero_leaves_the_table(redis_client: redis.Redis) -> None:
    ledger.record_prediction(redis_client, prediction("a.mp4", "juggling", "1:1"))
    ledger.record_prediction(redis_client, prediction("a.mp4", "running", "2:2"))
    assert ledger.counts(redis_client) == {"running": 1}


def test_failure_recorded_and_pending_cleared(redis_client: redis.Redis) -> None:
    redis_client.hset(keys.pending(), "bad.mp4", "3:1")
    assert ledger.record_failure(redis_client, "bad.mp4", "3:1", "cannot decode")
    assert json.loads(redis_client.hget(keys.failed(), "bad.mp4"))["error"] == "cannot decode"
    assert ledger.pending_count(redis_client) == 0


def test_failure_after_success_of_same_version_is_ignored(redis_client: redis.Redis) -> None:
    ledger.record_prediction(redis_client, prediction("a.mp4", "juggling", "10:1"))
    assert not ledger.record_failure(redis_client, "a.mp4", "10:1", "late duplicate attempt failed")
    assert redis_client.hlen(keys.failed()) == 0


def test_success_after_failure_clears_the_failure(redis_client: redis.Redis) -> None:
    ledger.record_failure(redis_client, "a.mp4", "10:1", "transient")
    ledger.record_prediction(redis_client, prediction("a.mp4", "juggling", "10:1"))
    assert redis_client.hlen(keys.failed()) == 0
    assert ledger.counts(redis_client) == {"juggling": 1}


def test_sorted_counts() -> None:
    assert ledger.sorted_counts({"b": 2, "a": 2, "c": 5}) == [("c", 5), ("a", 2), ("b", 2)]
