"""The results queue: found by name, bound to each process's own connection, plain data on the
wire, unreadable messages dead-lettered; and the Lithops internals this relies on, pinned."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import cloudpickle
import pytest
import redis
from lithops.multiprocessing import Queue
from lithops.multiprocessing.connection import REDIS_LIST_CONN, _RedisConnection, get_handle_pair

from aggregator.drain import drain
from moments_stream import ledger, outcome, results
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome

REPO = Path(__file__).resolve().parents[1]
KEYS = Keys("results-test")


def counted(video: str) -> VideoOutcome:
    return outcome.counted(video, "1:1", "v1-aaaaaaaaaaaa-11111111", [("juggling", 0.9)])


def test_lithops_version_is_the_one_whose_internals_are_pinned() -> None:
    assert version("lithops").startswith("3.8."), "moments_stream/results.py relies on lithops 3.8 internals"


def test_lithops_names_a_queue_list_from_its_id() -> None:
    pair = ("redislist-a-ns:results", "redislist-b-ns:results")
    assert get_handle_pair(REDIS_LIST_CONN, from_id="ns:results") == pair
    assert KEYS.results_list() == "redislist-a-results-test:results"


def test_bound_queue_has_the_state_lithops_pickles(redis_client: redis.Redis) -> None:
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=60)
    maxsize, reader, writer, _, reference = queue.__getstate__()
    assert maxsize == 0 and reference.managed
    assert reader.__getstate__() == (redis_client, KEYS.results_list(), "redislist-b-results-test:results", True, False)
    assert writer.__getstate__() == (redis_client, "redislist-b-results-test:results", KEYS.results_list(), False, True)
    assert isinstance(reader, _RedisConnection) and isinstance(queue, Queue)


def test_every_process_binds_the_queue_to_its_own_connection(redis_client: redis.Redis, redis_url: str) -> None:
    """A publisher reaching Redis by another address than the reader's: the reader, bound by name
    on its own client, gets the message from the list both name; Lithops' own Queue.get reads it."""
    other_address = redis_url.replace("127.0.0.1", "localhost")
    script = (
        "import sys, redis\n"
        "from moments_stream import results\nfrom moments_stream.keys import Keys\n"
        "client = redis.Redis.from_url(sys.argv[1])\n"
        "queue = results.bind_results_queue(client, Keys('results-test'), 60)\n"
        "assert queue._writer._client is client\n"
        "queue.put('{\"video\": \"a.mp4\"}')\n"
    )
    subprocess.run([sys.executable, "-c", script, other_address], check=True, cwd=REPO)
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=60)
    assert queue._reader._client is redis_client
    assert json.loads(queue.get(timeout=5)) == {"video": "a.mp4"}
    assert redis_client.ttl(KEYS.results_list()) > 0 or redis_client.llen(KEYS.results_list()) == 0


def test_put_sets_the_configured_expiry(redis_client: redis.Redis) -> None:
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=7 * 24 * 3600)
    results.put(queue, counted("a.mp4"))
    assert 6 * 24 * 3600 < redis_client.ttl(KEYS.results_list()) <= 7 * 24 * 3600


def test_publish_leaves_the_outbox_entry_and_a_message_lithops_reads(redis_client: redis.Redis) -> None:
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=7 * 24 * 3600)
    results.publish(redis_client, KEYS, queue, counted("a.mp4"))
    received = outcome.VideoOutcome.decode(queue.get(timeout=5))  # Lithops' own Queue.get
    assert received.video == "a.mp4" and received.published_at is not None
    assert outcome.VideoOutcome.decode(redis_client.hget(KEYS.outbox(), received.outbox_field)) == received
    results.publish(redis_client, KEYS, queue, counted("b.mp4"))
    assert 6 * 24 * 3600 < redis_client.ttl(KEYS.results_list()) <= 7 * 24 * 3600


