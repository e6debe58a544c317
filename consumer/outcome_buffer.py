"""The outcomes a job has classified but not yet handed to the aggregators, published together."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moments_stream import outcome

from .context import WorkerContext


@dataclass
class OutcomeBuffer:
    """Outcomes a batch has not yet handed to the aggregator, published in one round trip when the
    oldest has waited ``MOMENTS_PUBLISH_LINGER_MS``, when the batch ends, and before it stops or
    fails (an outcome lost with a crashed consumer is only classified again: the ledger counts it
    once)."""

    context: WorkerContext
    clock: Callable[[], float] = time.monotonic
    outcomes: list[outcome.VideoOutcome] = field(default_factory=list)
    oldest_at: float = 0.0

    def add(self, message: outcome.VideoOutcome) -> None:
        if not self.outcomes:
            self.oldest_at = self.clock()
        self.outcomes.append(message)
        if (self.clock() - self.oldest_at) * 1000 >= self.context.settings.publish_linger_ms:
            self.flush()

    def flush(self) -> None:
        if self.outcomes:
            self.context.results.publish(self.outcomes)
            self.outcomes = []
