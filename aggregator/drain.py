"""Draining the results queue into the ledger (predictions, counts, failures)."""

from __future__ import annotations

import queue as queue_module
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from moments_stream import ledger
from moments_stream.logs import get_logger

log = get_logger(__name__)


@dataclass
class DrainReport:
    counted: int = 0
    duplicates: int = 0
    failed: int = 0

    @property
    def received(self) -> int:
        return self.counted + self.duplicates + self.failed


def apply(client: redis.Redis, message: dict[str, Any], report: DrainReport) -> None:
    """Record one message from a consumer: a prediction, or a video that could not be decoded."""
    if message.get("outcome") == "failed":
        if ledger.record_failure(client, message["video"], message["fingerprint"], message["error"]):
            report.failed += 1
        return
    if ledger.record_prediction(client, message):
        report.counted += 1
        log.info("video_counted", video=message["video"], top1=message["top5"][0][0], worker=message.get("worker"))
    else:
        report.duplicates += 1
        log.info("duplicate_ignored", video=message["video"], worker=message.get("worker"))


def drain(
    client: redis.Redis,
    results: Any,
    idle_exit_s: float | None = None,
    stop_event: threading.Event | None = None,
    poll_s: float = 1.0,
) -> DrainReport:
    """Apply messages until stopped, or (with ``idle_exit_s``) until nothing has arrived for that
    long and no video is pending."""
    report = DrainReport()
    last_arrival = time.monotonic()
    while not (stop_event is not None and stop_event.is_set()):
        try:
            message = results.get(timeout=poll_s)
        except queue_module.Empty:
            idle = time.monotonic() - last_arrival
            if idle_exit_s is not None and idle >= idle_exit_s and ledger.pending_count(client) == 0:
                break
            continue
        last_arrival = time.monotonic()
        apply(client, message, report)
    return report