def test_publish_many_is_one_round_trip_and_one_message_each_in_order(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=60)
    videos = [f"v{index}.mp4" for index in range(5)]
    round_trips: list[list[str]] = []
    execute = redis.client.Pipeline.execute

    def recorded(pipe: redis.client.Pipeline, raise_on_error: bool = True) -> list:
        round_trips.append([str(args[0]) for args, _ in pipe.command_stack])
        return execute(pipe, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", recorded)
    results.publish_many(redis_client, KEYS, [counted(video) for video in videos])
    monkeypatch.undo()
    assert round_trips == [["HSET", "RPUSH", "EXPIRE"]]
    received = [outcome.VideoOutcome.decode(queue.get(timeout=5)) for _ in videos]
    assert [message.video for message in received] == videos
    entries = redis_client.hgetall(KEYS.outbox()).items()
    outbox = {field.decode(): outcome.VideoOutcome.decode(raw) for field, raw in entries}
    assert outbox == {message.outbox_field: message for message in received}
    results.publish_many(redis_client, KEYS, [])
    assert redis_client.llen(KEYS.results_list()) == 0


def test_unreadable_messages_go_to_the_dead_letters_and_the_rest_is_counted(redis_client: redis.Redis) -> None:
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=60)
    redis_client.hset(KEYS.pending(), "good.mp4", "1:1")
    redis_client.rpush(KEYS.results_list(), b"\x80\x05garbage")  # not a pickle
    redis_client.rpush(KEYS.results_list(), cloudpickle.dumps({"video": "x"}))  # a pickled dict, not JSON text
    queue.put("{not json")
    queue.put(json.dumps({"outcome": "counted", "video": "no-fingerprint.mp4"}))
    queue.put(json.dumps({**counted("bad-top5.mp4").to_json(), "top5": "juggling"}))
    queue.put(json.dumps({**counted("weird.mp4").to_json(), "outcome": "exploded"}))
    results.publish(redis_client, KEYS, queue, counted("good.mp4"))

    report = drain(redis_client, KEYS, queue, idle_exit_s=0.3, poll_s=0.1, recover_after_s=3600)

    assert (report.counted, report.dead_letters, report.recovered) == (1, 6, 0)
    letters = [json.loads(raw) for raw in redis_client.hvals(KEYS.dead_letters())]
    reasons = sorted(letter["reason"] for letter in letters)
    assert any(reason.startswith("not a Lithops queue message") for reason in reasons)
    assert "payload is a dict, not JSON text" in reasons
    assert any(reason.startswith("payload is not JSON") for reason in reasons)
    assert "missing or non-text field(s): fingerprint" in reasons
    assert any("top5" in reason for reason in reasons) and "unknown outcome 'exploded'" in reasons
    assert all(letter["excerpt"] and letter["received_at"] > 0 for letter in letters)
    assert ledger.counts(redis_client, KEYS, "v1-aaaaaaaaaaaa-11111111") == {"juggling": 1}


def test_a_batch_is_the_next_messages_in_order(redis_client: redis.Redis) -> None:
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=60)
    for index in range(7):
        results.put(queue, counted(f"{index}.mp4"))
    batches = [results.receive_batch(redis_client, KEYS, queue, 0.1, max_messages=3) for _ in range(4)]
    videos = [[results.decode(raw).video for raw in batch] for batch in batches]
    assert videos == [["0.mp4", "1.mp4", "2.mp4"], ["3.mp4", "4.mp4", "5.mp4"], ["6.mp4"], []]


def test_several_aggregators_drain_one_queue_together(redis_client: redis.Redis, redis_url: str) -> None:
    """Each message reaches one aggregator: every video counted once, no duplicate, nothing recovered."""
    videos = [f"{index:05d}.mp4" for index in range(3 * ledger.MAX_BATCH + 7)]
    redis_client.hset(KEYS.pending(), mapping=dict.fromkeys(videos, "1:1"))
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=60)
    for video in videos:
        results.publish(redis_client, KEYS, queue, counted(video))
    reports = []

    def aggregate() -> None:
        client = redis.Redis.from_url(redis_url)
        own_queue = results.bind_results_queue(client, KEYS, expiry_s=60)
        reports.append(drain(client, KEYS, own_queue, idle_exit_s=0.3, poll_s=0.1, recover_after_s=3600))

    aggregators = [threading.Thread(target=aggregate) for _ in range(3)]
    for aggregator in aggregators:
        aggregator.start()
    for aggregator in aggregators:
        aggregator.join()
    assert sum(report.counted for report in reports) == len(videos)
    assert sum(report.duplicates + report.recovered + report.dead_letters for report in reports) == 0
    assert ledger.counts(redis_client, KEYS, "v1-aaaaaaaaaaaa-11111111") == {"juggling": len(videos)}
    assert redis_client.hlen(KEYS.outbox()) == 0 and ledger.pending_count(redis_client, KEYS) == 0


def _unpickling_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("loads", "load", "Unpickler"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("pickle", "cloudpickle", "dill"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}:{owner.id}.{node.attr}")
    return found


def test_nothing_read_from_redis_is_unpickled_but_the_queue_envelope() -> None:
    """The one unpickler is the envelope reader, which refuses every global; no ``loads`` anywhere."""
    sources = [path for package in ("moments_stream", "producer", "consumer", "aggregator")
               for path in (REPO / package).rglob("*.py")]
    calls = [call for path in sources for call in _unpickling_calls(path)]
    assert [(call.split(":")[0], call.split(":")[2]) for call in calls] == [
        ("moments_stream/results.py", "pickle.Unpickler")
    ], calls
    assert results.EnvelopeReader.__bases__ == (pickle.Unpickler,)
    assert results.EnvelopeReader.find_class is not pickle.Unpickler.find_class
