"""The video state transitions against a real Redis: idempotent, exact, atomic."""

from __future__ import annotations

import json

import pytest
import redis

from aggregator.drain import drain
from moments_stream import ledger, results
from moments_stream.errors import ConfigError
from moments_stream.keys import Keys
from moments_stream.ledger import RecordResult
from moments_stream.outcome import VideoOutcome, counted, failed
from moments_stream.videos import pending_entry

RECORDED, DUPLICATE, STALE = RecordResult.RECORDED, RecordResult.DUPLICATE, RecordResult.STALE


KEYS = Keys()
MODEL = "v1-aaaaaaaaaaaa-11111111"
OTHER_MODEL = "v1-bbbbbbbbbbbb-11111111"


def prediction(video: str, top1: str, fingerprint: str = "10:1", model_id: str = MODEL) -> VideoOutcome:
    return counted(video, fingerprint, model_id, [(top1, 0.9), ("other", 0.1)])


def failure(video: str, fingerprint: str, error: str) -> VideoOutcome:
    return failed(video, fingerprint, error, worker="w1", model_id=MODEL)


def test_prediction_counted_once_even_if_delivered_twice(redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.pending(), "a.mp4", pending_entry("10:1", None))
    assert ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling")) is RECORDED
    assert ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling")) is DUPLICATE
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 1}
    assert ledger.pending_count(redis_client, KEYS) == 0
    assert json.loads(redis_client.hget(KEYS.predictions(MODEL), "a.mp4"))["top5"][0][0] == "juggling"


def test_replaced_file_moves_its_count(redis_client: redis.Redis) -> None:
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling", "10:1"))
    ledger.record(redis_client, KEYS, prediction("b.mp4", "juggling", "10:1"))
    redis_client.hset(KEYS.pending(), "a.mp4", pending_entry("12:2", None))
    redis_client.hset(KEYS.seen(), "a.mp4", "12:2")
    assert ledger.record(redis_client, KEYS, prediction("a.mp4", "running", "12:2")) is RECORDED
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 1, "running": 1}
    assert ledger.pending_count(redis_client, KEYS) == 0


def test_count_reaching_zero_leaves_the_table(redis_client: redis.Redis) -> None:
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling", "1:1"))
    ledger.record(redis_client, KEYS, prediction("a.mp4", "running", "2:2"))
    assert ledger.counts(redis_client, KEYS, MODEL) == {"running": 1}


def test_late_outcome_of_an_older_version_is_stale(redis_client: redis.Redis) -> None:
    # The file was replaced (2:2 enqueued) and its new prediction recorded before the old
    # version's delayed message arrived: the old one must not win.
    redis_client.hset(KEYS.seen(), "a.mp4", "2:2")
    redis_client.hset(KEYS.pending(), "a.mp4", pending_entry("2:2", None))
    assert ledger.record(redis_client, KEYS, prediction("a.mp4", "running", "2:2")) is RECORDED
    assert ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling", "1:1")) is STALE
    assert ledger.record(redis_client, KEYS, failure("a.mp4", "1:1", "old attempt")) is STALE
    assert ledger.counts(redis_client, KEYS, MODEL) == {"running": 1}
    assert redis_client.hlen(KEYS.failed()) == 0


def test_stale_outcome_leaves_the_newer_version_pending(redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.seen(), "a.mp4", "2:2")
    redis_client.hset(KEYS.pending(), "a.mp4", pending_entry("2:2", None))
    assert ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling", "1:1")) is STALE
    assert redis_client.hget(KEYS.pending(), "a.mp4") == pending_entry("2:2", None).encode()
    assert ledger.counts(redis_client, KEYS, MODEL) == {}


def test_failure_recorded_and_pending_cleared(redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.pending(), "bad.mp4", pending_entry("3:1", None))
    assert ledger.record(redis_client, KEYS, failure("bad.mp4", "3:1", "cannot decode")) is RECORDED
    assert json.loads(redis_client.hget(KEYS.failed(), "bad.mp4"))["error"] == "cannot decode"
    assert ledger.pending_count(redis_client, KEYS) == 0


def test_failure_after_success_of_same_version_is_ignored(redis_client: redis.Redis) -> None:
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling", "10:1"))
    assert ledger.record(redis_client, KEYS, failure("a.mp4", "10:1", "late attempt failed")) is DUPLICATE
    assert redis_client.hlen(KEYS.failed()) == 0


def test_success_after_failure_clears_the_failure(redis_client: redis.Redis) -> None:
    ledger.record(redis_client, KEYS, failure("a.mp4", "10:1", "transient"))
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling", "10:1"))
    assert redis_client.hlen(KEYS.failed()) == 0
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 1}


