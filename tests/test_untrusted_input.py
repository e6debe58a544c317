"""Redis contents, storage keys and video files are untrusted input: a message crafted to run code,
TLS to a server named otherwise, credentials in URLs and logs, keys that name host files, objects
too large to download, frames too large to decode (issue 23, finding 10, and finding 6)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import redis

from aggregator.drain import drain
from moments_stream import ledger, outcome, results
from moments_stream.keys import Keys

KEYS = Keys("untrusted-test")
MODEL = "v1-aaaaaaaaaaaa-11111111"


class RunsCode:
    """A pickle that, when loaded by a full unpickler, runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class WritesFile:
    """A pickle that, when loaded by a full unpickler, writes a file through ``builtins.exec``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def test_a_message_crafted_to_run_code_runs_nothing_and_is_dead_lettered(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    markers = [tmp_path / f"marker-{index}" for index in range(3)]
    queue = results.bind_results_queue(redis_client, KEYS, expiry_s=60)
    redis_client.hset(KEYS.pending(), "good.mp4", "1:1")
    # protocol 5 (STACK_GLOBAL), protocol 0 (GLOBAL) and a builtins callable
    redis_client.rpush(KEYS.results_list(), pickle.dumps(RunsCode(f"touch {markers[0]}"), protocol=5))
    redis_client.rpush(KEYS.results_list(), pickle.dumps(RunsCode(f"touch {markers[1]}"), protocol=0))
    redis_client.rpush(KEYS.results_list(), pickle.dumps(WritesFile(markers[2])))
    results.publish(redis_client, KEYS, queue, outcome.counted("good.mp4", "1:1", MODEL, [("juggling", 0.9)]))

    report = drain(redis_client, KEYS, queue, idle_exit_s=0.3, poll_s=0.1, recover_after_s=3600)

    assert [marker.exists() for marker in markers] == [False, False, False]
    assert (report.counted, report.dead_letters) == (1, 3)  # draining went on past them
    letters = [json.loads(raw) for raw in redis_client.hvals(KEYS.dead_letters())]
    reasons = sorted(letter["reason"] for letter in letters)
    assert all(reason.startswith("not a Lithops queue message (UnpicklingError: refused") for reason in reasons)
    assert sum("system" in reason for reason in reasons) == 2 and sum("exec" in reason for reason in reasons) == 1
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 1}


def test_the_envelope_reader_reads_what_lithops_writes_and_plain_values() -> None:
    import cloudpickle

    text = json.dumps({"video": "a.mp4"})
    assert results.read_envelope(cloudpickle.dumps(text)) == text
    assert results.read_envelope(pickle.dumps(text, protocol=2)) == text
    assert results.read_envelope(cloudpickle.dumps({"a": [1, 2.5, b"x", None]})) == {"a": [1, 2.5, b"x", None]}
