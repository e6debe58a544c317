"""A consumer without a model or an object store, for the bookkeeping around them: an instant
classifier and an in-memory store, with hooks a test uses to fail or to act at a given video.
Everything that talks to Redis (rq worker, jobs, ledger, outbox, results queue) is the real code."""

from __future__ import annotations

import collections
import hashlib
import io
from collections.abc import Callable

from consumer.classify import Prediction

CATEGORIES = [f"category-{index:03d}" for index in range(339)]
MODEL_ID = "instant-test-model"


class InstantClassifier:
    """A deterministic top-5 from the video's name, at no cost; counts how often each was classified."""

    model_id = MODEL_ID

    def __init__(self, before: Callable[[str], None] | None = None) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._before = before

    def classify_file(self, path: str, name: str | None = None) -> Prediction:
        video = name or path
        self.calls[video] += 1
        if self._before is not None:
            self._before(video)
        return Prediction(video, top5_of(video), MODEL_ID, 16, 0.0, 0.0, synthetic_weights=True)


def top5_of(video: str) -> list[tuple[str, float]]:
    first = int.from_bytes(hashlib.blake2b(video.encode(), digest_size=4).digest(), "big") % len(CATEGORIES)
    return [(CATEGORIES[(first + rank) % len(CATEGORIES)], 0.5 / (rank + 1)) for rank in range(5)]


class InMemoryStorage:
    """Every key is a tiny object; ``failing`` maps a key to how many more reads of it raise."""

    def __init__(self, failing: dict[str, int] | None = None) -> None:
        self.failing = dict(failing or {})

    def get_object(self, bucket: str, key: str, stream: bool = False) -> io.BytesIO:
        if self.failing.get(key, 0) > 0:
            self.failing[key] -= 1
            raise RuntimeError(f"injected failure reading {key}")
        return io.BytesIO(b"\x00" * 64)
