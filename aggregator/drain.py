"""Draining the results queue into the ledger (predictions, counts, failures).

A message popped from the lithops Queue is gone from it, so an aggregator that dies between
the pop and the ledger write would lose it. Consumers therefore also leave every outcome in the
outbox until the ledger records it; whenever the queue is empty, the aggregator records outbox
entries older than ``recover_after_s`` itself (the ledger is idempotent, so a late duplicate
from the queue is harmless).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from moments_stream import ledger, results
from moments_stream.backoff import Backoff
from moments_stream.keys import Keys
from moments_stream.logs import get_logger
from moments_stream.redis_conn import REDIS_OUTAGE
from moments_stream.settings import DEFAULT_RECOVER_AFTER_S

log = get_logger(__name__)


_LOGGED_FIELDS = ("video", "worker", "download_ms", "decode_ms", "infer_ms", "total_ms")


@dataclass
class DrainReport:
    counted: int = 0
    duplicates: int = 0
    stale: int = 0
    failed: int = 0
    recovered: int = 0
    dead_letters: int = 0

    @property
    def received(self) -> int:
        return self.counted + self.duplicates + self.stale + self.failed


def apply(client: redis.Redis, keys: Keys, message: dict[str, Any], report: DrainReport) -> None:
    """Record one outcome from a consumer (a prediction, or a video that could not be classified);
    logs one ``video_recorded`` event with the outcome and the consumer's timings."""
    outcome = ledger.record(client, keys, message)
    fields = {name: message.get(name) for name in _LOGGED_FIELDS if message.get(name) is not None}
    if outcome is ledger.Outcome.DUPLICATE:
        report.duplicates += 1
        log.info("video_recorded", outcome="duplicate_ignored", **fields)
    elif outcome is ledger.Outcome.STALE:
        report.stale += 1
        log.info("video_recorded", outcome="stale_version_ignored", fingerprint=message["fingerprint"], **fields)
    elif message.get("outcome") == "failed":
        report.failed += 1
        log.warning("video_recorded", outcome="failed", error=message.get("error"), **fields)
    else:
        report.counted += 1
        log.info("video_recorded", outcome="counted", top1=message["top5"][0][0], **fields)


def recover_unrecorded(client: redis.Redis, keys: Keys, older_than_s: float, report: DrainReport) -> None:
    """Record outbox entries whose queue message was lost (popped by an aggregator that died)."""
    for message in ledger.unrecorded_outcomes(client, keys, older_than_s):
        report.recovered += 1
        log.warning("outcome_recovered_from_outbox", video=message["video"], worker=message.get("worker"))
        apply(client, keys, message, report)


def apply_raw(client: redis.Redis, keys: Keys, raw: bytes, report: DrainReport) -> None:
    """Record one raw queue message, or keep it as a dead letter when it is not an outcome."""
    try:
        message = results.decode(raw)
    except results.MalformedMessage as error:
        entry = results.dead_letter(client, keys, error)
        report.dead_letters += 1
        log.error("message_dead_lettered", reason=error.reason, entry=entry, dead_letters=keys.dead_letters())
        return
    apply(client, keys, message, report)


def drain(
    client: redis.Redis,
    keys: Keys,
    queue: Any,
    idle_exit_s: float | None = None,
    stop_event: threading.Event | None = None,
    poll_s: float = 1.0,
    recover_after_s: float = DEFAULT_RECOVER_AFTER_S,
) -> DrainReport:
    """Apply messages until stopped, or (with ``idle_exit_s``) until nothing has arrived for that
    long and no video is pending. Rides out Redis outages with back-off."""
    report = DrainReport()
    last_arrival = last_recovery = time.monotonic()
    backoff = Backoff()
    while not (stop_event is not None and stop_event.is_set()):
        try:
            raw = results.receive(queue, poll_s)
            if raw is None:
                now = time.monotonic()
                if now - last_recovery >= min(recover_after_s, 5.0):
                    recover_unrecorded(client, keys, recover_after_s, report)
                    last_recovery = now
                idle = now - last_arrival
                if idle_exit_s is not None and idle >= idle_exit_s and ledger.pending_count(client, keys) == 0:
                    break
                continue
            last_arrival = time.monotonic()
            apply_raw(client, keys, raw, report)
            backoff.reset()
        except REDIS_OUTAGE as error:
            backoff.wait(error)
    return report