def test_each_model_counts_on_its_own(redis_client: redis.Redis) -> None:
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling"))
    ledger.record(redis_client, KEYS, prediction("b.mp4", "juggling"))
    # The same version classified again by other weights is that model's first result, not a duplicate.
    other = prediction("a.mp4", "running", model_id=OTHER_MODEL)
    assert ledger.record(redis_client, KEYS, other) is RECORDED
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 2}
    assert ledger.counts(redis_client, KEYS, OTHER_MODEL) == {"running": 1}
    assert ledger.known_models(redis_client, KEYS) == [OTHER_MODEL, MODEL]
    assert ledger.resolve_model(redis_client, KEYS, None) == OTHER_MODEL
    assert ledger.resolve_model(redis_client, KEYS, "v1-aaa") == MODEL


def test_unknown_or_ambiguous_model_names_the_known_ones(redis_client: redis.Redis) -> None:
    assert ledger.resolve_model(redis_client, KEYS, None) is None  # nothing counted yet
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling"))
    ledger.record(redis_client, KEYS, prediction("a.mp4", "running", model_id=OTHER_MODEL))
    for requested, problem in (("v2", "is not a model"), ("v1-", "matches several")):
        with pytest.raises(ConfigError) as raised:
            ledger.resolve_model(redis_client, KEYS, requested)
        assert problem in raised.value.message and MODEL in raised.value.fix and OTHER_MODEL in raised.value.fix


def test_finishes_are_stamped_with_redis_time_and_trimmed(redis_client: redis.Redis) -> None:
    redis_client.zadd(KEYS.recent(), {"long-ago.mp4": 1.0})
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling"))
    ledger.record(redis_client, KEYS, failure("bad.mp4", "3:1", "cannot decode"))
    ledger.record(redis_client, KEYS, prediction("a.mp4", "juggling"))  # duplicate: not a new finish
    seconds, micros = redis_client.time()
    stamps = dict(
        (video.decode(), score) for video, score in redis_client.zrange(KEYS.recent(), 0, -1, withscores=True)
    )
    assert set(stamps) == {"a.mp4", "bad.mp4"}
    assert all(abs(seconds + micros / 1e6 - stamp) < 5 for stamp in stamps.values())


def ledger_state(client: redis.Redis, keys: Keys) -> dict[str, object]:
    """Everything the ledger writes in ``keys``' namespace, without the namespace (times left out)."""
    state: dict[str, object] = {}
    for key in client.scan_iter(f"{keys.namespace}:*"):
        name = key.decode().split(":", 1)[1]
        kind = client.type(key)
        if kind == b"hash":
            state[name] = client.hgetall(key)
        elif kind == b"string":  # the current model
            state[name] = client.get(key)
        elif name.startswith("ranking"):
            state[name] = client.zrange(key, 0, -1, withscores=True)
        else:  # sorted sets of Redis times: their members
            state[name] = sorted(client.zrange(key, 0, -1))
    return state


def test_a_batch_records_exactly_as_its_outcomes_one_by_one(redis_client: redis.Redis) -> None:
    """Duplicates, stale and replaced versions, failures meeting predictions, two models, a failure
    naming no model: one script call per batch reaches the state and results of one call each."""
    outcomes = [
        prediction("a.mp4", "juggling", "1:1"),
        prediction("a.mp4", "juggling", "1:1"),  # delivered twice
        failure("b.mp4", "2:1", "transient"),
        prediction("b.mp4", "running", "2:1"),  # a later attempt succeeded: no longer failed
        prediction("c.mp4", "diving", "3:2"),  # the file replaced since 3:1 was counted: the count moves
        prediction("c.mp4", "juggling", "3:1"),  # the old version arriving late: stale
        failure("d.mp4", "4:1", "cannot decode"),
        failed("e.mp4", "5:1", "died on every attempt"),  # names no model: the current one's
        prediction("a.mp4", "running", "1:1", model_id=OTHER_MODEL),
        failure("a.mp4", "1:1", "late attempt failed"),  # counted already: ignored
    ]
    alone, batched = Keys("alone"), Keys("batched")
    for keys in (alone, batched):
        redis_client.hset(keys.seen(), mapping={"a.mp4": "1:1", "b.mp4": "2:1", "c.mp4": "3:2", "d.mp4": "4:1",
                                                "e.mp4": "5:1"})
        redis_client.hset(keys.pending(), mapping={video: pending_entry(fingerprint, None) for video, fingerprint in
                                                   {"a.mp4": "1:1", "b.mp4": "2:1", "c.mp4": "3:2", "d.mp4": "4:1",
                                                    "e.mp4": "5:1"}.items()})
        staged = failure("d.mp4", "4:1", "cannot decode")
        redis_client.hset(keys.outbox(), staged.outbox_field, staged.encode())
        redis_client.hset(keys.seen(), "c.mp4", "3:1")
        assert ledger.record(redis_client, keys, prediction("c.mp4", "running", "3:1")) is RECORDED
        redis_client.hset(keys.seen(), "c.mp4", "3:2")
    one_by_one = [ledger.record(redis_client, alone, outcome) for outcome in outcomes]
    assert ledger.record_batch(redis_client, batched, outcomes) == one_by_one
    assert one_by_one == [RECORDED, DUPLICATE, RECORDED, RECORDED, RECORDED, STALE, RECORDED, RECORDED, RECORDED,
                          DUPLICATE]
    assert ledger_state(redis_client, batched) == ledger_state(redis_client, alone)
    assert ledger.counts(redis_client, batched, MODEL) == {"juggling": 1, "running": 1, "diving": 1}
    assert ledger.pending_count(redis_client, batched) == 0
    assert set(redis_client.hkeys(batched.failed())) == {b"d.mp4", b"e.mp4"}
    assert redis_client.hlen(batched.outbox()) == 0


