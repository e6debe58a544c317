"""The whole pipeline on a local folder, on the embedded default: upload, enqueue what is new, run
consumer functions and an aggregator until every enqueued video is counted or failed.

The data stays in Redis for ``redis-cli``, the views, and the next run (which only does what is new).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from aggregator.drain import drain
from aggregator.reconcile import KnownJobs, reconcile, reconcile_interval_s
from consumer.launcher import run_consumers, with_local_assets
from moments_stream import ledger
from moments_stream.embedded_redis import ensure_redis
from moments_stream.results import open_results_queue
from moments_stream.settings import Settings
from producer.enqueue import EnqueueReport
from producer.service import enqueue_prefix, upload
from producer.upload import UploadReport

# How often the progress callback hears how many videos are left.
PROGRESS_PERIOD_S = 0.5
# After the consumers stop: how long beyond the outbox recovery delay to wait for their last outcomes.
RECORDING_GRACE_S = 30.0


@dataclass(frozen=True)
class Prepared:
    """A run ready to classify: Redis reached, the model at hand, the folder uploaded and enqueued."""

    client: redis.Redis
    settings: Settings
    uploaded: UploadReport
    enqueued: EnqueueReport


@dataclass(frozen=True)
class RunResult:
    pending: int
    failed: int


def prepare(settings: Settings, directory: Path, prefix: str) -> Prepared:
    """Reach Redis (starting the embedded one if needed), make the model available, then upload and
    enqueue; fails before touching storage or the queue when the model cannot be had."""
    client = ensure_redis(settings)
    settings = with_local_assets(settings)
    uploaded = upload(settings, directory, prefix)
    return Prepared(client, settings, uploaded, enqueue_prefix(settings, prefix))


def outcomes_unrecorded(client: redis.Redis, settings: Settings) -> bool:
    """Outcomes still on the results queue, or only in the outbox of videos still pending."""
    keys = settings.keys
    return bool(client.llen(keys.results_list()) or (client.hlen(keys.outbox()) and ledger.pending_count(client, keys)))


def classify_pending(
    prepared: Prepared,
    workers: int,
    idle_exit_s: int,
    function_timeout_s: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Run ``workers`` consumer functions and an aggregator thread until no video is pending (or the
    consumers are gone), then until their outcomes are recorded; ``on_progress(done, total)``."""
    client, settings = prepared.client, prepared.settings
    keys = settings.keys
    stop_aggregator = threading.Event()
    results = open_results_queue(client, settings)
    known_jobs: KnownJobs = {}
    aggregator = threading.Thread(
        target=drain,
        args=(client, keys, results),
        kwargs={"stop_event": stop_aggregator, "recover_after_s": settings.recover_after_s,
                "reconcile": lambda drained: reconcile(client, settings, drain_report=drained, known_jobs=known_jobs),
                "reconcile_every_s": reconcile_interval_s(settings)},
        name="aggregator",
        daemon=True,
    )
    aggregator.start()
    total = ledger.pending_count(client, keys)
    consumers_done = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            run_consumers(settings, workers, idle_exit_s=idle_exit_s, function_timeout_s=function_timeout_s)
        except BaseException as error:
            errors.append(error)
        finally:
            consumers_done.set()

    consumers = threading.Thread(target=consume, name="consumers", daemon=True)
    if total:
        consumers.start()
        while True:
            left = ledger.pending_count(client, keys)
            if on_progress is not None:
                on_progress(total - left, total)
            if left == 0 or consumers_done.wait(PROGRESS_PERIOD_S):
                break
        client.set(keys.stop_consumers(), "1")
        consumers.join()
    # What the consumers published is on the queue, or in the outbox until the aggregator recovers it.
    deadline = time.monotonic() + settings.recover_after_s + RECORDING_GRACE_S
    while time.monotonic() < deadline and outcomes_unrecorded(client, settings):
        time.sleep(0.2)
    stop_aggregator.set()
    aggregator.join()
    if errors:
        raise errors[0]
    return RunResult(pending=ledger.pending_count(client, keys), failed=int(client.hlen(keys.failed())))
