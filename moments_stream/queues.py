"""The rq queue of videos, shared by the producer (enqueue) and consumers (work)."""

from __future__ import annotations

import redis
from rq import Queue

from .settings import Settings


def video_queue(client: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=client, default_timeout=settings.job_timeout_s)