def test_batches_larger_than_one_script_call_are_split(redis_client: redis.Redis) -> None:
    outcomes = [prediction(f"{index}.mp4", "juggling", f"{index}:1") for index in range(ledger.MAX_BATCH * 2 + 3)]
    assert ledger.record_batch(redis_client, KEYS, outcomes + outcomes[:5]) == [RECORDED] * len(outcomes) + [
        DUPLICATE
    ] * 5
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": len(outcomes)}


def results_queue(client: redis.Redis):
    return results.ResultsQueue(client, KEYS, expiry_s=3600)


def lose_queued_messages(client: redis.Redis) -> None:
    """What an aggregator that popped every message and then died leaves behind: an empty queue."""
    client.delete(KEYS.results_list())


def test_outcome_lost_from_the_queue_is_recorded_from_the_outbox(redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.pending(), "a.mp4", pending_entry("10:1", None))
    redis_client.hset(KEYS.pending(), "bad.mp4", pending_entry("3:1", None))
    queue = results_queue(redis_client)
    results.publish(redis_client, KEYS, prediction("a.mp4", "juggling"))
    results.publish(redis_client, KEYS, failure("bad.mp4", "3:1", "cannot decode"))
    lose_queued_messages(redis_client)
    assert redis_client.hlen(KEYS.outbox()) == 2

    report = drain(redis_client, KEYS, queue, idle_exit_s=0.5, poll_s=0.1, recover_after_s=0)

    assert (report.recovered, report.counted, report.failed) == (2, 1, 1)
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 1}
    assert ledger.pending_count(redis_client, KEYS) == 0
    assert redis_client.hlen(KEYS.outbox()) == 0


def test_recorded_outcome_leaves_the_outbox_and_is_not_recovered(redis_client: redis.Redis) -> None:
    queue = results_queue(redis_client)
    results.publish(redis_client, KEYS, prediction("a.mp4", "juggling"))
    report = drain(redis_client, KEYS, queue, idle_exit_s=0.5, poll_s=0.1, recover_after_s=3600)
    assert (report.counted, report.recovered) == (1, 0)
    assert redis_client.hlen(KEYS.outbox()) == 0
    assert list(ledger.unrecorded_outcomes(redis_client, KEYS, older_than_s=0)) == []


def test_recent_outbox_entries_are_left_for_the_queue(redis_client: redis.Redis) -> None:
    results.publish(redis_client, KEYS, prediction("a.mp4", "juggling"))
    assert list(ledger.unrecorded_outcomes(redis_client, KEYS, older_than_s=60)) == []
    entries = list(ledger.unrecorded_outcomes(redis_client, KEYS, older_than_s=0))
    assert [VideoOutcome.decode(raw).video for _, raw in entries] == ["a.mp4"]


def test_sorted_counts() -> None:
    assert ledger.sorted_counts({"b": 2, "a": 2, "c": 5}) == [("c", 5), ("a", 2), ("b", 2)]


def test_a_reclassify_waits_for_its_own_model(redis_client: redis.Redis) -> None:
    """A job for OTHER_MODEL: an outcome of the old model (a consumer still running it) counts under
    that model only, and the video stays pending until OTHER_MODEL's outcome arrives."""

    redis_client.hset(KEYS.seen(), "b/a.mp4", "10:1")
    redis_client.hset(KEYS.pending(), "b/a.mp4", pending_entry("10:1", OTHER_MODEL))
    assert ledger.record(redis_client, KEYS, prediction("b/a.mp4", "juggling")) is RECORDED
    assert ledger.pending_count(redis_client, KEYS) == 1
    other = prediction("b/a.mp4", "running", model_id=OTHER_MODEL)
    assert ledger.record(redis_client, KEYS, other) is RECORDED
    assert ledger.pending_count(redis_client, KEYS) == 0
    assert ledger.counts(redis_client, KEYS, OTHER_MODEL) == {"running": 1}


def test_pending_entry_for_any_model_is_cleared_by_any(redis_client: redis.Redis) -> None:

    redis_client.hset(KEYS.pending(), "b/a.mp4", pending_entry("10:1", None))
    ledger.record(redis_client, KEYS, prediction("b/a.mp4", "juggling", model_id=OTHER_MODEL))
    assert ledger.pending_count(redis_client, KEYS) == 0
