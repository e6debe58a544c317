"""The results queue (moments_stream/results.py owns its protocol): one Redis list per namespace,
each message one outcome's JSON text, published after its outbox copy in one round trip, received
by several aggregators at once, each message by one; nothing on it is ever unpickled."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from aggregator.drain import drain
from moments_stream import ledger, outcome, results
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome
from moments_stream.videos import pending_entry

REPO = Path(__file__).resolve().parents[1]
KEYS = Keys("results-test")
WEEK_S = 7 * 24 * 3600


def counted(video: str) -> VideoOutcome:
    return outcome.counted(video, "1:1", "v1-aaaaaaaaaaaa-11111111", [("juggling", 0.9)])


def test_the_list_keeps_the_name_releases_before_used() -> None:
    """A pipeline upgraded mid-run drains the list its older consumers publish on."""
    assert KEYS.results_list() == "redislist-a-results-test:results"


def test_a_message_is_the_outcomes_json_text(redis_client: redis.Redis) -> None:
    message = counted("a.mp4")
    results.publish(redis_client, KEYS, message)
    (raw,) = redis_client.lrange(KEYS.results_list(), 0, -1)
    assert json.loads(raw) == message.published(json.loads(raw)["published_at"]).to_json()
    assert results.decode(raw) == VideoOutcome.decode(raw)


def test_every_process_publishes_and_receives_on_its_own_connection(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A publisher reaching Redis by another address than the reader's: both name the same list."""
    other_address = redis_url.replace("127.0.0.1", "localhost")
    script = (
        "import sys, redis\n"
        "from moments_stream import outcome, results\nfrom moments_stream.keys import Keys\n"
        "queue = results.ResultsQueue(redis.Redis.from_url(sys.argv[1]), Keys('results-test'), expiry_s=60)\n"
        "queue.publish([outcome.failed('a.mp4', '1:1', 'broken')])\n"
    )
    subprocess.run([sys.executable, "-c", script, other_address], check=True, cwd=REPO)
    assert 0 < redis_client.ttl(KEYS.results_list()) <= 60  # the publisher's expiry, while the message waits
    (raw,) = results.ResultsQueue(redis_client, KEYS).receive(5)
    assert results.decode(raw).video == "a.mp4"
    assert redis_client.exists(KEYS.results_list()) == 0  # the only message taken: the list is gone


def test_publish_sets_the_configured_expiry(redis_client: redis.Redis) -> None:
    results.ResultsQueue(redis_client, KEYS, expiry_s=WEEK_S).publish([counted("a.mp4")])
    assert WEEK_S - 60 < redis_client.ttl(KEYS.results_list()) <= WEEK_S
    results.publish_many(redis_client, KEYS, [counted("b.mp4")], expiry_s=60)
    assert 0 < redis_client.ttl(KEYS.results_list()) <= 60


def test_publish_leaves_the_outbox_entry_and_the_message(redis_client: redis.Redis) -> None:
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=WEEK_S)
    queue.publish([counted("a.mp4")])
    (raw,) = queue.receive(5)
    received = results.decode(raw)
    assert received.video == "a.mp4" and received.published_at is not None
    assert outcome.VideoOutcome.decode(redis_client.hget(KEYS.outbox(), received.outbox_field)) == received


def test_publish_many_is_one_round_trip_and_one_message_each_in_order(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=60)
    videos = [f"v{index}.mp4" for index in range(5)]
    round_trips: list[list[str]] = []
    execute = redis.client.Pipeline.execute

    def recorded(pipe: redis.client.Pipeline, raise_on_error: bool = True) -> list:
        round_trips.append([str(args[0]) for args, _ in pipe.command_stack])
        return execute(pipe, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", recorded)
    queue.publish([counted(video) for video in videos])
    monkeypatch.undo()
    assert round_trips == [["HSET", "RPUSH", "EXPIRE"]]
    received = [results.decode(raw) for raw in queue.receive(5, max_messages=10)]
    assert [message.video for message in received] == videos
    entries = redis_client.hgetall(KEYS.outbox()).items()
    outbox = {field.decode(): outcome.VideoOutcome.decode(raw) for field, raw in entries}
    assert outbox == {message.outbox_field: message for message in received}
    queue.publish([])
    assert redis_client.exists(KEYS.results_list()) == 0


def test_receive_waits_at_most_its_timeout_and_zero_does_not_block(redis_client: redis.Redis) -> None:
    """BLPOP's own 0 means "for ever": a zero wait must be a plain look."""
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=60)
    assert queue.receive(0) == [] and queue.receive(0.05) == []
    queue.publish([counted("a.mp4")])
    assert [results.decode(raw).video for raw in queue.receive(0)] == ["a.mp4"]


