"""Draining the results queue into the ledger (predictions, counts, failures).

A message popped from the results queue is gone from it, so an aggregator that dies between
the pop and the ledger write would lose it. Consumers therefore also leave every outcome in the
outbox until the ledger records it; whenever the queue is empty, the aggregator records outbox
entries older than ``recover_after_s`` itself (the ledger is idempotent, so a late duplicate
from the queue is harmless).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from moments_stream import ledger, results
from moments_stream.backoff import Backoff
from moments_stream.keys import Keys
from moments_stream.logs import get_logger
from moments_stream.outcome import VideoOutcome
from moments_stream.redis_conn import REDIS_OUTAGE
from moments_stream.settings import DEFAULT_RECOVER_AFTER_S, STAGE_SECONDS_BUCKETS, TIMED_STAGES

log = get_logger(__name__)


@dataclass
class DrainReport:
    counted: int = 0
    duplicates: int = 0
    stale: int = 0
    failed: int = 0
    recovered: int = 0
    dead_letters: int = 0
    # Outcomes of a newer release, left in the outbox for an upgraded aggregator.
    newer_schema: int = 0

    @property
    def received(self) -> int:
        return self.counted + self.duplicates + self.stale + self.failed


def logged_fields(outcome: VideoOutcome) -> dict[str, object]:
    fields = {"video": outcome.video, "worker": outcome.worker, "download_ms": outcome.download_ms,
              "decode_ms": outcome.decode_ms, "infer_ms": outcome.infer_ms, "total_ms": outcome.total_ms}
    return {name: value for name, value in fields.items() if value is not None}


def apply_batch(client: redis.Redis, keys: Keys, outcomes: list[VideoOutcome], report: DrainReport) -> None:
    """Record outcomes in one atomic ledger call; logs one ``video_recorded`` event per video with
    the outcome and the consumer's timings, and adds the timings of those the ledger recorded (not
    duplicates or stale versions) to the stage histograms."""
    results = ledger.record_batch(client, keys, outcomes)
    for outcome, result in zip(outcomes, results, strict=True):
        note(outcome, result, report)
    observe_stage_timings(
        client, keys, [outcome for outcome, result in zip(outcomes, results, strict=True)
                       if result is ledger.RecordResult.RECORDED]
    )


def bucket_label(bound: float) -> str:
    """A histogram bucket's field in Redis and its ``le`` label: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


BUCKET_LABELS = [*(bucket_label(bound) for bound in STAGE_SECONDS_BUCKETS), "+Inf"]


def observe_stage_timings(client: redis.Redis, keys: Keys, recorded: list[VideoOutcome]) -> None:
    """Add the stage timings of ``recorded`` outcomes (those that carry them) to the per-stage
    histograms (:meth:`Keys.stage_seconds`): cumulative bucket counts, sum and count, in one
    transaction. Telemetry only: an aggregator that dies between the ledger's step and this one
    leaves those videos out of the histograms, never out of the counts."""
    increments: dict[str, dict[str, int]] = {stage: {} for stage in TIMED_STAGES}
    sums: dict[str, float] = dict.fromkeys(TIMED_STAGES, 0.0)
    for outcome in recorded:
        for stage in TIMED_STAGES:
            milliseconds = getattr(outcome, f"{stage}_ms")
            if milliseconds is None:
                continue
            seconds = max(0.0, float(milliseconds)) / 1000
            fields = increments[stage]
            for bound, label in zip(STAGE_SECONDS_BUCKETS, BUCKET_LABELS, strict=False):
                if seconds <= bound:
                    fields[label] = fields.get(label, 0) + 1
            fields["+Inf"] = fields.get("+Inf", 0) + 1
            fields["count"] = fields.get("count", 0) + 1
            sums[stage] += seconds
    if not any(increments.values()):
        return
    with client.pipeline(transaction=True) as pipe:
        for stage, fields in increments.items():
            for field, amount in fields.items():
                pipe.hincrby(keys.stage_seconds(stage), field, amount)
            if fields:
                pipe.hincrbyfloat(keys.stage_seconds(stage), "sum", sums[stage])
        pipe.execute()


def note(outcome: VideoOutcome, result: ledger.RecordResult, report: DrainReport) -> None:
    fields = logged_fields(outcome)
    if result is ledger.RecordResult.DUPLICATE:
        report.duplicates += 1
        log.info("video_recorded", outcome="duplicate_ignored", **fields)
    elif result is ledger.RecordResult.STALE:
        report.stale += 1
        log.info("video_recorded", outcome="stale_version_ignored", fingerprint=outcome.fingerprint, **fields)
    elif not outcome.counted:
        report.failed += 1
        log.warning("video_recorded", outcome="failed", error=outcome.error, **fields)
    else:
        report.counted += 1
        log.info("video_recorded", outcome="counted", top1=outcome.top1, **fields)


