"""Waiting out a service that is away (Redis, storage): logged pauses with exponential back-off."""

from __future__ import annotations

import time

from redis.backoff import ExponentialBackoff

from .logs import get_logger

log = get_logger(__name__)


class Backoff:
    """Pauses while a service (Redis by default) is away, each one logged as ``event``; the delays
    are redis-py's exponential back-off (``first_s`` doubling up to ``max_s``)."""

    def __init__(self, first_s: float = 0.5, max_s: float = 15.0, event: str = "redis_unreachable_retrying") -> None:
        self.policy = ExponentialBackoff(cap=max_s, base=first_s)
        self.failures = 0
        self.event = event

    @property
    def delay_s(self) -> float:
        return self.policy.compute(self.failures)

    def wait(self, error: BaseException, **fields: object) -> None:
        delay_s = self.delay_s
        log.warning(self.event, delay_s=delay_s, error=str(error), **fields)
        time.sleep(delay_s)
        self.failures += 1

    def reset(self) -> None:
        self.failures = 0