def test_unreadable_messages_go_to_the_dead_letters_and_the_rest_is_counted(redis_client: redis.Redis) -> None:
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=60)
    redis_client.hset(KEYS.pending(), "good.mp4", pending_entry("1:1", None))
    push = [
        b"\x80\x05garbage",  # a pickle's first bytes, as a lithops.multiprocessing.Queue pushes
        pickle.dumps(json.dumps(counted("pickled.mp4").to_json())),  # such a release's whole message
        b"\xff\xfe not UTF-8",
        b"{not json",
        json.dumps({"schema": 1, "outcome": "counted", "video": "no-fingerprint.mp4"}).encode(),
        json.dumps({**counted("bad-top5.mp4").to_json(), "top5": "juggling"}).encode(),
        json.dumps({**counted("weird.mp4").to_json(), "outcome": "exploded"}).encode(),
    ]
    redis_client.rpush(KEYS.results_list(), *push)
    queue.publish([counted("good.mp4")])

    report = drain(redis_client, KEYS, queue, idle_exit_s=0.3, poll_s=0.1, recover_after_s=3600)

    assert (report.counted, report.dead_letters, report.recovered) == (1, 7, 0)
    letters = [json.loads(raw) for raw in redis_client.hvals(KEYS.dead_letters())]
    reasons = sorted(letter["reason"] for letter in letters)
    assert sum(reason.startswith("not a results message: a pickle") for reason in reasons) == 2
    assert sum(reason.startswith("not a results message: not UTF-8 text") for reason in reasons) == 1
    assert any(reason.startswith("payload is not JSON") for reason in reasons)
    assert "missing or non-text field(s): fingerprint" in reasons
    assert any("top5" in reason for reason in reasons) and "unknown outcome 'exploded'" in reasons
    assert all(letter["excerpt"] and letter["received_at"] > 0 for letter in letters)
    assert ledger.counts(redis_client, KEYS, "v1-aaaaaaaaaaaa-11111111") == {"juggling": 1}


def test_a_batch_is_the_next_messages_in_order(redis_client: redis.Redis) -> None:
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=60)
    queue.publish([counted(f"{index}.mp4") for index in range(7)])
    batches = [queue.receive(0.1, max_messages=3) for _ in range(4)]
    videos = [[results.decode(raw).video for raw in batch] for batch in batches]
    assert videos == [["0.mp4", "1.mp4", "2.mp4"], ["3.mp4", "4.mp4", "5.mp4"], ["6.mp4"], []]


def test_several_aggregators_drain_one_queue_together(redis_client: redis.Redis, redis_url: str) -> None:
    """Each message reaches one aggregator: every video counted once, no duplicate, nothing recovered."""
    videos = [f"{index:05d}.mp4" for index in range(3 * ledger.MAX_BATCH + 7)]
    redis_client.hset(KEYS.pending(), mapping=dict.fromkeys(videos, pending_entry("1:1", None)))
    for video in videos:
        results.publish(redis_client, KEYS, counted(video))
    reports = []

    def aggregate() -> None:
        client = redis.Redis.from_url(redis_url)
        reports.append(drain(client, KEYS, results.ResultsQueue(client, KEYS, expiry_s=60), idle_exit_s=0.3,
                             poll_s=0.1, recover_after_s=3600))

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


def test_nothing_read_from_redis_is_unpickled() -> None:
    """No unpickler anywhere in the product (and no Lithops Queue, whose ``get`` unpickles)."""
    sources = [path for package in ("moments_stream", "producer", "consumer", "aggregator", "pipeline")
               for path in (REPO / package).rglob("*.py")]
    assert [call for path in sources for call in _unpickling_calls(path)] == []
    assert [f"{path.relative_to(REPO)}:{module}" for path in sources for module in _imported(path)
            if module.startswith("lithops.multiprocessing")] == []


def _imported(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.append(node.module)
    return modules