def set_aside(client: redis.Redis, keys: Keys, error: results.MalformedMessage, report: DrainReport,
              outbox_video: str | None = None) -> None:
    """A message this aggregator cannot record: a newer release's outcome waits in the outbox for an
    upgraded aggregator; anything else becomes a dead letter (and leaves the outbox)."""
    if error.newer_schema:
        report.newer_schema += 1
        log.warning("outcome_from_newer_release", reason=error.reason, video=outbox_video,
                    fix="upgrade this aggregator: the outcome stays in the outbox until one records it")
        return
    entry = results.dead_letter(client, keys, error)
    report.dead_letters += 1
    if outbox_video is not None:  # its video is recorded failed with the reason, never left pending
        ledger.fail_unreadable_outbox_entry(client, keys, outbox_video, f"{error.reason}; dead letter {entry}")
    log.error("message_dead_lettered", reason=error.reason, entry=entry, dead_letters=keys.dead_letters(),
              video=outbox_video)


def recover_unrecorded(client: redis.Redis, keys: Keys, older_than_s: float, report: DrainReport) -> None:
    """Record outbox entries whose queue message was lost (popped by an aggregator that died)."""
    outcomes: list[VideoOutcome] = []
    for video, raw in ledger.unrecorded_outcomes(client, keys, older_than_s):
        try:
            outcome = results.decode_outcome(raw)
        except results.MalformedMessage as error:
            set_aside(client, keys, error, report, outbox_video=video)
            continue
        report.recovered += 1
        log.warning("outcome_recovered_from_outbox", video=outcome.video, worker=outcome.worker)
        outcomes.append(outcome)
        if len(outcomes) == ledger.MAX_BATCH:
            apply_batch(client, keys, outcomes, report)
            outcomes = []
    if outcomes:
        apply_batch(client, keys, outcomes, report)


def apply_raws(client: redis.Redis, keys: Keys, raws: list[bytes], report: DrainReport) -> None:
    """Record raw queue messages together, setting aside those that are not outcomes this release reads."""
    outcomes = []
    for raw in raws:
        try:
            outcomes.append(results.decode(raw))
        except results.MalformedMessage as error:
            set_aside(client, keys, error, report)
    if outcomes:
        apply_batch(client, keys, outcomes, report)


def drain(
    client: redis.Redis,
    keys: Keys,
    queue: Any,
    idle_exit_s: float | None = None,
    stop_event: threading.Event | None = None,
    poll_s: float = 1.0,
    recover_after_s: float = DEFAULT_RECOVER_AFTER_S,
    reconcile: Callable[[DrainReport], object] | None = None,
    reconcile_every_s: float = 5.0,
) -> DrainReport:
    """Apply messages until stopped, or (with ``idle_exit_s``) until nothing has arrived for that
    long and no video is pending. ``reconcile`` (the reconciler's round, ``aggregator.reconcile``)
    runs every ``reconcile_every_s``, busy or idle. Rides out Redis outages with back-off."""
    report = DrainReport()
    last_arrival = last_recovery = last_reconcile = time.monotonic()
    backoff = Backoff()
    while not (stop_event is not None and stop_event.is_set()):
        try:
            if reconcile is not None and time.monotonic() - last_reconcile >= reconcile_every_s:
                last_reconcile = time.monotonic()
                try:
                    reconcile(report)
                except REDIS_OUTAGE:
                    raise
                except Exception as error:  # a round's bug must not stop the counting: said, and tried again
                    log.exception("reconcile_round_failed", error=f"{type(error).__name__}: {error}")
            raws = queue.receive(poll_s, max_messages=ledger.MAX_BATCH)
            if not raws:
                now = time.monotonic()
                if now - last_recovery >= min(recover_after_s, 5.0):
                    recover_unrecorded(client, keys, recover_after_s, report)
                    last_recovery = now
                idle = now - last_arrival
                if idle_exit_s is not None and idle >= idle_exit_s and ledger.pending_count(client, keys) == 0:
                    break
                continue
            last_arrival = time.monotonic()
            apply_raws(client, keys, raws, report)
            backoff.reset()
        except REDIS_OUTAGE as error:
            backoff.wait(error)
    return report
