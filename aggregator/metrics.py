"""Prometheus metrics, read from Redis at scrape time.

``aggregator metrics --port N`` serves them alone; ``aggregator run --metrics-port N`` serves them
beside the draining. Either way a custom collector (prometheus_client's collector API: ``collect()``
yields metric families) takes one :func:`aggregator.status.status_document` snapshot per scrape,
so every process serving them reports the same numbers, the ones ``aggregator status --json``
prints, and none keeps state of its own. The stage histograms are the cumulative bucket counts
the aggregator's drain keeps in Redis (``Keys.stage_seconds``) for each outcome the ledger recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from moments_stream.logs import get_logger
from moments_stream.redis_conn import REDIS_OUTAGE
from moments_stream.settings import THROUGHPUT_WINDOW_S, TIMED_STAGES, Settings

from .drain import BUCKET_LABELS
from .status import status_document

log = get_logger(__name__)

# name -> (help, the status document's field); one gauge each
GAUGES: dict[str, tuple[str, str]] = {
    "moments_videos_failed": ("Videos recorded failed (consumer requeue clears them)", "failed"),
    "moments_videos_pending": ("Videos enqueued and not yet counted or failed", "pending"),
    "moments_jobs_queued": ("rq jobs waiting for a consumer (MOMENTS_JOB_BATCH videos each)", "queued"),
    "moments_jobs_in_flight": ("rq jobs being classified", "in_flight"),
    "moments_jobs_retry_scheduled": ("rq jobs waiting for a retry", "retry_scheduled"),
    "moments_outcomes_awaiting_aggregator": ("Outcomes published and not yet recorded (the outbox)",
                                             "awaiting_aggregator"),
    "moments_results_queue_messages": ("Messages on the results queue not yet taken by an aggregator",
                                       "results_queued"),
    "moments_dead_letters": ("Results-queue messages the aggregator could not read", "dead_letters"),
    "moments_workers_alive": ("Consumers whose rq worker lease is alive", "workers_alive"),
    "moments_throughput_videos_per_second": (f"Videos finished (counted or failed) per second over the last "
                                             f"{THROUGHPUT_WINDOW_S} s", "throughput_per_s"),
}
# gauges left out while the document has no value for them
OPTIONAL_GAUGES: dict[str, tuple[str, str]] = {
    "moments_drain_lag_seconds": ("How long the oldest message on the results queue has waited (0: none waits)",
                                  "drain_lag_s"),
    "moments_eta_seconds": ("Time to finish the pending videos at the recent throughput", "eta_s"),
}


def families(document: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one status snapshot (``status_document``)."""
    yield GaugeMetricFamily("moments_redis_up", "Whether the last scrape could read Redis", value=1)
    model = document["model"]
    current = GaugeMetricFamily("moments_current_model_info", "The current model (the live table holds its counts)",
                                labels=["model"])
    if model is not None:
        current.add_metric([model], 1)
    yield current
    counted = CounterMetricFamily("moments_videos_counted", "Videos counted, per model", labels=["model"])
    for model_id, videos in document["counted_by_model"].items():
        counted.add_metric([model_id], videos)
    yield counted
    for name, (documentation, field) in GAUGES.items():
        yield GaugeMetricFamily(name, documentation, value=document[field])
    for name, (documentation, field) in OPTIONAL_GAUGES.items():
        gauge = GaugeMetricFamily(name, documentation)
        if document[field] is not None:
            gauge.add_metric([], document[field])
        yield gauge
    categories = GaugeMetricFamily("moments_category_videos", "Videos per top-1 category under the current model",
                                   labels=["model", "category"])
    for category, videos in document["counts"].items():
        categories.add_metric([model, category], videos)
    yield categories
    reconciled = CounterMetricFamily("moments_reconciled_videos", "Pending videos with no job that the reconciler "
                                     "enqueued again or recorded failed", labels=["action"])
    for action in ("requeued", "failed"):
        reconciled.add_metric([action], document["reconciled"][action])
    yield reconciled
    yield GaugeMetricFamily("moments_reconcile_watched_videos", "Pending videos with no job the reconciler watches",
                            value=document["reconciled"]["watched"])
    stages = HistogramMetricFamily("moments_stage_duration_seconds", "Time a consumer spent on each stage of a "
                                   "recorded video: download, decode, infer", labels=["stage"])
    for stage in TIMED_STAGES:
        histogram = document["stage_seconds"][stage]
        stages.add_metric([stage], [(label, histogram["buckets"][label]) for label in BUCKET_LABELS],
                          sum_value=histogram["sum"])
    yield stages


class MomentsCollector:
    """Reads every metric from Redis when scraped (``snapshot`` returns a status document)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        """The families' names, without reading Redis (what a registry checks on registration)."""
        histogram = {"buckets": dict.fromkeys(BUCKET_LABELS, 0), "sum": 0.0, "count": 0}
        empty: dict[str, Any] = {"model": None, "counted_by_model": {}, "counts": {},
                                 "reconciled": {"requeued": 0, "failed": 0, "watched": 0},
                                 "stage_seconds": dict.fromkeys(TIMED_STAGES, histogram)}
        empty.update({field: 0 for _, field in GAUGES.values()})
        empty.update({field: None for _, field in OPTIONAL_GAUGES.values()})
        return list(families(empty))

    def collect(self) -> Iterator[Metric]:
        try:
            document = self.snapshot()
        except REDIS_OUTAGE as error:
            log.warning("metrics_redis_unreachable", error=f"{type(error).__name__}: {error}")
            yield GaugeMetricFamily("moments_redis_up", "Whether the last scrape could read Redis", value=0)
            return
        yield from families(document)


def serve_metrics(client: redis.Redis, settings: Settings, port: int, addr: str = "0.0.0.0",
                  registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serve ``/metrics`` on a daemon thread (port 0: a free one); prints the URL. Returns the server
    (``shutdown()`` stops it)."""
    registry.register(MomentsCollector(lambda: status_document(client, settings)))
    server, _ = start_http_server(port, addr, registry)
    url = f"http://{addr}:{server.server_port}/metrics"
    print(f"serving metrics on {url}", flush=True)
    log.info("metrics_serving", url=url)
    return server
