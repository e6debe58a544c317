"""Every Redis key moments-stream writes, one small function each (rq's own keys start ``rq:``).

The video queue itself is an rq queue (``rq:queue:<name>``), so ``rq info`` shows it.
"""

from __future__ import annotations

PREFIX = "moments"


def seen() -> str:
    """Hash: video key -> fingerprint last enqueued (size + etag/mtime). Drives "only new ones"."""
    return f"{PREFIX}:seen"


def pending() -> str:
    """Hash: video key -> fingerprint enqueued and not yet counted or failed."""
    return f"{PREFIX}:pending"


def models() -> str:
    """Sorted set: model id -> Redis time of the latest prediction counted with it.

    The highest score is the current model, the one ``aggregator counts`` shows by default.
    """
    return f"{PREFIX}:models"


def predictions(model_id: str) -> str:
    """Hash: video key -> JSON record (top-5, fingerprint, worker, timings) of one model.

    Per model, so that changing the weights or the category list never mixes two models' results.
    """
    return f"{PREFIX}:predictions:{model_id}"


def counts(model_id: str) -> str:
    """Hash: category -> number of videos whose top-1 it is, under one model."""
    return f"{PREFIX}:counts:{model_id}"


def recent() -> str:
    """Sorted set: video key -> Redis time its outcome (counted or failed) was recorded.

    Holds the last ``settings.RECENT_WINDOW_S`` only; ``aggregator status`` derives throughput from it.
    """
    return f"{PREFIX}:recent"


def failed() -> str:
    """Hash: video key -> JSON (fingerprint, error, attempts) for videos that could not be classified."""
    return f"{PREFIX}:failed"


def outbox() -> str:
    """Hash: video key -> JSON outcome a consumer published and the aggregator has not recorded yet.

    Written before the message goes on the lithops Queue and cleared by the ledger when it is
    recorded, so a message popped by an aggregator that then died is recovered from here.
    """
    return f"{PREFIX}:outbox"


def results_queue() -> str:
    """String: the pickled handle of the lithops.multiprocessing.Queue consumers publish on."""
    return f"{PREFIX}:results-queue"


def stop_consumers() -> str:
    """String, set by ``consumer stop``: consumers finish their video and exit; none is relaunched."""
    return f"{PREFIX}:consumers:stop"
