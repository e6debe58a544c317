"""What a consumer's jobs share: its :class:`WorkerContext` (the model it holds, storage, the
results queue it publishes on, its settings), bound once per consumer process by the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from moments_stream.results import ResultsQueue
from moments_stream.settings import Settings

from .classify import Classifier


@dataclass
class WorkerContext:
    classifier: Classifier
    client: redis.Redis
    storage: Any
    results: ResultsQueue  # where this consumer's outcomes go (and the list's expiry)
    settings: Settings
    worker_id: str
    # Set when a job for another model arrived: this consumer's weights are out of date, so it
    # hands the job back and leaves (its workers stop after the job in hand).
    superseded_by: str | None = None
    # This consumer's rq workers by name: a batch asks the one running it, between videos, whether
    # to stop (time limit, ``consumer stop``) and hand the rest back.
    workers: dict[str, Any] = field(default_factory=dict)


_context: WorkerContext | None = None


def bind_context(context: WorkerContext | None) -> None:
    global _context
    _context = context


def current_context_or_none() -> WorkerContext | None:
    return _context


def current_context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("classify_videos runs inside a moments-stream consumer worker (consumer start)")
    return _context
