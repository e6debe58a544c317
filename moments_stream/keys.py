"""Every Redis key moments-stream writes, one small method each, under one namespace.

``MOMENTS_NAMESPACE`` (default ``moments``) prefixes every key, so two pipelines can share one
Redis without touching each other. The video queue is an rq queue named after the namespace
(``rq:queue:<namespace>-videos`` unless ``MOMENTS_QUEUE`` names another), so ``rq info`` shows it;
the results queue is a lithops Queue whose Redis list name is derived from the namespace too.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "moments"


@dataclass(frozen=True)
class Keys:
    """The key names of one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def seen(self) -> str:
        """Hash: video id -> fingerprint last enqueued (size + etag/mtime). Drives "only new ones"."""
        return self._key("seen")

    def pending(self) -> str:
        """Hash: video id -> JSON ``{"fingerprint", "model"}`` enqueued and not yet counted or failed.

        ``model`` is the model id the job is for (``null``: whichever model the consumers run); only
        an outcome of that model clears the entry.
        """
        return self._key("pending")

    def models(self) -> str:
        """Sorted set: model id -> Redis time of the latest prediction counted with it."""
        return self._key("models")

    def current_model(self) -> str:
        """String: the current model's id, the one :meth:`live_counts` holds and ``aggregator counts``
        shows by default. It becomes a model that counts for the first time, or a model counting a
        video its ``--reclassify`` was for; a late prediction of an older model never switches it back."""
        return self._key("current-model")

    def live_counts(self) -> str:
        """Hash: category -> videos, the current model's :meth:`counts`, kept by the same atomic step,
        rebuilt from that model's own when the current model changes: ``redis-cli HGETALL moments:counts``."""
        return self._key("counts")

    def live_ranking(self) -> str:
        """Sorted set: the current model's :meth:`ranking`: ``redis-cli ZREVRANGE moments:ranking 0 9 WITHSCORES``."""
        return self._key("ranking")

    def predictions(self, model_id: str) -> str:
        """Hash: video id -> JSON record (top-5, fingerprint, worker, timings) of one model.

        Per model, so that changing the weights or the category list never mixes two models' results.
        """
        return self._key("predictions", model_id)

    def counts(self, model_id: str) -> str:
        """Hash: category -> number of videos whose top-1 it is, under one model."""
        return self._key("counts", model_id)

    def ranking(self, model_id: str) -> str:
        """Sorted set: category -> videos (the same numbers as :meth:`counts`), most frequent ranked first."""
        return self._key("ranking", model_id)

    def recent(self) -> str:
        """Sorted set: video id -> Redis time its outcome (counted or failed) was recorded.

        Holds the last ``settings.RECENT_WINDOW_S`` only; ``aggregator status`` derives throughput from it.
        """
        return self._key("recent")

    def failed(self) -> str:
        """Hash: video id -> JSON (fingerprint, error, attempts) for videos that could not be classified."""
        return self._key("failed")

    def outbox(self) -> str:
        """Hash: ``[video id, fingerprint, model id]`` (JSON, ``outcome.outbox_field``) -> JSON outcome a
        consumer published and the aggregator has not recorded yet (one entry per version and model).

        Written before the message goes on the lithops Queue and cleared by the ledger when it is
        recorded, so a message popped by an aggregator that then died is recovered from here.
        """
        return self._key("outbox")

    def dead_letters(self) -> str:
        """Hash: message id -> JSON (reason, payload excerpt, received_at) of results-queue messages
        the aggregator could not read; kept for a person to look at, never retried."""
        return self._key("dead-letters")

    def stop_consumers(self) -> str:
        """String, set by ``consumer stop``: consumers finish their video and exit; none is relaunched."""
        return self._key("consumers", "stop")

    def consumer_launch(self, launch_id: str) -> str:
        """String with a lease: the worker id of the consumer ``consumer start`` launched as
        ``launch_id``, refreshed by its heartbeat. Gone while its function still runs: the function
        (or its container) died without a word, and the launcher stops waiting for it."""
        return self._key("launches", launch_id)

    def reconcile_orphans(self) -> str:
        """Hash: pending video -> Redis time the reconciler first saw it with no job (cleared once it has one)."""
        return self._key("reconcile", "orphans")

    def reconcile_rounds(self) -> str:
        """Hash: pending video -> times the reconciler enqueued it again (cleared once it is not pending)."""
        return self._key("reconcile", "rounds")

    def reconcile_totals(self) -> str:
        """Hash: ``requeued`` and ``failed``, the videos the reconciler enqueued again or recorded failed, ever."""
        return self._key("reconcile", "totals")

    def reconcile_lock(self) -> str:
        """String with a lease: the aggregator running a reconciliation round."""
        return self._key("reconcile", "lock")

    def stage_seconds(self, stage: str) -> str:
        """Hash: one timed stage's histogram (``settings.TIMED_STAGES``) over the outcomes the ledger
        recorded: cumulative bucket counts under each upper bound in seconds (``"0.5"``, ..., ``"+Inf"``),
        ``sum`` (seconds) and ``count``; kept by the aggregator's drain, served by ``aggregator metrics``."""
        return self._key("timings", stage)

    def results_list(self) -> str:
        """List: the results queue consumers publish outcomes on and aggregators drain, one JSON
        outcome a message (:mod:`moments_stream.results` owns its protocol). Named as Lithops names
        a ``lithops.multiprocessing.Queue``'s list, the design's first carrier of these messages, so
        the name in dashboards and scripts written for it still holds."""
        return "redislist-a-" + self._key("results")
